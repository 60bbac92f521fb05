"""The served model, swappable without a restart.

A request takes ``slot.current`` once and uses that ``LoadedModel`` to the end, so a reload
never mixes two versions in one answer. A reload loads and verifies the new artefact off the
event loop, warms it up with one forward pass, then swaps the reference in a single assignment;
the old model's batcher drains the requests it already accepted before it stops. A bad artefact
raises before the swap, so the old model keeps serving. A model process that dies is
restarted by ``supervise`` (a reload of the same artefact).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moerec.inference import BatchReport, MicroBatcher, Predictor, PredictorProcess
from moerec.registry import resolve_artefact
from moerec.serving.background import stop_task

log = logging.getLogger("moerec.serving")

SUPERVISE_SECONDS = 1.0  # how often a dead model process is looked for


@dataclass
class LoadedModel:
    predictor: Predictor  # vocabulary and metadata; answers batches itself without a process
    batcher: MicroBatcher
    path: Path
    process: PredictorProcess | None = None
    loaded_at: float = field(default_factory=time.time)

    async def close(self) -> None:
        await self.batcher.stop()  # finishes what it already accepted
        if self.process is not None:
            await asyncio.to_thread(self.process.close)

    @property
    def version(self) -> str:
        """``name/vNNNN``: unique across models, short enough for cache keys and labels."""
        return f"{self.name}/{self.predictor.version}"

    @property
    def name(self) -> str:
        return str(self.predictor.artefact.manifest.get("name", self.path.parent.name))

    def describe(self) -> dict[str, Any]:
        config = self.predictor.artefact.config
        manifest = self.predictor.artefact.manifest
        return {
            "name": self.name,
            "version": self.predictor.version,
            "model_version": self.version,
            "path": str(self.path),
            "variant": config.variant,
            "loaded_at": self.loaded_at,
            "num_items": config.model.num_items,
            "max_len": config.model.max_len,
            "experts": config.model.moe_num_experts,
            "top_k": config.model.moe_top_k,
            "router": config.model.moe_router,
            "created_at": manifest.get("created_at"),
            "metrics": manifest.get("metrics", {}),
            "data_fingerprint": manifest.get("data_fingerprint"),
        }


class ModelSlot:
    """Holds the current model; ``reload`` replaces it atomically."""

    def __init__(
        self,
        source: Path,
        batch_max_size: int,
        batch_max_wait_ms: float,
        on_batch: Callable[[BatchReport], None] | None = None,
        on_load: Callable[[LoadedModel], None] | None = None,
        model_process: bool = False,
        torch_threads: int = 1,
    ) -> None:
        self.source = source
        self.model_process = model_process
        self.torch_threads = torch_threads
        self.batch_max_size = batch_max_size
        self.batch_max_wait_ms = batch_max_wait_ms
        self.on_batch = on_batch
        self.on_load = on_load
        self._current: LoadedModel | None = None
        self._lock = asyncio.Lock()
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def current(self) -> LoadedModel:
        if self._current is None:
            raise RuntimeError("no model loaded yet")
        return self._current

    @property
    def loaded(self) -> bool:
        return self._current is not None

    async def load(self, path: Path | None = None) -> LoadedModel:
        """Load ``path`` (default: what the configured source resolves to, its promoted version
        or else its newest) and serve it.

        Raises ``ArtefactError``/``MoerecError`` (nothing changes) when the artefact is bad.
        """
        async with self._lock:  # one reload at a time
            target = resolve_artefact(path or self.source)
            predictor = await asyncio.to_thread(Predictor.from_path, target)
            process = None
            if self.model_process:  # forward passes (and their warm-up) happen in the child
                # The child reports its own forward passes: it merges pipelined batches.
                process = PredictorProcess(
                    target, self.torch_threads, self.batch_max_size, on_pass=self.on_batch
                )
                await asyncio.to_thread(process.start)
            else:
                await asyncio.to_thread(predictor.warm_up)
            batcher = MicroBatcher(
                predictor,
                self.batch_max_size,
                self.batch_max_wait_ms,
                on_batch=self.on_batch if process is None else None,
                async_runner=process.run_async if process is not None else None,
                pipelined=process is not None,
            )
            await batcher.start()
            new = LoadedModel(predictor, batcher, target, process)
            old, self._current = self._current, new
            if self.on_load is not None:
                self.on_load(new)
            log.info("model loaded", extra={"model_version": new.version, "path": str(target)})
        if old is not None:
            await old.close()
        return new

    def supervise(self, on_restart: Callable[[LoadedModel], None] | None = None) -> None:
        """Watch the model process and restart it (the same artefact) if it dies.

        Until the restart has loaded, requests get the popularity fallback; a restart that
        fails is tried again at the next check.
        """
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(
                self._supervise(on_restart), name="moerec-model-supervisor"
            )

    async def _supervise(self, on_restart: Callable[[LoadedModel], None] | None) -> None:
        while True:
            await asyncio.sleep(SUPERVISE_SECONDS)
            current = self._current
            if current is None or current.process is None or current.process.alive:
                continue
            log.error("the model process died; restarting it", extra={"path": str(current.path)})
            try:
                restarted = await self.load(current.path)
            except Exception:
                log.exception("restarting the model process failed; trying again")
                continue
            if on_restart is not None:
                on_restart(restarted)

    async def close(self) -> None:
        await stop_task(self._supervisor)
        self._supervisor = None
        if self._current is not None:
            await self._current.close()
            self._current = None
