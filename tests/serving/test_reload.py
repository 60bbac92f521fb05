"""Hot reload: a new version is served without a restart; a bad one is refused."""

from __future__ import annotations

import shutil
import threading
import time

import httpx
import pytest

from tests.helpers import save_trained
from tests.serving.conftest import BACKENDS, live_service


@pytest.fixture(scope="module", params=BACKENDS)
def reloadable(request, tmp_path_factory, trained, tiny_dataset):
    # unthrottled: the load during the reload must measure failures, not rate limits
    yield from live_service(
        request.param, tmp_path_factory.mktemp("reload"), request, trained, tiny_dataset,
        rate_limit_user_per_second=1e6, rate_limit_user_burst=10**6,
    )  # fmt: skip


def test_admin_sees_the_served_model(reloadable):
    with reloadable.client("ops", "admin") as http:
        r = http.get("/v1/admin/model")
    assert r.status_code == 200
    body = r.json()
    assert body["model_version"] == "tiny/v0001"
    assert body["experts"] == 4
    assert body["num_items"] > 0


def test_reload_switches_versions_under_load_and_refuses_a_corrupt_artefact(
    reloadable, trained, tiny_dataset
):
    user = str(tiny_dataset.vocab.user_ids[0])
    new_version = save_trained(reloadable.model_dir.parent, trained, tiny_dataset)
    corrupt = new_version.parent / "v0003"
    shutil.copytree(new_version, corrupt)
    weights = corrupt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(data)

    failures: list[int] = []
    versions: set[str] = set()
    stop = threading.Event()

    def traffic() -> None:
        with reloadable.client(user) as http:
            while not stop.is_set():
                r = http.post("/v1/recommendations", json={"user_id": user, "k": 5})
                if r.status_code != 200:
                    failures.append(r.status_code)
                else:
                    versions.add(r.json()["model_version"])

    workers = [threading.Thread(target=traffic) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        with reloadable.client("ops", "admin") as admin:
            refused = admin.post("/v1/admin/model/reload", json={"path": str(corrupt)})
            loaded = admin.post("/v1/admin/model/reload", json={"path": str(new_version)})
            refused_again = admin.post("/v1/admin/model/reload", json={"path": str(corrupt)})
            serving = admin.get("/v1/admin/model").json()
    finally:
        stop.set()
        for w in workers:
            w.join()

    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "model_refused"
    assert "tiny/v0001 keeps serving" in refused.json()["error"]["message"]
    assert loaded.status_code == 200
    assert loaded.json()["model_version"] == "tiny/v0002"
    assert refused_again.status_code == 409
    assert serving["model_version"] == "tiny/v0002"
    assert failures == []
    assert "tiny/v0002" in versions
    with httpx.Client(base_url=reloadable.url) as http:
        metrics = http.get("/metrics").text
    assert 'moerec_model_reloads_total{outcome="refused"} 2.0' in metrics
    assert 'version="v0002"' in metrics


def test_reload_without_a_path_takes_the_newest_version(reloadable):
    with reloadable.client("ops", "admin") as admin:
        r = admin.post("/v1/admin/model/reload")
    # v0003 is the corrupt copy from the previous test: the newest, and refused
    assert r.status_code == 409
    with reloadable.client("ops", "admin") as admin:
        assert admin.get("/v1/admin/model").json()["model_version"] == "tiny/v0002"


def test_cache_flush_is_admin_only_and_empties_the_cache(reloadable, tiny_dataset):
    user = str(tiny_dataset.vocab.user_ids[1])
    with reloadable.client(user) as http:
        http.get(f"/v1/users/{user}/recommendations")
        assert http.get(f"/v1/users/{user}/recommendations").json()["cached"] is True
        assert http.post("/v1/admin/cache/flush").status_code == 403
        with reloadable.client("ops", "admin") as admin:
            flushed = admin.post("/v1/admin/cache/flush")
        assert flushed.status_code == 200
        assert flushed.json()["deleted"] >= 1
        assert http.get(f"/v1/users/{user}/recommendations").json()["cached"] is False


def test_reload_refuses_paths_outside_the_model_registry(reloadable, tmp_path):
    with reloadable.client("ops", "admin") as admin:
        r = admin.post("/v1/admin/model/reload", json={"path": str(tmp_path)})
        etc = admin.post("/v1/admin/model/reload", json={"path": "/etc"})
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "model_path_outside_registry"
    assert etc.status_code == 422


def test_a_dead_model_process_means_fallback_answers_until_it_is_restarted(
    reloadable, tiny_dataset
):
    user = str(tiny_dataset.vocab.user_ids[2])
    model = reloadable.services.models.current
    assert model.process is not None
    model.process._process.kill()  # a real crash of the model's process
    model.process._process.join(timeout=10)
    body = {"user_id": user, "k": 5, "exclude": ["1"]}
    with reloadable.client(user) as http:
        # Restarting takes seconds (a new process loads the model); until then: popularity.
        r = http.post("/v1/recommendations", json=body)
        assert r.status_code == 200
        assert r.json()["fallback"] is True
        deadline = time.monotonic() + 60
        while reloadable.services.models.current is model and time.monotonic() < deadline:
            time.sleep(0.05)  # the supervisor checks every second
        restarted = reloadable.services.models.current
        assert restarted is not model, "the dead model process was not restarted"
        assert restarted.process is not None
        assert restarted.process.alive
        assert restarted.version == model.version  # the same artefact again
        r = http.post("/v1/recommendations", json=body)
    assert r.json()["fallback"] is False
    with reloadable.client("ops", "admin") as admin:
        metrics = admin.get("/metrics").text
    assert 'moerec_model_reloads_total{outcome="restarted"} 1.0' in metrics
