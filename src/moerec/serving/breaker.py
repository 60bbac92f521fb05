"""Circuit breakers: stop calling a dependency that is failing, and probe it before trusting it.

One breaker guards one dependency ("database", "cache", "model"). Without it every request
would wait for its own timeout against a dead database; with it a dead dependency costs the
calls of one window, then requests fail fast (and the caller degrades) until a few probes show
it has recovered.

States (the numeric values are what the Prometheus gauge exports):

* ``CLOSED`` (0): calls pass. The outcomes of the last ``window_size`` calls are kept (a
  count-based sliding window: time-based windows judge a quiet dependency on a handful of old
  calls, a count-based one always on the most recent evidence). The breaker opens when the
  window holds at least ``minimum_calls`` outcomes and the failure rate is strictly greater
  than ``failure_rate_threshold``: two failures out of the first two calls after a deploy are
  noise, not an outage.
* ``OPEN`` (2): calls fail at once with :class:`CircuitOpenError`, without touching the
  dependency, for ``open_seconds``.
* ``HALF_OPEN`` (1): up to ``half_open_probes`` calls are let through as probes; further
  calls fail fast while the probes are in flight. When every probe has completed the breaker
  closes (with an empty window) if strictly more than ``close_success_threshold`` of them
  succeeded, and opens again for a new period otherwise.

The OPEN -> HALF_OPEN transition has no timer behind it: it happens the first time the breaker
is looked at (a call, :attr:`CircuitBreaker.state`, a snapshot) after the open period ended,
and ``on_change`` fires then.

Concurrency: the breaker is meant for one asyncio event loop and takes no locks. Every state
change happens in synchronous code between ``await`` points, so concurrent coroutines see
consistent counts. A call is admitted under a *generation* number that changes with every
transition; an outcome that arrives after the breaker moved on (a slow call admitted while
closed that fails after the breaker opened) belongs to a period that is over and is ignored.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypedDict, TypeVar

from moerec import MoerecError

T = TypeVar("T")

log = logging.getLogger(__name__)

Clock = Callable[[], float]
OnChange = Callable[[str, "State", "State"], None]
IsFailure = Callable[[BaseException], bool]


class State(enum.Enum):
    """A breaker's state; ``value`` is the number exported as a gauge (0 is healthy)."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2

    @property
    def label(self) -> str:
        """The lower-case name used in snapshots and logs (``"half_open"``)."""
        return self.name.lower()


class CircuitOpenError(MoerecError):
    """The breaker refused the call without trying the dependency.

    ``retry_after`` is how many seconds remain until the breaker will probe again (0.0 when it
    is already half-open and only waiting for its probes to finish): the HTTP layer can turn it
    into a ``Retry-After`` header.
    """

    def __init__(self, name: str, retry_after: float) -> None:
        self.name = name
        self.retry_after = max(0.0, retry_after)
        if self.retry_after > 0:
            when = f"it will be probed again in {self.retry_after:.1f} s"
        else:
            when = "it is being probed now"
        super().__init__(f"{name} is unavailable (circuit open, calls are not attempted); {when}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle through ``args``, which here holds only the message.
        return (type(self), (self.name, self.retry_after))


class DependencyTimeoutError(MoerecError, TimeoutError):
    """The dependency did not answer within the call's timeout (counted as a failure).

    A :class:`TimeoutError` too, so code that already handles timeouts handles this one.
    """

    def __init__(self, name: str, timeout: float) -> None:
        self.name = name
        self.timeout = timeout
        # One argument only: OSError (TimeoutError's base) reads two as (errno, strerror).
        super().__init__(f"{name} did not answer within {timeout:g} s")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, self.timeout))


@dataclass(frozen=True)
class BreakerSettings:
    """How quickly a breaker opens and how much evidence it needs to close again.

    Checked on construction: settings under which a breaker could never open or never close
    (``minimum_calls > window_size``, a threshold of 1.0) are configuration mistakes.
    """

    window_size: int = 20
    minimum_calls: int = 10
    failure_rate_threshold: float = 0.5
    open_seconds: float = 30.0
    half_open_probes: int = 10
    close_success_threshold: float = 0.8

    def __post_init__(self) -> None:
        if self.window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {self.window_size}")
        if not 1 <= self.minimum_calls <= self.window_size:
            raise ValueError(
                f"minimum_calls must be between 1 and window_size ({self.window_size}), got "
                f"{self.minimum_calls}: a window can never hold more calls than its size, so "
                "the breaker could never open"
            )
        if not 0.0 <= self.failure_rate_threshold < 1.0:
            raise ValueError(
                "failure_rate_threshold must be in [0, 1) (the rate must be strictly greater "
                f"to open), got {self.failure_rate_threshold}"
            )
        if not 0.0 <= self.close_success_threshold < 1.0:
            raise ValueError(
                "close_success_threshold must be in [0, 1) (the probe success rate must be "
                f"strictly greater to close), got {self.close_success_threshold}"
            )
        if self.open_seconds < 0:
            raise ValueError(f"open_seconds must be >= 0, got {self.open_seconds}")
        if self.half_open_probes < 1:
            raise ValueError(f"half_open_probes must be >= 1, got {self.half_open_probes}")


DEFAULT_SETTINGS = BreakerSettings()


class BreakerSnapshot(TypedDict):
    """A breaker's state for ``/readyz`` and logs; JSON-serialisable."""

    name: str
    state: str
    failure_rate: float  # failures / calls in the window (0.0 when the window is empty)
    calls_in_window: int
    failures_in_window: int
    seconds_until_half_open: float | None  # only while OPEN
    probes_admitted: int  # only meaningful while HALF_OPEN
    probes_completed: int
    probes_succeeded: int
    rejected_calls: int  # calls refused since the breaker was created


def _always_failure(exc: BaseException) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class _Permit:
    """An admitted call: the period (generation) it belongs to."""

    generation: int


class CircuitBreaker:
    """A circuit breaker for one dependency (see the module docstring for the states).

    ``clock`` returns seconds (monotonic; injectable for tests). ``on_change(name, old, new)``
    is called after every transition; an exception it raises is logged, never propagated, so a
    broken metrics hook cannot break the calls it observes. ``is_failure(exc)`` decides whether
    an exception says something about the dependency's health: a caller's validation error or
    an idempotency conflict is the dependency *working*, so it counts as a success (and is
    re-raised all the same).
    """

    def __init__(
        self,
        name: str,
        settings: BreakerSettings = DEFAULT_SETTINGS,
        clock: Clock = time.monotonic,
        on_change: OnChange | None = None,
        is_failure: IsFailure = _always_failure,
    ) -> None:
        self.name = name
        self.settings = settings
        self._clock = clock
        self._on_change = on_change
        self._is_failure = is_failure
        self._state = State.CLOSED
        self._generation = 0
        # CLOSED: the sliding window of outcomes (True = failure) and its failure count.
        self._window: deque[bool] = deque(maxlen=settings.window_size)
        self._failures = 0
        # OPEN: when the current open period started.
        self._opened_at = 0.0
        # HALF_OPEN: probes let through, finished, and finished successfully.
        self._probes_admitted = 0
        self._probes_completed = 0
        self._probes_succeeded = 0
        self._rejected = 0

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state.label})"

    # ----------------------------------------------------------------------- public API

    @property
    def is_failure(self) -> IsFailure:
        """The predicate deciding which exceptions count against the dependency."""
        return self._is_failure

    @property
    def state(self) -> State:
        """The current state; an OPEN breaker whose open period is over becomes HALF_OPEN."""
        return self._advance()

    async def call(self, fn: Callable[[], Awaitable[T]], timeout: float | None = None) -> T:
        """Run ``fn()`` through the breaker, within ``timeout`` seconds if given.

        Raises :class:`CircuitOpenError` without calling ``fn`` when the breaker refuses, and
        :class:`DependencyTimeoutError` (a ``TimeoutError``) when the timeout expires, which
        always counts as a failure. Other exceptions count as failures when ``is_failure``
        says so, as successes otherwise, and are re-raised unchanged. A cancelled call (the
        client went away) says nothing about the dependency: its outcome is not recorded,
        and a half-open probe slot it held is given back.

        Always pass a timeout for a dependency that can hang: a probe that never finishes
        keeps the breaker half-open, refusing every other call.
        """
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds or None, got {timeout}")
        permit = self._acquire()
        if permit is None:
            raise CircuitOpenError(self.name, self._retry_after())
        scope = asyncio.timeout(timeout)
        try:
            async with scope:
                result = await fn()
        except TimeoutError as exc:
            if scope.expired():
                self._complete(permit, failed=True)
                raise DependencyTimeoutError(self.name, timeout or 0.0) from exc
            self._complete(permit, failed=self._is_failure(exc))
            raise
        except Exception as exc:
            self._complete(permit, failed=self._is_failure(exc))
            raise
        except BaseException:  # CancelledError, KeyboardInterrupt: not the dependency's fault
            self._release(permit)
            raise
        self._complete(permit, failed=False)
        return result

    def allow(self) -> bool:
        """Whether a call may go ahead now (for callers that cannot hand over a coroutine).

        A True answer while HALF_OPEN takes one of the probe slots: the caller must then
        report the outcome with exactly one :meth:`record_success` or :meth:`record_failure`,
        or the breaker waits for that probe forever. Unlike :meth:`call`, this API cannot tell
        which period an outcome belongs to: an outcome is recorded against the current state
        (the window while CLOSED, the probes while HALF_OPEN if one is outstanding) and
        ignored while OPEN.
        """
        return self._acquire() is not None

    def record_success(self) -> None:
        """Record a successful call made after :meth:`allow` (see there)."""
        self._record_unattributed(failed=False)

    def record_failure(self) -> None:
        """Record a failed call made after :meth:`allow` (see there)."""
        self._record_unattributed(failed=True)

    def snapshot(self) -> BreakerSnapshot:
        """The state and the numbers behind it, for ``/readyz`` and logs."""
        state = self._advance()
        calls = len(self._window)
        remaining = None
        if state is State.OPEN:
            remaining = round(self._retry_after(), 3)
        return BreakerSnapshot(
            name=self.name,
            state=state.label,
            failure_rate=self._failures / calls if calls else 0.0,
            calls_in_window=calls,
            failures_in_window=self._failures,
            seconds_until_half_open=remaining,
            probes_admitted=self._probes_admitted,
            probes_completed=self._probes_completed,
            probes_succeeded=self._probes_succeeded,
            rejected_calls=self._rejected,
        )

    # ----------------------------------------------------------------------- admission

    def _acquire(self) -> _Permit | None:
        state = self._advance()
        if state is State.CLOSED:
            return _Permit(self._generation)
        if state is State.HALF_OPEN and self._probes_admitted < self.settings.half_open_probes:
            self._probes_admitted += 1
            return _Permit(self._generation)
        self._rejected += 1
        return None

    def _retry_after(self) -> float:
        if self._state is not State.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.settings.open_seconds - self._clock())

    def _release(self, permit: _Permit) -> None:
        """Forget an admitted call that ended without an outcome (cancelled)."""
        if permit.generation == self._generation and self._state is State.HALF_OPEN:
            self._probes_admitted -= 1

    # ----------------------------------------------------------------------- outcomes

    def _complete(self, permit: _Permit, failed: bool) -> None:
        self._advance()
        if permit.generation != self._generation:
            return  # admitted in a period that is over: its outcome no longer matters
        if self._state is State.CLOSED:
            self._record_window(failed)
        elif self._state is State.HALF_OPEN:
            self._record_probe(failed)

    def _record_unattributed(self, failed: bool) -> None:
        state = self._advance()
        if state is State.CLOSED:
            self._record_window(failed)
        elif state is State.HALF_OPEN and self._probes_completed < self._probes_admitted:
            self._record_probe(failed)

    def _record_window(self, failed: bool) -> None:
        window = self._window
        if len(window) == window.maxlen and window[0]:
            self._failures -= 1  # the oldest outcome, a failure, slides out
        window.append(failed)
        self._failures += failed
        settings = self.settings
        if (
            len(window) >= settings.minimum_calls
            and self._failures / len(window) > settings.failure_rate_threshold
        ):
            self._transition(State.OPEN)

    def _record_probe(self, failed: bool) -> None:
        self._probes_completed += 1
        self._probes_succeeded += not failed
        probes = self.settings.half_open_probes
        if self._probes_completed < probes:
            return
        if self._probes_succeeded / probes > self.settings.close_success_threshold:
            self._transition(State.CLOSED)
        else:
            self._transition(State.OPEN)

    # ----------------------------------------------------------------------- transitions

    def _advance(self) -> State:
        """Apply the time-driven transition (OPEN -> HALF_OPEN) and return the state."""
        if (
            self._state is State.OPEN
            and self._clock() - self._opened_at >= self.settings.open_seconds
        ):
            self._transition(State.HALF_OPEN)
        return self._state

    def _transition(self, new: State) -> None:
        old = self._state
        self._state = new
        self._generation += 1
        self._probes_admitted = self._probes_completed = self._probes_succeeded = 0
        if new is State.OPEN:
            self._opened_at = self._clock()
        elif new is State.CLOSED:
            self._window.clear()
            self._failures = 0
        if self._on_change is not None:
            try:
                self._on_change(self.name, old, new)
            except Exception:
                log.exception(
                    "on_change hook failed for breaker %r (%s -> %s)", self.name, old, new
                )


class BreakerBoard:
    """The breakers of a process, one per dependency name, all built from the same settings.

    Dict-like for reading (``board["database"]``, ``"cache" in board``, iteration over names);
    :meth:`get` creates a breaker on first use, so callers need not declare dependencies up
    front. ``is_failure`` is the board-wide default; :meth:`get` can give a dependency its own.
    """

    def __init__(
        self,
        settings: BreakerSettings = DEFAULT_SETTINGS,
        *,
        clock: Clock = time.monotonic,
        on_change: OnChange | None = None,
        is_failure: IsFailure = _always_failure,
        names: Iterable[str] = (),
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._on_change = on_change
        self._is_failure = is_failure
        self._breakers: dict[str, CircuitBreaker] = {}
        for name in names:
            self.get(name)

    def get(self, name: str, *, is_failure: IsFailure | None = None) -> CircuitBreaker:
        """The breaker of ``name``, created on first use.

        Asking for an existing breaker with a different ``is_failure`` is refused
        (``ValueError``): silently keeping the first predicate would make one caller's
        errors trip (or not trip) the breaker against its author's intent.
        """
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = CircuitBreaker(
                name,
                self.settings,
                clock=self._clock,
                on_change=self._on_change,
                is_failure=is_failure or self._is_failure,
            )
            self._breakers[name] = breaker
        elif is_failure is not None and breaker.is_failure is not is_failure:
            raise ValueError(f"breaker {name!r} already exists with another is_failure")
        return breaker

    def __getitem__(self, name: str) -> CircuitBreaker:
        return self._breakers[name]

    def __contains__(self, name: object) -> bool:
        return name in self._breakers

    def __iter__(self) -> Iterator[str]:
        return iter(self._breakers)

    def __len__(self) -> int:
        return len(self._breakers)

    def states(self) -> dict[str, State]:
        """Every breaker's current state, by name (for the gauge and health answers)."""
        return {name: breaker.state for name, breaker in self._breakers.items()}

    def snapshot(self) -> dict[str, BreakerSnapshot]:
        """Every breaker's snapshot, by name (for ``/readyz``)."""
        return {name: breaker.snapshot() for name, breaker in self._breakers.items()}
