"""A predictor in a child process, so that forward passes and request handling do not share a GIL.

A MoE forward pass is many small torch operations; the Python between them holds the GIL, so
in one process a running forward pass starves the event loop that parses requests, and the
batches that would amortise it never form. In a child process the model has its own
interpreter (and its own core), and the serving process only pickles histories out and
top-k lists back (tens of microseconds per batch).

``PredictorProcess.run`` has the signature of ``Predictor.run`` and blocks like it;
``run_async`` is the same for an event loop: it waits for the answer with the loop's own
reader on the pipe instead of parking a thread in ``recv``, which saves two thread hops (and
GIL hand-overs) per batch. A crashed child raises ``PredictorProcessError`` for the batch,
and the caller's fallback takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from moerec import MoerecError
from moerec.inference.predictor import Query, Recommendation

START_TIMEOUT_SECONDS = 120.0


class PredictorProcessError(MoerecError):
    """The model process failed to start, or died while answering."""


class PredictorProcess:
    def __init__(self, path: Path | str, torch_threads: int = 1) -> None:
        self.path = Path(path)
        self.torch_threads = torch_threads
        self._conn: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._lock = threading.Lock()  # one batch in flight on the pipe at a time
        self._in_flight: asyncio.Task[tuple[str, Any]] | None = None
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None

    def start(self) -> None:
        """Spawn the child, load and warm the model there; raises if that fails."""
        context = multiprocessing.get_context("spawn")  # no fork of a process running threads
        parent, child = context.Pipe()
        process = context.Process(
            target=_serve,
            args=(child, str(self.path), self.torch_threads),
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
        if self._conn is None:
            raise PredictorProcessError("the model process is not running")
        with self._lock:
            try:
                self._conn.send(list(queries))
            except (OSError, ValueError) as exc:
                raise PredictorProcessError(f"the model process is gone: {exc}") from None
            status, payload = self._receive()
        if status == "error":
            raise PredictorProcessError(f"the model failed: {payload}")
        result: list[Recommendation] = payload
        return result

    async def run_async(self, queries: Sequence[Query]) -> list[Recommendation]:
        """``run`` for a caller on an event loop; cancelling it never desynchronises the pipe.

        The exchange (send, wait, receive) runs as its own task: a caller that is cancelled
        (a request timeout) leaves it to finish, and the next batch waits for it, so an
        answer can never be read as the answer to a later batch.
        """
        previous = self._in_flight
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        exchange = asyncio.ensure_future(self._exchange(list(queries)))
        self._in_flight = exchange
        status, payload = await asyncio.shield(exchange)
        if status == "error":
            raise PredictorProcessError(f"the model failed: {payload}")
        result: list[Recommendation] = payload
        return result

    async def _exchange(self, queries: list[Query]) -> tuple[str, Any]:
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()
        with self._lock:
            conn = self._conn
            if conn is None:
                raise PredictorProcessError("the model process is not running")
            try:
                conn.send(queries)  # a few kB into the pipe's buffer: does not block
            except (OSError, ValueError) as exc:
                raise PredictorProcessError(f"the model process is gone: {exc}") from None
            fd = conn.fileno()
            self._waiter = (loop, readable)  # close() wakes it

        loop.add_reader(fd, _resolve, readable)
        try:
            await readable
        finally:
            loop.remove_reader(fd)
            self._waiter = None
        # The child writes each answer with one send: once readable, recv does not wait.
        return self._receive()

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def close(self) -> None:
        conn, process = self._conn, self._process
        self._conn = self._process = None
        waiter = self._waiter
        if waiter is not None:  # a batch in flight: its receive now fails instead of hanging
            loop, readable = waiter
            with contextlib.suppress(RuntimeError):  # that loop is already closed
                loop.call_soon_threadsafe(_resolve, readable)
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

    def _receive(self) -> tuple[str, Any]:
        if self._conn is None:
            raise PredictorProcessError("the model process is not running")
        try:
            message: tuple[str, Any] = self._conn.recv()
        except (EOFError, OSError) as exc:
            code = self._process.exitcode if self._process is not None else None
            raise PredictorProcessError(
                f"the model process died (exit code {code}): {type(exc).__name__}"
            ) from None
        return message


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _serve(conn: Connection, path: str, torch_threads: int) -> None:
    """The child: load once, then answer batches until told to stop (None) or orphaned."""
    import torch

    from moerec.inference.predictor import Predictor

    torch.set_num_threads(torch_threads)
    try:
        predictor = Predictor.from_path(path)
        predictor.warm_up()
    except Exception as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    # torch's import and the loaded model are ~200k objects that live as long as the process;
    # frozen, full collections stop traversing them (13-43 ms pauses mid-batch before).
    gc.collect()
    gc.freeze()
    conn.send(("ready", predictor.version))
    while True:
        try:
            queries = conn.recv()
        except (EOFError, OSError):
            return  # the serving process is gone
        if queries is None:
            return
        try:
            conn.send(("ok", predictor.run(queries)))
        except Exception as exc:  # the batch fails, the process keeps serving
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
