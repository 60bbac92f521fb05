"""Server-side micro-batching: concurrent requests share one forward pass.

A single MoE request spends most of its time on per-operation overhead (routing, sorting,
one small matmul per expert), so scoring 32 users costs little more than scoring one. The
batcher collects requests until ``max_batch_size`` are waiting or the oldest has waited
``max_wait_ms``, runs them through ``Predictor.recommend`` on one worker thread (torch releases
the GIL, so the event loop keeps accepting requests), and hands each caller its own result.
This is the adaptive batching BentoML and Ray Serve use; no web code lives here.

The wait adapts to the traffic: the batcher keeps a moving average of the time between
submissions and waits for companions only while requests arrive faster than ``max_wait_ms``
apart. Under load the batches fill up; a lone request at low traffic never waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from moerec import MoerecError
from moerec.inference.predictor import Predictor, Query, Recommendation


class BatcherClosedError(MoerecError):
    """The batcher is not running (not started yet, or shutting down)."""


@dataclass
class _Request:
    query: Query
    future: asyncio.Future[Recommendation]
    enqueued: float


@dataclass(frozen=True)
class BatchReport:
    """One forward pass: how many requests it served and how long it took."""

    size: int
    seconds: float
    oldest_wait_seconds: float


class MicroBatcher:
    """``await batcher.recommend(history, k)`` from many coroutines; one forward per batch."""

    def __init__(
        self,
        predictor: Predictor,
        max_batch_size: int = 32,
        max_wait_ms: float = 2.0,
        on_batch: Callable[[BatchReport], None] | None = None,
        runner: Callable[[Sequence[Query]], list[Recommendation]] | None = None,
        async_runner: Callable[[Sequence[Query]], Awaitable[list[Recommendation]]] | None = None,
        pipelined: bool = False,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms cannot be negative")
        self.predictor = predictor
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch
        # What answers a batch: the predictor in this process (on the worker thread), or one
        # in a child process (``async_runner``: awaited on the loop, no thread involved).
        self.runner = runner or predictor.run
        self.async_runner = async_runner
        # A pipelined runner (a model process) takes the next batch while it still computes
        # the last one, so it never waits for this loop; up to two batches' worth of queries
        # are handed over unanswered.
        self.pipelined = pipelined and async_runner is not None
        self._in_flight = 0  # queries handed to a pipelined runner, not answered yet
        self._room: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Moving average of the gap between submissions (seconds); starts "slow" (no waits).
        self._gap = float("inf")
        self._last_submit: float | None = None
        self._queue: asyncio.Queue[_Request] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        if self._worker is not None:
            return
        self._queue = asyncio.Queue()
        self._room = asyncio.Event()
        # One thread: forward passes run one at a time, each on torch's own intra-op threads.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moerec-infer")
        self._worker = asyncio.create_task(self._run(), name="moerec-micro-batcher")

    async def stop(self) -> None:
        """Finish every request already accepted, then stop."""
        if self._worker is None or self._queue is None:
            return
        await self._queue.join()
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._worker = self._queue = self._executor = self._room = None

    async def __aenter__(self) -> MicroBatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def recommend(
        self, history: np.ndarray, k: int = 10, exclude_history: bool = True
    ) -> Recommendation:
        """Top-k for one encoded history; waits at most max_wait_ms for companions."""
        return await self.submit(Query(history, k=k, exclude_history=exclude_history))

    async def submit(self, query: Query) -> Recommendation:
        """Answer one query in the next forward pass."""
        if self._queue is None:
            raise BatcherClosedError("the micro-batcher is not running; call start() first")
        if len(query.history) == 0:
            raise MoerecError("every history needs at least one item the model knows")
        future: asyncio.Future[Recommendation] = asyncio.get_running_loop().create_future()
        now = time.perf_counter()
        if self._last_submit is not None:
            gap = now - self._last_submit
            self._gap = gap if self._gap == float("inf") else 0.9 * self._gap + 0.1 * gap
        self._last_submit = now
        self._queue.put_nowait(_Request(query, future, now))
        return await future

    async def _run(self) -> None:
        if self._queue is None:
            raise BatcherClosedError("the micro-batcher's worker ran before start()")
        in_flight_limit = 2 * self.max_batch_size
        while True:
            batch = [await self._queue.get()]
            while self._room is not None and self.pipelined and self._in_flight >= in_flight_limit:
                self._room.clear()
                await self._room.wait()
            # Requests that queued up during the previous forward pass go together at once,
            # however long they have waited; only then wait (briefly) for companions.
            while len(batch) < self.max_batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            # Wait only when companions are likely: requests have been coming faster than
            # the longest wait allowed.
            wait = self.max_wait if self._gap < self.max_wait else 0.0
            deadline = batch[0].enqueued + wait
            while len(batch) < self.max_batch_size:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            if self.pipelined:
                self._in_flight += len(batch)
                task = asyncio.create_task(self._serve_pipelined(batch, self._queue))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                continue
            try:
                await self._serve(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _serve_pipelined(self, batch: list[_Request], queue: asyncio.Queue[_Request]) -> None:
        try:
            await self._serve(batch)
        finally:
            self._in_flight -= len(batch)
            if self._room is not None:
                self._room.set()
            for _ in batch:
                queue.task_done()

    async def _serve(self, batch: list[_Request]) -> None:
        started = time.perf_counter()
        live = [r for r in batch if not r.future.done()]  # callers may have gone away
        if live:
            try:
                queries = [r.query for r in live]
                if self.async_runner is not None:
                    results = await self.async_runner(queries)
                else:
                    results = await asyncio.get_running_loop().run_in_executor(
                        self._executor, self.runner, queries
                    )
            except Exception as exc:  # the callers see the model's error, the loop goes on
                for request in live:
                    if not request.future.done():
                        request.future.set_exception(exc)
            else:
                for request, result in zip(live, results, strict=True):
                    if not request.future.done():
                        request.future.set_result(result)
        if self.on_batch is not None:
            self.on_batch(
                BatchReport(
                    size=len(batch),
                    seconds=time.perf_counter() - started,
                    oldest_wait_seconds=started - batch[0].enqueued,
                )
            )
