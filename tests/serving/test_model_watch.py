"""The feedback loop end to end: events in, retrain from them, promote, served without restart."""

from __future__ import annotations

import asyncio
import shutil
import threading

import pytest
from typer.testing import CliRunner

from moerec.cli import app
from moerec.registry.artefact import WEIGHTS
from moerec.registry.pointer import write_pointer
from moerec.serving.model_slot import ModelSlot
from moerec.serving.model_watch import ModelWatcher, watchable
from tests.cli.test_cli import TINY
from tests.dependencies import poll_until
from tests.helpers import save_trained
from tests.serving.conftest import BACKENDS, live_service

runner = CliRunner()


@pytest.fixture(scope="module", params=BACKENDS)
def watched(request, tmp_path_factory, trained, tiny_dataset):
    # unthrottled, so the traffic during the switch measures failures, not rate limits
    yield from live_service(
        request.param, tmp_path_factory.mktemp("watched"), request, trained, tiny_dataset,
        model_poll_seconds=0.2, rate_limit_user_per_second=1e6, rate_limit_user_burst=10**6,
    )  # fmt: skip


def test_retrained_from_its_events_and_promoted_the_service_switches_with_no_failed_request(
    watched, tiny_dataset, tmp_path
):
    user = str(tiny_dataset.vocab.user_ids[0])
    items = list(tiny_dataset.vocab.item_ids[:6])
    with watched.client(user) as http:  # 1. feedback over HTTP
        for n, item in enumerate(items):
            kind = "dismiss" if n == 0 else "click"
            body = {"user_id": user, "item_id": item, "event_type": kind,
                    "idempotency_key": f"loop-{user}-{n}"}  # fmt: skip
            assert http.post("/v1/events", json=body).status_code == 201
        assert http.post("/v1/recommendations", json={"user_id": user}).json()["model_version"] == (
            "tiny/v0001"
        )

    trained = runner.invoke(  # 2. retrain on the service's own database
        app,
        [
            "train", "--from-db", "--database-url", watched.settings.database_url,
            "--registry", str(watched.model_dir.parent), "--name", "tiny",
            "--run-dir", str(tmp_path / "run"), "--quiet", *TINY, "--set", "train.epochs=1",
        ],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert (watched.model_dir / "v0002").is_dir()

    failures: list[object] = []
    versions: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        with watched.client(user) as http:
            while not stop.is_set():
                r = http.post("/v1/recommendations", json={"user_id": user, "k": 5})
                if r.status_code != 200 or r.json()["fallback"]:
                    failures.append((r.status_code, r.text[:200]))
                else:
                    versions.append(r.json()["model_version"])

    workers = [threading.Thread(target=traffic) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        poll_until(lambda: len(versions) >= 3, 30, "traffic on the old model")
        promoted = runner.invoke(app, ["registry", "promote", str(watched.model_dir), "newest"])
        assert promoted.exit_code == 0, promoted.output

        with watched.client("ops", "admin") as admin:  # 3. the service follows the pointer
            poll_until(
                lambda: admin.get("/v1/admin/model").json()["model_version"] == "tiny/v0002",
                60,
                "the promoted version served",
            )
        seen = len(versions)
        poll_until(lambda: len(versions) >= seen + 3, 30, "traffic on the new model")
    finally:
        stop.set()
        for worker in workers:
            worker.join()

    assert failures == []
    assert versions[0] == "tiny/v0001"
    assert versions[-1] == "tiny/v0002"
    with watched.client(user) as http:
        r = http.get(f"/v1/users/{user}/recommendations")
    assert r.json()["model_version"] == "tiny/v0002"
    assert items[0] not in r.json()["items"]  # the dismissal still holds
    with watched.client("ops", "admin") as admin:  # counted once the old model has closed
        poll_until(
            lambda: (
                'moerec_model_reloads_total{outcome="loaded"} 1.0' in admin.get("/metrics").text
            ),
            30,
            "the hot load counted",
        )


def test_a_promoted_artefact_that_breaks_is_refused_and_the_old_model_keeps_serving(
    tmp_path, trained, tiny_dataset
):
    good = save_trained(tmp_path, trained, tiny_dataset)
    model_dir = good.parent
    broken = shutil.copytree(good, model_dir / "v0002")
    data = bytearray((broken / WEIGHTS).read_bytes())
    data[-3] ^= 0xFF
    (broken / WEIGHTS).write_bytes(bytes(data))
    outcomes: list[tuple[str, str]] = []

    async def scenario() -> None:
        slot = ModelSlot(model_dir, batch_max_size=8, batch_max_wait_ms=0)
        watcher = ModelWatcher(
            slot, model_dir, 60, on_result=lambda o, t, _: outcomes.append((o, t))
        )
        await slot.load(good)  # the newest version is the broken one
        try:
            assert await watcher.check_once() is False  # nothing promoted yet
            write_pointer(model_dir, "v0002")  # damaged after its promotion
            assert await watcher.check_once() is False
            assert slot.current.path == good
            assert await watcher.check_once() is False  # refused once, not on every poll
            write_pointer(model_dir, "v0001")
            assert await watcher.check_once() is False  # already served: nothing to load
        finally:
            await slot.close()

    asyncio.run(scenario())

    assert outcomes == [("refused", str(model_dir / "v0002"))]
    assert watchable(model_dir)
    assert not watchable(good)  # a version folder: nothing to watch
