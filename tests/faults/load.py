"""A bounded background load on a live service, recording every answer.

A few client threads alternate ``GET /v1/users/{u}/recommendations`` and ``POST /v1/events``
(each event with a key of its own), paced and capped in count and time, so a fault test sees
the service *under traffic* and can then judge every single request: the status, when it was
sent relative to the fault, and which event keys the service acknowledged.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from tests.dependencies import poll_until

EVENT_TYPES = ("view", "click", "add_to_cart", "purchase")


@dataclass(frozen=True)
class Outcome:
    kind: str  # "recommend" or "event"
    phase: str  # what the test said was going on when the request was sent
    started: float  # time.monotonic() at send
    seconds: float
    status: int | None  # None: no HTTP answer (connection error, client timeout)
    key: str | None = None  # the event's idempotency key
    detail: str = ""  # the body of a 5xx, or the transport error

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def failed(self) -> bool:
        return self.status is None or self.status >= 500


class Load:
    """``with Load(...) as load:`` runs the traffic; set ``load.phase`` to label requests."""

    def __init__(
        self,
        base_url: str,
        tokens: Sequence[str],
        users: Sequence[str],
        items: Sequence[str],
        key_prefix: str,
        *,
        pace_seconds: float = 0.01,
        max_requests_per_thread: int = 5_000,
        max_seconds: float = 60.0,
        events: bool = True,
    ) -> None:
        self.base_url = base_url
        self.tokens = list(tokens)  # one thread per token
        self.users = list(users)
        self.items = list(items)
        self.key_prefix = key_prefix
        self.pace_seconds = pace_seconds
        self.max_requests_per_thread = max_requests_per_thread
        self.max_seconds = max_seconds
        self.events = events
        self.phase = "before"
        self.outcomes: list[Outcome] = []  # list.append is atomic: threads share it
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Load:
        for number, token in enumerate(self.tokens):
            thread = threading.Thread(
                target=self._run, args=(number, token), name=f"fault-load-{number}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not alive, f"load threads did not stop: {alive}"

    # ----------------------------------------------------------------------- the traffic

    def _run(self, number: int, token: str) -> None:
        rng = random.Random(f"{self.key_prefix}-{number}")  # reproducible request mix
        deadline = time.monotonic() + self.max_seconds
        headers = {"Authorization": f"Bearer {token}"}
        # The timeout is far above any degraded answer (breaker timeouts are < 1 s): hitting
        # it means the service hung, which the test reports as a failure.
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=10.0) as http:
            for sequence in range(self.max_requests_per_thread):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                if self.events and sequence % 2:
                    self._event(http, rng, f"{self.key_prefix}-{number}-{sequence:06d}")
                else:
                    self._recommend(http, rng)
                self._stop.wait(self.pace_seconds)  # pacing: a steady load, not a flood

    def _send(self, kind: str, key: str | None, request: httpx.Request, http: httpx.Client) -> None:
        phase, started = self.phase, time.monotonic()
        try:
            response = http.send(request)
        except httpx.HTTPError as exc:
            status, detail = None, f"{type(exc).__name__}: {exc}"
        else:
            status = response.status_code
            detail = response.text[:500] if status >= 500 else ""
        seconds = time.monotonic() - started
        self.outcomes.append(Outcome(kind, phase, started, seconds, status, key, detail))

    def _recommend(self, http: httpx.Client, rng: random.Random) -> None:
        user = rng.choice(self.users)
        request = http.build_request(
            "GET", f"/v1/users/{user}/recommendations", params={"k": rng.choice((5, 10))}
        )
        self._send("recommend", None, request, http)

    def _event(self, http: httpx.Client, rng: random.Random, key: str) -> None:
        body = {
            "user_id": rng.choice(self.users),
            "item_id": rng.choice(self.items),
            "event_type": rng.choice(EVENT_TYPES),
            "idempotency_key": key,
        }
        self._send("event", key, http.build_request("POST", "/v1/events", json=body), http)

    # ----------------------------------------------------------------------- reading

    def snapshot(self) -> list[Outcome]:
        return list(self.outcomes)

    def ok_since(self, since: float, kind: str | None = None) -> int:
        return sum(
            1
            for o in self.snapshot()
            if o.started >= since and o.ok and (kind is None or o.kind == kind)
        )

    def wait_for_ok(
        self, count: int, since: float = 0.0, kind: str | None = None, timeout: float = 20.0
    ) -> None:
        """Wait until ``count`` requests sent after ``since`` were answered 2xx."""
        poll_until(
            lambda: self.ok_since(since, kind) >= count,
            timeout,
            lambda: (
                f"{count} successful {kind or 'request'}s under load (have "
                f"{self.ok_since(since, kind)}; statuses so far {self.statuses()})"
            ),
        )

    def statuses(self, phase: str | None = None) -> dict[str, int]:
        """Counts by "kind:status" (status "none" for no answer), for messages and reports."""
        return dict(
            sorted(
                Counter(
                    f"{o.kind}:{o.status if o.status is not None else 'none'}"
                    for o in self.snapshot()
                    if phase is None or o.phase == phase
                ).items()
            )
        )

    def failures(self) -> list[Outcome]:
        return [o for o in self.snapshot() if o.failed]

    def acknowledged_keys(self) -> set[str]:
        return {o.key for o in self.snapshot() if o.kind == "event" and o.ok and o.key}

    def sent_keys(self) -> set[str]:
        return {o.key for o in self.snapshot() if o.kind == "event" and o.key}

    def report(self) -> str:
        outcomes = self.snapshot()
        by_phase = {p: self.statuses(p) for p in dict.fromkeys(o.phase for o in outcomes)}
        slowest = max((o.seconds for o in outcomes), default=0.0)
        return f"{len(outcomes)} requests, slowest {slowest:.3f} s, by phase: {by_phase}"
