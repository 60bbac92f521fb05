"""Kill Redis, kill PostgreSQL, reload a corrupt model: all under load, on a live service.

The service runs on a private PostgreSQL and Redis (``tests/dependencies.py``) with short
breaker settings (``conftest.FAST_BREAKERS``: open for 1 s, judged on 10 calls, closed after
3 good probes). Client threads keep sending recommendations and events for the whole
scenario, and every answer is judged afterwards: the promise under test is that a dependency
outage degrades answers, never fails them, and never loses an acknowledged event.

Deselect with ``-m "not faults"``; CI runs them (missing servers fail there, not skip).
"""

from __future__ import annotations

import contextlib
import shutil
import time

import httpx
import pytest

from tests.dependencies import poll_until
from tests.faults.conftest import circuit_states, readiness, wait_healthy
from tests.faults.load import Load

pytestmark = pytest.mark.faults

LOAD_THREADS = 3
OPEN, CLOSED = 2.0, 0.0  # moerec_circuit_state values
# How long a dependency stays dead under load: several 1 s open periods, so the breaker goes
# through half-open probes that fail and re-open it, not just one open period.
OUTAGE_SECONDS = 4.0
AFTER_SECONDS = 2.0  # traffic kept going once recovered, on the recovered path


def outage_lasted(load: Load, since: float, seconds: float, count: int, kind: str | None = None):
    """Keep the scenario in its current phase for ``seconds`` and ``count`` 2xx answers."""
    poll_until(
        lambda: time.monotonic() - since >= seconds and load.ok_since(since, kind) >= count,
        seconds + 20,
        lambda: (
            f"{seconds:g} s and {count} successful {kind or 'request'}s "
            f"(statuses {load.statuses()})"
        ),
    )


@pytest.fixture
def healthy(fault_service, private_postgres, private_redis, tiny_dataset):
    """Each scenario starts from a healthy service, even after an earlier one failed midway."""
    for server in (private_postgres, private_redis):
        if not server.running:
            server.start()
        server.wait_ready()
    wait_healthy(fault_service, str(tiny_dataset.vocab.user_ids[0]))
    return fault_service


def make_load(service, dataset, key_prefix: str, **options) -> Load:
    tokens = [
        service.token(f"fault-load-{n}", "recommend:any", "events:write")
        for n in range(LOAD_THREADS)
    ]
    return Load(
        service.url,
        tokens,
        [str(u) for u in dataset.vocab.user_ids],
        [str(i) for i in dataset.vocab.item_ids],
        key_prefix,
        **options,
    )


def describe(failures) -> str:
    return "\n".join(
        f"  {o.kind} phase={o.phase} status={o.status} after {o.seconds:.3f} s: {o.detail}"
        for o in failures[:20]
    )


def stored_event_counts(postgres, key_prefix: str) -> dict[str, int]:
    """Straight from PostgreSQL, bypassing the service: how often each test key is stored."""
    rows = postgres.fetch(
        "SELECT idempotency_key, count(*) AS n FROM events "
        "WHERE starts_with(idempotency_key, $1) GROUP BY idempotency_key",
        key_prefix + "-",
    )
    return {row["idempotency_key"]: row["n"] for row in rows}


def test_redis_killed_and_restarted_under_load(healthy, private_redis, private_postgres,
                                               tiny_dataset):  # fmt: skip
    service = healthy
    user = str(tiny_dataset.vocab.user_ids[1])
    probe = {"Authorization": f"Bearer {service.token('fault-probe', 'recommend:any')}"}
    with make_load(service, tiny_dataset, "faults-redis") as load:
        load.wait_for_ok(30)  # steady state before the fault

        load.phase = "down"
        killed = time.monotonic()
        private_redis.kill()
        # Every request calls Redis twice or more (rate limit, cache get/set), so the
        # breaker's window fills with failures within a handful of requests.
        poll_until(
            lambda: circuit_states(service)["cache"] == OPEN, 10, "the cache breaker to open"
        )
        opened = time.monotonic()
        outage_lasted(load, killed, OUTAGE_SECONDS, 40)  # served while degraded
        ready = readiness(service)
        assert ready["status"] == "degraded", ready
        assert ready["checks"]["cache"].startswith("unreachable"), ready
        # Rate limits fall back to the in-process buckets: still enforced, still announced.
        direct = httpx.get(
            f"{service.url}/v1/users/{user}/recommendations", headers=probe, timeout=10
        )
        assert direct.status_code == 200, direct.text
        assert "X-RateLimit-Remaining" in direct.headers
        assert direct.json()["cached"] is False

        load.phase = "recovering"
        restarted = time.monotonic()
        private_redis.start()
        private_redis.wait_ready()
        poll_until(
            lambda: (
                circuit_states(service)["cache"] == CLOSED
                and readiness(service)["checks"]["cache"] == "ok"
            ),
            15,
            "the cache breaker to close after Redis came back",
        )
        closed = time.monotonic()
        load.phase = "after"
        outage_lasted(load, closed, AFTER_SECONDS, 20)

    failures = load.failures()
    print(
        f"\n[redis] breaker open {opened - killed:.2f} s after the kill, closed "
        f"{closed - restarted:.2f} s after the restart; {load.report()}"
    )
    assert failures == [], f"{len(failures)} failed requests:\n{describe(failures)}"
    # The database was up throughout: every acknowledged event is stored, once.
    acknowledged = load.acknowledged_keys()
    stored = stored_event_counts(private_postgres, "faults-redis")
    assert set(stored) == acknowledged
    assert set(stored.values()) == {1}


def test_postgres_killed_and_restarted_under_load(healthy, private_postgres, tiny_dataset):
    service = healthy
    prefix = "faults-pg"
    with make_load(service, tiny_dataset, prefix) as load:
        load.wait_for_ok(30)

        load.phase = "down"
        killed = time.monotonic()
        private_postgres.kill()

        def degraded() -> bool:
            ready = readiness(service)
            return ready["status"] == "degraded" and ready["breakers"]["database"] == "open"

        poll_until(degraded, 10, "/readyz to report degraded with the database breaker open")
        opened = time.monotonic()
        assert circuit_states(service)["database"] in (OPEN, 1.0)  # open, or probing again
        outage_lasted(load, killed, OUTAGE_SECONDS, 30, kind="event")  # accepted while down
        spooled_while_down = readiness(service)["spooled_events"]
        assert spooled_while_down > 0

        load.phase = "recovering"
        restarted = time.monotonic()
        private_postgres.start()
        private_postgres.wait_ready()
        # Crash recovery done: the breaker closes after 3 good probes, but events keep going
        # to the spool (order!) until the replayer has drained it.
        poll_until(
            lambda: (
                readiness(service)["breakers"]["database"] == "closed"
                and circuit_states(service)["database"] == CLOSED
            ),
            20,
            "the database breaker to close after PostgreSQL came back",
        )
        closed = time.monotonic()
        load.phase = "after"
        outage_lasted(load, closed, AFTER_SECONDS, 20)

    # No more traffic: the replayer (every 1 s) must empty the spool on its own.
    poll_until(lambda: readiness(service)["spooled_events"] == 0, 20, "the spool to drain", 0.1)
    drained = time.monotonic()

    down = [o for o in load.snapshot() if o.phase == "down"]
    down_events = [o for o in down if o.kind == "event"]
    spooled = [o for o in down_events if o.status == 202]
    failures = load.failures()
    acknowledged = load.acknowledged_keys()
    stored = stored_event_counts(private_postgres, prefix)
    print(
        f"\n[postgres] breaker open {opened - killed:.2f} s after the kill; closed "
        f"{closed - restarted:.2f} s after the restart; spool ({spooled_while_down} seen while "
        f"down) drained {drained - closed:.2f} s after the close; {len(down_events)} events "
        f"sent while down, {len(spooled)} answered 202; {len(acknowledged)} acknowledged, "
        f"{len(stored)} stored; {load.report()}"
    )

    # The 5xx bound is 0, not "the calls before the breaker opens": those calls fail inside
    # the service, where both request kinds degrade - a recommendation reads the history
    # from memory (or serves the popularity fallback), an event goes to the durable spool -
    # and authentication needs neither the database (JWT) nor anything but Redis (limits).
    # So the breaker only decides how long a request waits (one 0.5 s timeout at most, and
    # a dead PostgreSQL refuses connections at once), never whether it fails.
    assert failures == [], f"{len(failures)} failed requests:\n{describe(failures)}"
    assert down_events, load.statuses("down")
    assert all(o.ok for o in down_events), load.statuses("down")
    assert spooled, "no event was spooled (202) while PostgreSQL was down"
    # Exactly once: every acknowledged key is in the table once, nothing else is.
    missing = acknowledged - set(stored)
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:5]}"
    assert set(stored) == acknowledged
    repeated = {key: n for key, n in stored.items() if n != 1}
    assert not repeated, f"events stored more than once: {repeated}"
    ready = readiness(service)
    assert ready["status"] == "ready", ready
    assert ready["breakers"]["database"] == "closed", ready


@pytest.fixture
def corrupt_artefacts(healthy):
    """Copies of the served version with one flipped byte in model.safetensors.

    They live in the model registry (beside the served model's folder): the reload route
    refuses paths outside it with a 422 before even looking, which is not what this tests.
    """
    version = healthy.model_dir / "v0001"
    corrupt = {}
    try:
        for name, where in (("header", 12), ("weights", None)):
            copy = healthy.model_dir.parent / f"corrupt-{name}"
            shutil.copytree(version, copy)
            weights = copy / "model.safetensors"
            data = bytearray(weights.read_bytes())
            data[where if where is not None else len(data) // 2] ^= 0xFF
            weights.write_bytes(data)
            corrupt[name] = copy
        yield corrupt
    finally:
        for copy in corrupt.values():
            shutil.rmtree(copy, ignore_errors=True)


def test_a_corrupt_artefact_is_refused_under_load(healthy, corrupt_artefacts, tiny_dataset):
    service, corrupt = healthy, corrupt_artefacts

    answers = {}
    with make_load(service, tiny_dataset, "faults-reload") as load:
        load.wait_for_ok(20)
        load.phase = "reloading"
        started = time.monotonic()
        with service.client("ops", "admin") as admin:
            for name, path in corrupt.items():
                answers[name] = admin.post("/v1/admin/model/reload", json={"path": str(path)})
            serving = admin.get("/v1/admin/model").json()
        reloads = time.monotonic() - started
        load.phase = "after"
        outage_lasted(load, time.monotonic(), AFTER_SECONDS, 20)

    print(f"\n[reload] 2 refused reloads took {reloads:.2f} s; {load.report()}")
    for name, answer in answers.items():
        assert answer.status_code == 409, (name, answer.text)
        assert answer.json()["error"]["code"] == "model_refused", (name, answer.text)
    assert serving["model_version"] == "tiny/v0001"
    not_ok = [o for o in load.snapshot() if not o.ok]
    assert not_ok == [], f"{len(not_ok)} requests not answered 2xx:\n{describe(not_ok)}"


DRAIN_SECONDS = 10.0  # after recovery, under the same load: ~10 replay periods of 1 s


def test_the_spool_drains_while_events_keep_coming(healthy, private_postgres, tiny_dataset):
    """After an outage the service must get back to storing events directly, under load.

    While anything is spooled, every new event is spooled too (to keep the order), so the
    spool must become empty while traffic continues; else the service stays in its degraded
    mode - 202s without id or history version, recommendations read from PostgreSQL without
    the user's newest events - until traffic pauses, which on a busy service is never.
    """
    service = healthy
    with make_load(service, tiny_dataset, "faults-drain") as load:
        load.wait_for_ok(20)
        load.phase = "down"
        private_postgres.kill()
        poll_until(lambda: readiness(service)["spooled_events"] >= 20, 15, "events to spool")
        load.phase = "recovering"
        private_postgres.start()
        private_postgres.wait_ready()
        poll_until(
            lambda: readiness(service)["breakers"]["database"] == "closed",
            20,
            "the database breaker to close",
        )
        closed = time.monotonic()
        load.phase = "after"
        backlog: list[int] = []  # spooled_events as /readyz reported it, under load

        def stored_directly_again() -> bool:
            backlog.append(readiness(service)["spooled_events"])
            return any(
                o.kind == "event" and o.status == 201 and o.started > closed
                for o in load.snapshot()
            )

        with contextlib.suppress(TimeoutError):
            poll_until(stored_directly_again, DRAIN_SECONDS, "an event stored directly", 0.2)
        waited = time.monotonic() - closed

    after = load.statuses("after")
    print(f"\n[drain] {waited:.2f} s after the close: {after}; backlog polled {backlog}")
    assert after.get("event:201", 0) > 0, (
        f"{waited:.1f} s after PostgreSQL recovered (breaker closed) every event is still "
        f"spooled under a steady load: {after}; /readyz spooled_events meanwhile: {backlog}"
    )


def answer(service, method: str, path: str, *scopes: str) -> str:
    """ "status error-code [Retry-After]" of one request, or the transport error's name.

    A fresh connection each time: an unhandled error makes uvicorn close the connection,
    and one request's fate must not decide the next one's.
    """
    with service.client("fault-probe", *scopes) as http:
        try:
            r = http.request(method, path)
        except httpx.HTTPError as exc:
            return f"no answer ({type(exc).__name__}: {exc})"
    code = r.json().get("error", {}).get("code", "") if r.content else ""
    retry = " Retry-After" if "Retry-After" in r.headers else ""
    return f"{r.status_code} {code}{retry}".strip()


def test_what_needs_postgres_answers_503_while_it_is_down(healthy, private_postgres,
                                                          tiny_dataset):  # fmt: skip
    """Some reads cannot degrade (a history page, the catalogue): they must say 503 then.

    A 500 "internal_error" tells a client the request itself broke the service; 503 with
    Retry-After (documented for "a dependency is unavailable") tells it to come back.
    """
    service = healthy
    user = str(tiny_dataset.vocab.user_ids[0])
    item = str(tiny_dataset.vocab.item_ids[0])
    paths = [f"/v1/users/{user}/history", f"/v1/items?q={item}", f"/v1/items/{item}"]
    up = {path: answer(service, "GET", path, "recommend:any") for path in paths}
    assert all(a.startswith("200") for a in up.values()), up
    private_postgres.kill()
    try:
        down = {path: answer(service, "GET", path, "recommend:any") for path in paths}
    finally:
        private_postgres.start()
        private_postgres.wait_ready()
    print(f"\n[postgres down] {down}")
    assert all(a.startswith("503") and a.endswith("Retry-After") for a in down.values()), down


def test_cache_flush_answers_503_while_redis_is_down(healthy, private_redis):
    service = healthy
    assert answer(service, "POST", "/v1/admin/cache/flush", "admin").startswith("200")
    private_redis.kill()
    try:
        down = answer(service, "POST", "/v1/admin/cache/flush", "admin")
    finally:
        private_redis.start()
        private_redis.wait_ready()
    print(f"\n[redis down] cache flush: {down}")
    assert down.startswith("503"), down
