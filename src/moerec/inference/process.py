"""A predictor in a child process, so that forward passes and request handling do not share a GIL.

A MoE forward pass is many small torch operations; the Python between them holds the GIL, so
in one process a running forward pass starves the event loop that parses requests, and the
batches that would amortise it never form. In a child process the model has its own
interpreter (and its own core), and the serving process only pickles histories out and
top-k lists back (tens of microseconds per batch).

``PredictorProcess.run`` has the signature of ``Predictor.run`` and blocks like it, so the
micro-batcher calls it from its worker thread unchanged; a crashed child raises
``PredictorProcessError`` for the batch, and the caller's fallback takes over.
"""

from __future__ import annotations

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

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def close(self) -> None:
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
