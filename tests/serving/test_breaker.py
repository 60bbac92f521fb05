"""Circuit breakers: opening, failing fast, probing, closing, with a fake clock (no sleeping)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moerec import MoerecError
from moerec.serving.breaker import (
    BreakerBoard,
    BreakerSettings,
    CircuitBreaker,
    CircuitOpenError,
    DependencyTimeoutError,
    State,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class DownError(Exception):
    pass


@dataclass
class Dependency:
    """A fake dependency that counts how often it is really called."""

    calls: int = 0

    async def ok(self) -> str:
        self.calls += 1
        return "ok"

    async def fail(self) -> str:
        self.calls += 1
        raise DownError("down")


@dataclass
class Harness:
    clock: FakeClock = field(default_factory=FakeClock)
    changes: list[tuple[str, State, State]] = field(default_factory=list)
    dependency: Dependency = field(default_factory=Dependency)

    def breaker(self, **overrides: object) -> CircuitBreaker:
        return CircuitBreaker(
            "database",
            BreakerSettings(**overrides),  # type: ignore[arg-type]
            clock=self.clock,
            on_change=lambda *change: self.changes.append(change),
        )

    def feed(self, breaker: CircuitBreaker, outcomes: str) -> None:
        """Run one call per character: ``s`` succeeds, ``f`` fails."""

        async def main() -> None:
            for outcome in outcomes:
                fn = self.dependency.ok if outcome == "s" else self.dependency.fail
                expected = pytest.raises(DownError) if outcome == "f" else contextlib.nullcontext()
                with expected:
                    await breaker.call(fn)

        asyncio.run(main())

    def transitions(self) -> list[tuple[State, State]]:
        return [(old, new) for _, old, new in self.changes]


def run(coroutine: Awaitable[object]) -> object:
    async def main() -> object:
        return await coroutine

    return asyncio.run(main())


def open_breaker(harness: Harness, **overrides: object) -> CircuitBreaker:
    breaker = harness.breaker(**overrides)
    harness.feed(breaker, "f" * breaker.settings.minimum_calls)
    assert breaker.state is State.OPEN
    return breaker


def half_open_breaker(harness: Harness, **overrides: object) -> CircuitBreaker:
    breaker = open_breaker(harness, **overrides)
    harness.clock.advance(breaker.settings.open_seconds)
    assert breaker.state is State.HALF_OPEN
    return breaker


# --------------------------------------------------------------------------- closed


def test_a_new_breaker_is_closed_and_passes_calls():
    harness = Harness()
    breaker = harness.breaker()
    assert breaker.state is State.CLOSED
    assert run(breaker.call(harness.dependency.ok)) == "ok"
    assert harness.dependency.calls == 1
    assert harness.changes == []


def test_stays_closed_below_minimum_calls_even_when_every_call_fails():
    harness = Harness()
    breaker = harness.breaker()
    harness.feed(breaker, "f" * 9)
    assert breaker.state is State.CLOSED
    assert breaker.snapshot()["failure_rate"] == 1.0
    harness.feed(breaker, "f")
    assert breaker.state is State.OPEN


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        ("sssss" + "fffff", State.CLOSED),  # 5/10 = 50% is not > 50%
        ("ssss" + "ffffff", State.OPEN),  # 6/10
        ("s" * 10 + "f" * 10, State.CLOSED),  # a full window at exactly 50%
        ("s" * 10 + "f" * 11, State.OPEN),  # the oldest success slid out: 11/20
    ],
)
def test_opens_only_when_the_failure_rate_is_strictly_above_the_threshold(outcomes, expected):
    harness = Harness()
    breaker = harness.breaker()
    harness.feed(breaker, outcomes)
    assert breaker.state is expected


def test_the_window_forgets_old_failures():
    harness = Harness()
    breaker = harness.breaker()
    harness.feed(breaker, "f" * 4 + "s" * 16 + "f" * 10)  # the first 4 failures slid out
    assert breaker.state is State.CLOSED
    assert breaker.snapshot()["calls_in_window"] == 20
    assert breaker.snapshot()["failures_in_window"] == 10


# --------------------------------------------------------------------------- open


def test_an_open_breaker_fails_fast_without_calling_the_dependency():
    harness = Harness()
    breaker = open_breaker(harness)
    calls = harness.dependency.calls
    harness.clock.advance(12.5)
    with pytest.raises(CircuitOpenError) as raised:
        run(breaker.call(harness.dependency.ok))
    assert harness.dependency.calls == calls
    error = raised.value
    assert isinstance(error, MoerecError)
    assert error.name == "database"
    assert error.retry_after == pytest.approx(17.5)
    assert "database" in str(error)
    assert "17.5 s" in str(error)
    assert not breaker.allow()
    assert breaker.snapshot()["rejected_calls"] == 2


def test_half_open_after_open_seconds_not_before():
    harness = Harness()
    breaker = open_breaker(harness, open_seconds=5.0)
    harness.clock.advance(4.9)
    assert breaker.state is State.OPEN
    assert breaker.snapshot()["seconds_until_half_open"] == pytest.approx(0.1)
    harness.clock.advance(0.1)
    assert breaker.state is State.HALF_OPEN
    assert breaker.snapshot()["seconds_until_half_open"] is None
    assert harness.transitions() == [
        (State.CLOSED, State.OPEN),
        (State.OPEN, State.HALF_OPEN),
    ]


# --------------------------------------------------------------------------- half-open


def test_only_the_permitted_number_of_concurrent_probes_is_admitted():
    harness = Harness()
    breaker = half_open_breaker(harness)
    started = 0

    async def main() -> list[object]:
        release = asyncio.Event()

        async def probe() -> str:
            nonlocal started
            started += 1
            await release.wait()
            return "ok"

        tasks = [asyncio.ensure_future(breaker.call(probe)) for _ in range(15)]
        await asyncio.sleep(0)
        assert started == 10  # the five extra calls were refused, not queued
        assert breaker.snapshot()["probes_admitted"] == 10
        release.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    assert results.count("ok") == 10
    refused = [result for result in results if isinstance(result, CircuitOpenError)]
    assert len(refused) == 5
    assert all(error.retry_after == 0.0 for error in refused)
    assert breaker.state is State.CLOSED


@pytest.mark.parametrize(
    ("probes", "expected"),
    [
        ("s" * 9 + "f", State.CLOSED),  # 90% > 80%
        ("f" + "s" * 9, State.CLOSED),
        ("s" * 8 + "ff", State.OPEN),  # 80% is not > 80%
        ("f" * 10, State.OPEN),
    ],
)
def test_probes_close_the_breaker_only_above_the_success_threshold(probes, expected):
    harness = Harness()
    breaker = half_open_breaker(harness)
    harness.feed(breaker, probes[:-1])
    assert breaker.state is State.HALF_OPEN  # decided only when every probe completed
    harness.feed(breaker, probes[-1])
    assert breaker.state is expected


def test_reopening_starts_a_new_open_period():
    harness = Harness()
    breaker = half_open_breaker(harness)
    harness.feed(breaker, "f" * 10)
    assert breaker.state is State.OPEN
    assert breaker.snapshot()["seconds_until_half_open"] == pytest.approx(30.0)
    harness.clock.advance(30.0)
    assert breaker.state is State.HALF_OPEN


def test_closing_resets_the_window():
    harness = Harness()
    breaker = half_open_breaker(harness)
    harness.feed(breaker, "s" * 10)
    snapshot = breaker.snapshot()
    assert (snapshot["state"], snapshot["calls_in_window"], snapshot["failure_rate"]) == (
        "closed",
        0,
        0.0,
    )
    harness.feed(breaker, "f" * 9)  # a fresh window needs minimum_calls again
    assert breaker.state is State.CLOSED


def test_a_cancelled_probe_gives_its_slot_back():
    harness = Harness()
    breaker = half_open_breaker(harness, half_open_probes=2)

    async def main() -> None:
        never = asyncio.Event()

        async def hang() -> None:
            await never.wait()

        hanging = asyncio.ensure_future(breaker.call(hang))
        await asyncio.sleep(0)
        assert breaker.snapshot()["probes_admitted"] == 1
        hanging.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hanging
        assert breaker.snapshot()["probes_admitted"] == 0
        await breaker.call(harness.dependency.ok)
        await breaker.call(harness.dependency.ok)

    asyncio.run(main())
    assert breaker.state is State.CLOSED


def test_a_cancelled_call_is_not_an_outcome():
    harness = Harness()
    breaker = harness.breaker(minimum_calls=1, window_size=1)

    async def main() -> None:
        task = asyncio.ensure_future(breaker.call(asyncio.Event().wait))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert breaker.snapshot()["calls_in_window"] == 0


def test_an_outcome_from_a_period_that_is_over_is_ignored():
    # A slow call admitted while closed fails after the breaker has opened and half-opened:
    # it must not count as one of the probes.
    harness = Harness()
    breaker = harness.breaker(half_open_probes=1)

    async def main() -> None:
        release = asyncio.Event()

        async def slow_failure() -> None:
            await release.wait()
            raise DownError("late")

        slow = asyncio.ensure_future(breaker.call(slow_failure))
        await asyncio.sleep(0)
        for _ in range(10):
            with pytest.raises(DownError):
                await breaker.call(harness.dependency.fail)
        assert breaker.state is State.OPEN
        harness.clock.advance(30.0)
        assert breaker.state is State.HALF_OPEN
        release.set()
        with pytest.raises(DownError):
            await slow
        assert breaker.state is State.HALF_OPEN
        assert breaker.snapshot()["probes_completed"] == 0
        await breaker.call(harness.dependency.ok)

    asyncio.run(main())
    assert breaker.state is State.CLOSED


# --------------------------------------------------------------------------- outcomes


def test_a_timeout_is_a_failure_and_raises_a_timeout_error():
    harness = Harness()
    breaker = harness.breaker()

    async def main() -> None:
        never = asyncio.Event()
        with pytest.raises(DependencyTimeoutError) as raised:
            await breaker.call(never.wait, timeout=0.01)
        assert isinstance(raised.value, TimeoutError)
        assert isinstance(raised.value, MoerecError)
        assert raised.value.name == "database"
        assert "0.01 s" in str(raised.value)

    asyncio.run(main())
    assert breaker.snapshot()["failures_in_window"] == 1


def test_timeouts_open_the_breaker_even_when_other_errors_are_not_failures():
    harness = Harness()
    breaker = CircuitBreaker(
        "cache", BreakerSettings(minimum_calls=2), clock=harness.clock, is_failure=lambda e: False
    )

    async def main() -> None:
        for _ in range(2):
            with pytest.raises(TimeoutError):
                await breaker.call(asyncio.Event().wait, timeout=0.01)

    asyncio.run(main())
    assert breaker.state is State.OPEN


def test_a_timeout_error_raised_by_the_dependency_itself_passes_through():
    harness = Harness()
    breaker = harness.breaker()

    async def driver_timeout() -> None:
        raise TimeoutError("asyncpg command timeout")

    with pytest.raises(TimeoutError) as raised:
        run(breaker.call(driver_timeout, timeout=10))
    assert not isinstance(raised.value, DependencyTimeoutError)
    assert breaker.snapshot()["failures_in_window"] == 1


@pytest.mark.parametrize("timeout", [0, -1.0])
def test_a_timeout_must_be_positive(timeout):
    harness = Harness()
    breaker = harness.breaker()
    with pytest.raises(ValueError, match="timeout"):
        run(breaker.call(harness.dependency.ok, timeout=timeout))
    assert harness.dependency.calls == 0


def test_errors_that_are_not_failures_count_as_successes_and_are_reraised():
    harness = Harness()
    breaker = CircuitBreaker(
        "database",
        clock=harness.clock,
        is_failure=lambda exc: not isinstance(exc, ValueError),
    )

    async def rejected() -> None:
        raise ValueError("idempotency conflict")

    async def main() -> None:
        for _ in range(30):
            with pytest.raises(ValueError, match="idempotency conflict"):
                await breaker.call(rejected)

    asyncio.run(main())
    snapshot = breaker.snapshot()
    assert (snapshot["state"], snapshot["calls_in_window"], snapshot["failure_rate"]) == (
        "closed",
        20,
        0.0,
    )


def test_on_change_sees_every_transition_in_order():
    harness = Harness()
    breaker = half_open_breaker(harness)
    harness.feed(breaker, "s" * 5 + "f" * 5)
    harness.clock.advance(30.0)
    harness.feed(breaker, "s" * 10)
    assert harness.changes == [
        ("database", State.CLOSED, State.OPEN),
        ("database", State.OPEN, State.HALF_OPEN),
        ("database", State.HALF_OPEN, State.OPEN),
        ("database", State.OPEN, State.HALF_OPEN),
        ("database", State.HALF_OPEN, State.CLOSED),
    ]


def test_a_failing_on_change_hook_is_logged_not_raised(caplog):
    harness = Harness()

    def broken(name: str, old: State, new: State) -> None:
        raise RuntimeError("gauge exploded")

    breaker = CircuitBreaker("model", BreakerSettings(minimum_calls=1), on_change=broken)
    with caplog.at_level(logging.ERROR, logger="moerec.serving.breaker"), pytest.raises(DownError):
        run(breaker.call(harness.dependency.fail))
    assert breaker.state is State.OPEN
    assert "on_change hook failed" in caplog.text


def test_snapshot_contents():
    harness = Harness()
    breaker = harness.breaker()
    harness.feed(breaker, "ssf")
    assert breaker.snapshot() == {
        "name": "database",
        "state": "closed",
        "failure_rate": pytest.approx(1 / 3),
        "calls_in_window": 3,
        "failures_in_window": 1,
        "seconds_until_half_open": None,
        "probes_admitted": 0,
        "probes_completed": 0,
        "probes_succeeded": 0,
        "rejected_calls": 0,
    }
    harness.feed(breaker, "f" * 7)
    harness.clock.advance(10)
    snapshot = breaker.snapshot()
    assert snapshot["state"] == "open"
    assert snapshot["seconds_until_half_open"] == pytest.approx(20.0)
    harness.clock.advance(20)
    harness.feed(breaker, "sf")
    snapshot = breaker.snapshot()
    assert (snapshot["state"], snapshot["probes_admitted"], snapshot["probes_completed"]) == (
        "half_open",
        2,
        2,
    )
    assert snapshot["probes_succeeded"] == 1


def test_state_values_are_the_gauge_values():
    assert [State.CLOSED.value, State.HALF_OPEN.value, State.OPEN.value] == [0, 1, 2]
    assert State.HALF_OPEN.label == "half_open"


# --------------------------------------------------------------------------- sync API


def test_the_sync_api_follows_the_same_rules():
    harness = Harness()
    breaker = harness.breaker(minimum_calls=2, half_open_probes=2)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is State.OPEN
    assert not breaker.allow()
    breaker.record_success()  # ignored while open
    harness.clock.advance(30)
    assert breaker.allow()
    assert breaker.allow()
    assert not breaker.allow()  # both probe slots taken
    breaker.record_success()
    assert breaker.state is State.HALF_OPEN
    breaker.record_success()
    assert breaker.state is State.CLOSED
    breaker.record_success()
    assert breaker.snapshot()["calls_in_window"] == 1


def test_the_sync_api_ignores_outcomes_without_an_outstanding_probe():
    harness = Harness()
    breaker = harness.breaker(minimum_calls=1, half_open_probes=1)
    breaker.record_failure()
    harness.clock.advance(30)
    breaker.record_success()  # nobody was admitted: not a probe result
    assert breaker.state is State.HALF_OPEN


# --------------------------------------------------------------------------- settings, errors


@pytest.mark.parametrize(
    "overrides",
    [
        {"window_size": 0},
        {"minimum_calls": 0},
        {"minimum_calls": 21},  # larger than the window: could never open
        {"failure_rate_threshold": 1.0},
        {"failure_rate_threshold": -0.1},
        {"close_success_threshold": 1.0},
        {"open_seconds": -1},
        {"half_open_probes": 0},
    ],
)
def test_settings_that_could_never_work_are_refused(overrides):
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        BreakerSettings(**overrides)


def test_errors_survive_pickling():
    open_error = pickle.loads(pickle.dumps(CircuitOpenError("cache", 3.0)))
    assert (open_error.name, open_error.retry_after) == ("cache", 3.0)
    timeout_error = pickle.loads(pickle.dumps(DependencyTimeoutError("model", 2.0)))
    assert (timeout_error.name, timeout_error.timeout, str(timeout_error)) == (
        "model",
        2.0,
        "model did not answer within 2 s",
    )


# --------------------------------------------------------------------------- board


def test_the_board_creates_one_breaker_per_name_with_shared_settings():
    clock = FakeClock()
    changes: list[tuple[str, State, State]] = []
    board = BreakerBoard(
        BreakerSettings(minimum_calls=1, window_size=1),
        clock=clock,
        on_change=lambda *change: changes.append(change),
        names=["database"],
    )
    assert "database" in board
    assert "cache" not in board
    cache = board.get("cache")
    assert board.get("cache") is cache
    assert board["cache"] is cache
    with pytest.raises(KeyError):
        board["model"]
    assert list(board) == ["database", "cache"]
    assert len(board) == 2
    assert cache.settings.minimum_calls == 1

    cache.record_failure()
    assert board.states() == {"database": State.CLOSED, "cache": State.OPEN}
    assert changes == [("cache", State.CLOSED, State.OPEN)]
    snapshot = board.snapshot()
    assert set(snapshot) == {"database", "cache"}
    assert snapshot["cache"]["state"] == "open"
    clock.advance(30)
    assert board.states()["cache"] is State.HALF_OPEN


def test_the_board_applies_is_failure_per_breaker():
    def never(exc: BaseException) -> bool:
        return False

    board = BreakerBoard(BreakerSettings(minimum_calls=1, window_size=1))
    lenient = board.get("database", is_failure=never)
    assert board.get("database") is lenient
    assert board.get("database", is_failure=never) is lenient
    with pytest.raises(ValueError, match="another is_failure"):
        board.get("database", is_failure=lambda exc: True)
    with pytest.raises(DownError):
        run(lenient.call(Dependency().fail))
    assert lenient.state is State.CLOSED
    with pytest.raises(DownError):
        run(board.get("cache").call(Dependency().fail))
    assert board.states()["cache"] is State.OPEN


# --------------------------------------------------------------------------- properties


class ReferenceBreaker:
    """The spec, written as plainly as possible (sequential calls only)."""

    def __init__(self, settings: BreakerSettings) -> None:
        self.s = settings
        self.state = "closed"
        self.window: list[bool] = []  # True = success
        self.probes: list[bool] = []
        self.opened_at = 0.0
        self.transitions: list[tuple[str, str]] = []

    def _go(self, new: str, now: float) -> None:
        self.transitions.append((self.state, new))
        self.state = new
        self.probes = []
        if new == "open":
            self.opened_at = now
        if new == "closed":
            self.window = []

    def look(self, now: float) -> str:
        if self.state == "open" and now - self.opened_at >= self.s.open_seconds:
            self._go("half_open", now)
        return self.state

    def call(self, now: float, success: bool) -> bool:
        state = self.look(now)
        if state == "open":
            return False
        if state == "closed":
            self.window = [*self.window, success][-self.s.window_size :]
            failures = self.window.count(False)
            if len(self.window) >= self.s.minimum_calls and Fraction(
                failures, len(self.window)
            ) > Fraction(self.s.failure_rate_threshold):
                self._go("open", now)
            return True
        self.probes.append(success)
        if len(self.probes) == self.s.half_open_probes:
            rate = Fraction(sum(self.probes), self.s.half_open_probes)
            self._go("closed" if rate > Fraction(self.s.close_success_threshold) else "open", now)
        return True


@st.composite
def breaker_settings(draw: st.DrawFn) -> BreakerSettings:
    window = draw(st.integers(1, 8))
    return BreakerSettings(
        window_size=window,
        minimum_calls=draw(st.integers(1, window)),
        failure_rate_threshold=draw(st.sampled_from([0.0, 0.25, 0.5, 0.75])),
        open_seconds=draw(st.sampled_from([0.0, 1.0, 30.0])),
        half_open_probes=draw(st.integers(1, 5)),
        close_success_threshold=draw(st.sampled_from([0.0, 0.5, 0.8])),
    )


steps = st.lists(
    st.one_of(
        st.tuples(st.just("call"), st.booleans()),
        st.tuples(st.just("wait"), st.sampled_from([0.5, 1.0, 15.0, 30.0])),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(settings_=breaker_settings(), steps_=steps)
def test_the_breaker_matches_the_reference_model(settings_, steps_):
    clock = FakeClock()
    seen: list[tuple[str, str]] = []
    breaker = CircuitBreaker(
        "dep",
        settings_,
        clock=clock,
        on_change=lambda _, old, new: seen.append((old.label, new.label)),
    )
    model = ReferenceBreaker(settings_)
    dependency = Dependency()

    async def main() -> None:
        for kind, value in steps_:
            if kind == "wait":
                clock.advance(value)
            else:
                before = dependency.calls
                fn = dependency.ok if value else dependency.fail
                with contextlib.suppress(DownError, CircuitOpenError):
                    await breaker.call(fn)
                admitted = model.call(clock.now, bool(value))
                assert (dependency.calls - before == 1) == admitted
            assert breaker.state.label == model.look(clock.now)

    asyncio.run(main())
    assert seen == model.transitions


LEGAL = {
    (State.CLOSED, State.OPEN),
    (State.OPEN, State.HALF_OPEN),
    (State.HALF_OPEN, State.OPEN),
    (State.HALF_OPEN, State.CLOSED),
}

concurrent_steps = st.lists(
    st.one_of(
        st.tuples(st.just("start"), st.just(0)),
        st.tuples(st.just("finish_ok"), st.integers(0, 30)),
        st.tuples(st.just("finish_fail"), st.integers(0, 30)),
        st.tuples(st.just("cancel"), st.integers(0, 30)),
        st.tuples(st.just("wait"), st.just(0)),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(steps_=concurrent_steps)
def test_concurrent_calls_never_exceed_the_probe_budget(steps_):
    """Random interleavings of many in-flight calls: invariants of the spec hold throughout."""
    clock = FakeClock()
    period = [0]  # bumped on every transition
    transitions: list[tuple[State, State]] = []

    def on_change(name: str, old: State, new: State) -> None:
        transitions.append((old, new))
        period[0] += 1

    breaker = CircuitBreaker(
        "dep",
        BreakerSettings(window_size=4, minimum_calls=2, open_seconds=10, half_open_probes=3),
        clock=clock,
        on_change=on_change,
    )
    # Per period: probes running at once (their peak) and probes that ended with an outcome.
    # A cancelled probe gives its slot back (see CircuitBreaker.call), so a period may admit
    # more than three calls in all, but never run more than three at once or judge on more.
    running: dict[int, int] = {}
    peak: dict[int, int] = {}
    judged: dict[int, int] = {}
    states_at_admission: list[State] = []

    async def main() -> None:
        in_flight: list[tuple[asyncio.Future[bool], asyncio.Task[object]]] = []
        every_task: list[asyncio.Task[object]] = []

        async def dependency(outcome: asyncio.Future[bool]) -> str:
            states_at_admission.append(breaker._state)
            admitted = period[0]
            running[admitted] = running.get(admitted, 0) + 1
            peak[admitted] = max(peak.get(admitted, 0), running[admitted])
            try:
                ok = await outcome
            finally:
                running[admitted] -= 1
            judged[admitted] = judged.get(admitted, 0) + 1
            if not ok:
                raise DownError("down")
            return "ok"

        for kind, index in steps_:
            if kind == "start":
                outcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
                task = asyncio.ensure_future(breaker.call(lambda o=outcome: dependency(o)))
                in_flight.append((outcome, task))
                every_task.append(task)
            elif kind == "wait":
                clock.advance(10)
            elif in_flight:
                outcome, task = in_flight.pop(index % len(in_flight))
                if kind == "cancel":
                    task.cancel()
                else:
                    outcome.set_result(kind == "finish_ok")
            for _ in range(3):
                await asyncio.sleep(0)
            snapshot = breaker.snapshot()
            assert snapshot["probes_admitted"] <= 3
            assert snapshot["probes_completed"] <= snapshot["probes_admitted"]
        for _, task in in_flight:
            task.cancel()
        await asyncio.gather(*every_task, return_exceptions=True)

    asyncio.run(main())
    assert set(transitions) <= LEGAL
    assert State.OPEN not in states_at_admission
    half_open_periods = {
        number for number, (_, new) in enumerate(transitions, start=1) if new is State.HALF_OPEN
    }
    for number in half_open_periods:
        assert peak.get(number, 0) <= 3
        assert judged.get(number, 0) <= 3


def test_call_accepts_any_zero_argument_coroutine_factory():
    harness = Harness()
    breaker = harness.breaker()
    factory: Callable[[], Awaitable[int]] = lambda: asyncio.sleep(0, result=7)  # noqa: E731
    assert run(breaker.call(factory, timeout=1.0)) == 7
