"""A predictor in a child process, so that forward passes and request handling do not share a GIL.

A MoE forward pass is many small torch operations; the Python between them holds the GIL, so
in one process a running forward pass starves the event loop that parses requests, and the
batches that would amortise it never form. In a child process the model has its own
interpreter (and its own core), and the serving process only pickles histories out and
top-k lists back (tens of microseconds per batch).

``PredictorProcess.run`` has the signature of ``Predictor.run`` and blocks like it;
``run_async`` is the same for an event loop, and pipelined: calls go out as they come, the
child folds whatever is waiting into its next pass, and answers come back through the loop's
own reader on the pipe (no thread parked in ``recv``, no GIL hand-overs). A crashed child
raises ``PredictorProcessError`` for the calls in flight, and the caller's fallback takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import multiprocessing
import queue
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from moerec import MoerecError
from moerec.inference.batcher import BatchReport
from moerec.inference.predictor import Predictor, Query, Recommendation

START_TIMEOUT_SECONDS = 120.0
DETACH_TIMEOUT_SECONDS = 5.0


class PredictorProcessError(MoerecError):
    """The model process failed to start, or died while answering."""


class PredictorProcess:
    """A model in a child process; ``run_async`` may be called again before earlier calls return.

    Calls are pipelined: each is sent at once with its own id, and the child folds every call
    waiting in its inbox into one forward pass (up to ``max_batch_size`` queries) as soon as
    the previous pass ends. The child therefore never idles while the serving process's event
    loop is busy elsewhere, which is where a one-batch-at-a-time exchange lost its time. A
    reader thread in the child drains the pipe while a pass runs, so a send never blocks the
    event loop on a full pipe.
    """

    def __init__(
        self,
        path: Path | str,
        torch_threads: int = 1,
        max_batch_size: int = 32,
        on_pass: Callable[[BatchReport], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.torch_threads = torch_threads
        self.max_batch_size = max_batch_size
        self.on_pass = on_pass
        self._conn: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._lock = threading.Lock()  # one writer on the pipe at a time
        self._ids = itertools.count()
        self._pending: dict[int, asyncio.Future[list[Recommendation]]] = {}
        self._reader: tuple[asyncio.AbstractEventLoop, int] | None = None  # (loop, pipe fd)

    def start(self) -> None:
        """Spawn the child, load and warm the model there; raises if that fails."""
        context = multiprocessing.get_context("spawn")  # no fork of a process running threads
        parent, child = context.Pipe()
        process = context.Process(
            target=_serve,
            args=(child, str(self.path), self.torch_threads, self.max_batch_size),
            name=f"moerec-model-{self.path.name}",
            daemon=True,
        )
        process.start()
        child.close()
        self._conn, self._process = parent, process
        if not parent.poll(START_TIMEOUT_SECONDS):
            self.close()
            raise PredictorProcessError(f"the model process did not start within "
                                        f"{START_TIMEOUT_SECONDS:.0f} s")  # fmt: skip
        status, payload = self._receive()
        if status != "ready":
            self.close()
            raise PredictorProcessError(f"the model process could not load {self.path}: {payload}")

    def run(self, queries: Sequence[Query]) -> list[Recommendation]:
        """Answer one batch, blocking; for callers without an event loop (not mixed with
        ``run_async`` calls in flight, whose answers it would have to hand over)."""
        if self._pending:
            raise PredictorProcessError("run() cannot be used while run_async() calls are pending")
        request_id = next(self._ids)
        self._send(request_id, list(queries))
        while True:
            _, answers = self._receive()
            for answer_id, ok, payload in answers:
                if answer_id != request_id:
                    continue  # an abandoned async call's late answer
                if not ok:
                    raise PredictorProcessError(f"the model failed: {payload}")
                result: list[Recommendation] = payload
                return result

    async def run_async(self, queries: Sequence[Query]) -> list[Recommendation]:
        """``run`` for a caller on an event loop; many calls may be in flight at once.

        Answers are matched to calls by id, so a caller that is cancelled (a request timeout)
        only leaves an answer nobody reads.
        """
        loop = asyncio.get_running_loop()
        request_id = next(self._ids)
        future: asyncio.Future[list[Recommendation]] = loop.create_future()
        self._pending[request_id] = future
        try:
            self._watch(loop)
            self._send(request_id, list(queries))
        except BaseException:
            self._pending.pop(request_id, None)
            self._unwatch_if_idle()
            raise
        return await future

    def _send(self, request_id: int, queries: list[Query]) -> None:
        with self._lock:
            conn = self._conn
            if conn is None:
                raise PredictorProcessError("the model process is not running")
            try:
                conn.send((request_id, queries, time.perf_counter()))
            except (OSError, ValueError) as exc:
                raise PredictorProcessError(f"the model process is gone: {exc}") from None

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read answers with the loop's own reader on the pipe (no thread, no GIL hand-over)."""
        if self._conn is None:
            raise PredictorProcessError("the model process is not running")
        if self._reader is not None and self._reader[0] is loop:
            return
        self._unwatch()
        fd = self._conn.fileno()
        loop.add_reader(fd, self._on_readable)
        self._reader = (loop, fd)

    def _unwatch(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None and not reader[0].is_closed():
            reader[0].remove_reader(reader[1])

    def _unwatch_if_idle(self) -> None:
        if not self._pending:
            self._unwatch()

    def _on_readable(self) -> None:
        while True:
            try:
                report, answers = self._receive()
            except PredictorProcessError as exc:
                self._unwatch()
                self._fail_pending(exc)
                return
            if self.on_pass is not None:
                self.on_pass(BatchReport(*report))
            for request_id, ok, payload in answers:
                future = self._pending.pop(request_id, None)
                if future is None or future.done():
                    continue
                if ok:
                    future.set_result(payload)
                else:
                    future.set_exception(PredictorProcessError(f"the model failed: {payload}"))
            conn = self._conn
            if conn is None or not conn.poll(0):
                break
        self._unwatch_if_idle()

    def _fail_pending(self, error: Exception) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def close(self) -> None:
        """Stop the child; calls still in flight fail with ``PredictorProcessError``."""
        self._detach_reader()
        conn, process = self._conn, self._process
        self._conn = self._process = None
        if conn is not None:
            try:
                with self._lock:
                    conn.send(None)
            except (OSError, ValueError):
                pass
            conn.close()
        if process is not None:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)

    def _detach_reader(self) -> None:
        """Remove the pipe's reader on its own loop's thread (loops are not thread-safe) before
        the pipe closes, and fail the calls in flight."""
        reader = self._reader
        if reader is None or reader[0].is_closed():
            self._reader = None
            self._fail_pending(PredictorProcessError("the model process was closed"))
            return
        loop = reader[0]
        done = threading.Event()

        def detach() -> None:
            self._unwatch()
            self._fail_pending(PredictorProcessError("the model process was closed"))
            done.set()

        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            detach()
            return
        with contextlib.suppress(RuntimeError):  # closed meanwhile: nothing left to detach
            loop.call_soon_threadsafe(detach)
            done.wait(DETACH_TIMEOUT_SECONDS)

    def _receive(self) -> tuple[Any, Any]:
        conn = self._conn
        if conn is None:
            raise PredictorProcessError("the model process is not running")
        try:
            message: tuple[Any, Any] = conn.recv()
        except (EOFError, OSError) as exc:
            code = self._process.exitcode if self._process is not None else None
            raise PredictorProcessError(
                f"the model process died (exit code {code}): {type(exc).__name__}"
            ) from None
        return message


def _serve(conn: Connection, path: str, torch_threads: int, max_batch_size: int) -> None:
    """The child: load once, then answer calls until told to stop (None) or orphaned.

    A reader thread moves calls from the pipe to an inbox while a forward pass runs (torch
    releases the GIL inside its operations); each pass takes every call waiting in the inbox,
    up to ``max_batch_size`` queries, and sends one message back: the pass's report and one
    answer per call.
    """
    import torch

    torch.set_num_threads(torch_threads)
    try:
        predictor = Predictor.from_path(path)
        predictor.warm_up()
    except Exception as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    inbox: queue.SimpleQueue[tuple[int, list[Query], float] | None] = queue.SimpleQueue()
    threading.Thread(target=_read_calls, args=(conn, inbox), daemon=True).start()
    # torch's import and the loaded model are ~200k objects that live as long as the process;
    # frozen, full collections stop traversing them (13-43 ms pauses mid-batch before).
    gc.collect()
    gc.freeze()
    conn.send(("ready", predictor.version))
    while True:
        call = inbox.get()
        if call is None:
            return
        calls = [call]
        size = len(call[1])
        while size < max_batch_size:
            try:
                call = inbox.get_nowait()
            except queue.Empty:
                break
            if call is None:
                inbox.put(None)  # stop after this pass
                break
            calls.append(call)
            size += len(call[1])
        started = time.perf_counter()
        answers = _answer(predictor, calls)
        report = (size, time.perf_counter() - started, started - min(c[2] for c in calls))
        try:
            conn.send((report, answers))
        except (OSError, ValueError):
            return  # the serving process is gone


def _read_calls(
    conn: Connection, inbox: queue.SimpleQueue[tuple[int, list[Query], float] | None]
) -> None:
    while True:
        try:
            call = conn.recv()
        except (EOFError, OSError):
            call = None  # the serving process is gone
        inbox.put(call)
        if call is None:
            return


def _answer(
    predictor: Predictor, calls: list[tuple[int, list[Query], float]]
) -> list[tuple[int, bool, Any]]:
    """One forward pass for every call; if it fails, each call alone, so that one bad query
    fails only its own call."""
    try:
        results = predictor.run([q for _, queries, _ in calls for q in queries])
    except Exception as exc:
        if len(calls) == 1:
            return [(calls[0][0], False, f"{type(exc).__name__}: {exc}")]
        return [answer for call in calls for answer in _answer(predictor, [call])]
    answers, offset = [], 0
    for request_id, queries, _ in calls:
        answers.append((request_id, True, results[offset : offset + len(queries)]))
        offset += len(queries)
    return answers
