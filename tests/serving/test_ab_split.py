"""A/B experiments: a challenger model beside the control, a stable per-user split, and the arm
in every response, event and metric. Through real HTTP, on both backends."""

from __future__ import annotations

import asyncio
import re
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command

from moerec.config import resolve_variant
from moerec.registry import save_artefact
from moerec.registry.artefact import WEIGHTS
from moerec.serving.breaker import State
from moerec.serving.experiment import CHALLENGER, CONTROL, Split, bucket
from moerec.storage import NewEvent, Storage
from moerec.storage.migrate import alembic_config, upgrade
from moerec.storage.spool import EventSpool
from moerec.training import train
from tests.dependencies import poll_until
from tests.helpers import small_config
from tests.serving.conftest import BACKENDS, live_service

SALT = "test-split"
FRACTION = 0.5
UNTHROTTLED = {"rate_limit_user_per_second": 1e6, "rate_limit_user_burst": 10**6}


@pytest.fixture(scope="module")
def dense(tiny_dataset, tmp_path_factory):
    """The challenger: the dense baseline of the same config, trained on the same data."""
    config = resolve_variant(small_config(epochs=2), "dense-active")
    return train(tiny_dataset, config, run_dir=tmp_path_factory.mktemp("dense"), progress=False)


def save_dense(root: Path, dense, tiny_dataset) -> Path:
    return save_artefact(
        root, "dense", dense.model, dense.config, tiny_dataset.vocab, dense.metrics(),
        tiny_dataset.fingerprint,
    )  # fmt: skip


@pytest.fixture(scope="module", params=BACKENDS)
def ab(request, tmp_path_factory, trained, dense, tiny_dataset):
    tmp = tmp_path_factory.mktemp(f"ab-{request.param}")
    challenger = save_dense(tmp / "models", dense, tiny_dataset).parent  # beside the control
    yield from live_service(
        request.param, tmp, request, trained, tiny_dataset,
        ab_model_path=challenger, ab_fraction=FRACTION, ab_salt=SALT, **UNTHROTTLED,
    )  # fmt: skip


def users(tiny_dataset, n: int = 60) -> list[str]:
    return [str(u) for u in tiny_dataset.vocab.user_ids[:n]]


def user_in(arm: str, tiny_dataset) -> tuple[int, str]:
    """A user of the data set (index, id) whom the test split puts in ``arm``."""
    split = Split(FRACTION, SALT)
    return next((i, u) for i, u in enumerate(users(tiny_dataset)) if split.arm_of(u) == arm)


def key_in(arm: str) -> str:
    """An anonymous assignment key that the test split puts in ``arm``."""
    split = Split(FRACTION, SALT)
    return next(k for k in (f"session-{i}" for i in range(1000)) if split.arm_of(k) == arm)


def versions(ab) -> dict[str, str]:
    arms = ab.services.arms
    return {CONTROL: arms.control.current.version, CHALLENGER: arms.challenger.current.version}


# --------------------------------------------------------------------------- the split


def test_the_split_is_stable_and_close_to_the_fraction():
    keys = [f"user-{i}" for i in range(20_000)]
    for fraction in (0.1, 0.5, 0.9):
        split = Split(fraction, SALT)
        share = sum(split.arm_of(k) == CHALLENGER for k in keys) / len(keys)
        assert abs(share - fraction) < 0.015, (fraction, share)
        assert [split.arm_of(k) for k in keys[:500]] == [split.arm_of(k) for k in keys[:500]]
    assert {Split(0.0, SALT).arm_of(k) for k in keys} == {CONTROL}
    assert {Split(1.0, SALT).arm_of(k) for k in keys} == {CHALLENGER}
    assert Split(1.0, SALT).arm_of(None) == CONTROL  # nothing to assign by: control


def test_raising_the_fraction_keeps_challenger_users_and_a_new_salt_redraws():
    keys = [f"user-{i}" for i in range(5_000)]
    small, large = Split(0.2, SALT), Split(0.4, SALT)
    in_small = {k for k in keys if small.arm_of(k) == CHALLENGER}
    in_large = {k for k in keys if large.arm_of(k) == CHALLENGER}
    assert in_small < in_large
    redrawn = {k for k in keys if Split(0.2, "another-salt").arm_of(k) == CHALLENGER}
    overlap = len(in_small & redrawn) / len(in_small)
    assert 0.1 < overlap < 0.3  # independent draws: about the fraction itself, not all or none
    assert 0.0 <= bucket("", SALT) < 1.0


# --------------------------------------------------------------------------- serving


def test_each_user_always_gets_their_arms_model(ab, tiny_dataset):
    split, served = Split(FRACTION, SALT), versions(ab)
    arms: dict[str, str] = {}
    with ab.client("shop", "recommend:any") as http:
        for user in users(tiny_dataset, 40):
            bodies = [
                http.get(f"/v1/users/{user}/recommendations", params={"k": 3}).json()
                for _ in range(2)
            ]
            assert bodies[0]["arm"] == bodies[1]["arm"] == split.arm_of(user)
            assert {b["model_version"] for b in bodies} == {served[bodies[0]["arm"]]}
            arms[user] = bodies[0]["arm"]
    assert set(arms.values()) == {CONTROL, CHALLENGER}
    assert served[CONTROL] == "tiny/v0001"
    assert served[CHALLENGER].startswith("dense/")


def test_the_arms_answer_from_different_models(ab, tiny_dataset):
    history = tiny_dataset.vocab.decode_items(tiny_dataset.sequences[0].tolist())
    body = {"history": history, "k": 8}
    with ab.client("shop", "recommend:any") as http:
        control = http.post(
            "/v1/recommendations", json={**body, "assignment_key": key_in(CONTROL)}
        ).json()
        challenger = http.post(
            "/v1/recommendations", json={**body, "assignment_key": key_in(CHALLENGER)}
        ).json()
        keyless = http.post("/v1/recommendations", json=body).json()
        scored = http.post(
            "/v1/scores",
            json={"history": history, "items": ["1", "2"], "assignment_key": key_in(CHALLENGER)},
        ).json()
    assert (control["arm"], challenger["arm"], keyless["arm"]) == (CONTROL, CHALLENGER, CONTROL)
    assert control["items"] != challenger["items"]
    assert challenger["experts"] == []  # the dense model has no experts to report
    assert len(control["experts"]) == 2
    assert scored["arm"] == CHALLENGER
    assert scored["model_version"] == versions(ab)[CHALLENGER]


def test_a_stored_users_answer_is_what_their_arms_predictor_answers(ab, tiny_dataset):
    index, user = user_in(CHALLENGER, tiny_dataset)
    predictor = ab.services.arms.challenger.current.predictor
    expected = predictor.recommend([tiny_dataset.sequences[index]], k=5)[0]
    with ab.client(user) as http:
        body = http.get(f"/v1/users/{user}/recommendations", params={"k": 5}).json()
    assert body["arm"] == CHALLENGER
    assert [i["item_id"] for i in body["items"]] == expected.items


def test_an_assignment_key_is_only_for_anonymous_histories(ab, tiny_dataset):
    user = users(tiny_dataset)[0]
    with ab.client(user) as http:
        r = http.post("/v1/recommendations", json={"user_id": user, "assignment_key": "session-1"})
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "invalid_request"
    assert "assignment_key" in r.json()["error"]["message"]


def test_two_arms_never_share_a_cache_entry(ab, tiny_dataset):
    history = tiny_dataset.vocab.decode_items(tiny_dataset.sequences[5].tolist())
    body = {"history": history, "k": 4, "exclude": ["3"]}
    with ab.client("shop", "recommend:any") as http:
        first = http.post("/v1/recommendations", json={**body, "assignment_key": key_in(CONTROL)})
        other = http.post(
            "/v1/recommendations", json={**body, "assignment_key": key_in(CHALLENGER)}
        )
        again = http.post("/v1/recommendations", json={**body, "assignment_key": key_in(CONTROL)})
    assert (first.json()["cached"], other.json()["cached"], again.json()["cached"]) == (
        False, False, True,
    )  # fmt: skip
    assert other.json()["arm"] == CHALLENGER
    assert again.json()["arm"] == CONTROL
    assert again.json()["items"] == first.json()["items"]


def test_events_record_the_users_arm_and_version(ab, tiny_dataset):
    served = versions(ab)
    posted = {}
    for arm in (CONTROL, CHALLENGER):
        _, user = user_in(arm, tiny_dataset)
        with ab.client(user) as http:
            r = http.post(
                "/v1/events",
                json={"user_id": user, "item_id": "7", "event_type": "purchase",
                      "idempotency_key": f"ab-{uuid.uuid4().hex}"},
            )  # fmt: skip
            assert r.status_code == 201, r.text
            posted[arm] = r.json()
            history = http.get(f"/v1/users/{user}/history", params={"limit": 1}).json()
        assert (posted[arm]["arm"], posted[arm]["model_version"]) == (arm, served[arm])
        assert history["events"][0]["arm"] == arm
        assert history["events"][0]["model_version"] == served[arm]

    with ab.client("ops", "admin") as admin:
        report = admin.get("/v1/admin/experiment").json()
        later = admin.get("/v1/admin/experiment", params={"since": "2999-01-01T00:00:00"})
    assert report["running"] is True
    assert {a["arm"]: a["share"] for a in report["arms"]} == {CONTROL: 0.5, CHALLENGER: 0.5}
    purchases = {
        row["arm"]: row
        for row in report["events"]
        if row["event_type"] == "purchase" and row["arm"] is not None
    }
    for arm in (CONTROL, CHALLENGER):
        assert purchases[arm]["model_version"] == served[arm]
        assert purchases[arm]["events"] >= 1
        assert purchases[arm]["users"] >= 1
    assert later.status_code == 200
    assert later.json()["events"] == []


def test_metrics_carry_the_arm(ab, tiny_dataset):
    # One request per arm, so the test holds on its own and not only after the others.
    for arm in (CONTROL, CHALLENGER):
        _, user = user_in(arm, tiny_dataset)
        with ab.client(user) as http:
            http.get(f"/v1/users/{user}/recommendations", params={"k": 2})
            text = http.get("/metrics").text
    for arm in (CONTROL, CHALLENGER):
        assert re.search(
            rf'moerec_recommendation_duration_seconds_count{{arm="{arm}"}} [1-9]', text
        )
        assert re.search(rf'moerec_model_info{{arm="{arm}",[^}}]*}} 1\.0', text)
    assert 'moerec_circuit_state{dependency="model_challenger"} 0.0' in text


def test_a_failing_challenger_falls_back_and_leaves_the_control_alone(ab, tiny_dataset):
    _, control_user = user_in(CONTROL, tiny_dataset)
    _, challenger_user = user_in(CHALLENGER, tiny_dataset)
    slot = ab.services.arms.challenger
    model = slot.current
    assert model.process is not None
    model.process._process.kill()  # a real crash of the challenger's model process
    model.process._process.join(timeout=10)
    with ab.client("shop", "recommend:any") as http:
        # exclude: a new cache key, so the answer cannot come from an earlier request
        body = {"k": 5, "exclude": [uuid.uuid4().hex[:8]]}
        failed = http.post("/v1/recommendations", json={**body, "user_id": challenger_user})
        control = http.post("/v1/recommendations", json={**body, "user_id": control_user})
        assert (failed.json()["arm"], failed.json()["fallback"]) == (CHALLENGER, True)
        assert failed.json()["model_version"] == model.version
        assert (control.json()["arm"], control.json()["fallback"]) == (CONTROL, False)
        assert ab.services.guard.breakers["model"].state is State.CLOSED

        restarted = poll_until(
            lambda: slot.current if slot.current is not model else None, 60, "the restart"
        )
        assert restarted.process is not None
        assert restarted.process.alive
        again = http.post("/v1/recommendations", json={**body, "user_id": challenger_user})
        text = http.get("/metrics").text
    assert again.json()["fallback"] is False
    assert re.search(
        r'moerec_fallback_recommendations_total{arm="challenger",reason="model_error"} [1-9]', text
    )
    assert 'arm="control",reason="model_error"' not in text


def test_reloading_the_challenger_leaves_the_control_untouched(ab, dense, tiny_dataset, tmp_path):
    control_before = ab.services.arms.control.current
    new_version = save_dense(ab.model_dir.parent, dense, tiny_dataset)
    corrupt = shutil.copytree(new_version, new_version.parent / "v0099")
    weights = bytearray((corrupt / WEIGHTS).read_bytes())
    weights[-5] ^= 0xFF
    (corrupt / WEIGHTS).write_bytes(bytes(weights))
    with ab.client("ops", "admin") as admin:
        loaded = admin.post(
            "/v1/admin/model/reload", json={"arm": CHALLENGER, "path": str(new_version)}
        )
        refused = admin.post(
            "/v1/admin/model/reload", json={"arm": CHALLENGER, "path": str(corrupt)}
        )
        outside = admin.post(
            "/v1/admin/model/reload", json={"arm": CHALLENGER, "path": str(tmp_path)}
        )
        unknown_arm = admin.post("/v1/admin/model/reload", json={"arm": "treatment"})
        info = admin.get("/v1/admin/model").json()
    expected = f"dense/{new_version.name}"
    assert loaded.status_code == 200, loaded.text
    assert (loaded.json()["arm"], loaded.json()["model_version"]) == (CHALLENGER, expected)
    assert refused.status_code == 409
    assert f"{expected} keeps serving the challenger arm" in refused.json()["error"]["message"]
    assert outside.status_code == 422
    assert outside.json()["error"]["code"] == "model_path_outside_registry"
    assert unknown_arm.status_code == 422
    assert ab.services.arms.control.current is control_before  # not even reloaded
    assert (info["arm"], info["model_version"]) == (CONTROL, "tiny/v0001")
    assert info["challenger"]["model_version"] == expected
    assert info["challenger_fraction"] == FRACTION
    _, user = user_in(CHALLENGER, tiny_dataset)
    with ab.client(user) as http:
        assert http.get(f"/v1/users/{user}/recommendations").json()["model_version"] == expected


# --------------------------------------------------------------------------- no experiment


def test_without_a_challenger_nothing_changes(service, tiny_dataset):
    user = users(tiny_dataset)[0]
    with service.client(user) as http:
        rec = http.get(f"/v1/users/{user}/recommendations", params={"k": 3}).json()
        anonymous = http.post(
            "/v1/recommendations", json={"history": ["1", "2"], "assignment_key": "session-9"}
        ).json()
        event = http.post(
            "/v1/events",
            json={"user_id": user, "item_id": "5", "event_type": "view",
                  "idempotency_key": f"ab-{uuid.uuid4().hex}"},
        ).json()  # fmt: skip
        text = http.get("/metrics").text
    with service.client("ops", "admin") as admin:
        info = admin.get("/v1/admin/model").json()
        reload = admin.post("/v1/admin/model/reload", json={"arm": CHALLENGER})
        report = admin.get("/v1/admin/experiment").json()
    assert (rec["arm"], rec["model_version"]) == (None, "tiny/v0001")
    assert (anonymous["arm"], anonymous["model_version"]) == (None, "tiny/v0001")
    assert (event["arm"], event["model_version"]) == (None, "tiny/v0001")
    assert (info["challenger"], info["challenger_fraction"]) == (None, 0.0)
    assert reload.status_code == 409
    assert reload.json()["error"]["code"] == "no_experiment"
    assert report["running"] is False
    assert report["arms"] == [{"arm": CONTROL, "model_version": "tiny/v0001", "share": 1.0}]
    assert all(row["arm"] is None for row in report["events"])
    assert "model_challenger" not in text
    assert 'moerec_recommendation_duration_seconds_count{arm="control"}' in text


# --------------------------------------------------------------------------- storage


def test_the_migration_adds_a_nullable_arm_and_keeps_old_events(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0001")

    async def old_event() -> None:
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(url)
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO events (user_id, item_id, event_type, occurred_at, "
                    "idempotency_key, model_version) VALUES ('u', 'i', 'click', "
                    "'2026-01-01 00:00:00', 'old-event-1', 'tiny/v0001')"
                )
            )
        await engine.dispose()

    async def read() -> list:
        async with Storage(url) as storage:
            return await storage.user_events("u", 10)

    asyncio.run(old_event())
    upgrade(url)
    (stored,) = asyncio.run(read())
    assert (stored.model_version, stored.arm) == ("tiny/v0001", None)
    command.downgrade(alembic_config(url), "0001")  # and back, for a rollback of the release


def test_a_spooled_event_keeps_its_arm(tmp_path):
    event = NewEvent(
        "u", "i", "click", datetime.now(UTC), "spooled-key-1",
        model_version="dense/v0001", arm=CHALLENGER,
    )  # fmt: skip

    async def roundtrip() -> tuple:
        with EventSpool(tmp_path / "spool.db") as spool:
            spooled = await spool.append(event)
            ((_, again),) = await spool.peek(1)
            return spooled, again

    spooled, again = asyncio.run(roundtrip())
    assert spooled.arm == again.arm == CHALLENGER
    assert again.model_version == "dense/v0001"
