"""Following promotions: a running service serves a newly promoted version without a restart.

``moerec registry promote`` rewrites the model folder's ``PROMOTED`` pointer. The watcher looks
at it every ``MOEREC_MODEL_POLL_SECONDS`` and, when it was written since the last look, loads
what a restarted service would serve through the model slot: the same atomic swap as
``POST /v1/admin/model/reload``. A refused artefact is logged, counted
(``moerec_model_reloads_total{outcome="refused"}``) and audited, and the old model keeps
serving; the watcher tries again only when the pointer is written again (promoting the same
version again is the way to retry). It follows the pointer only: a version nobody promoted
is not loaded, and a service started on one version folder has nothing to watch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

from moerec import MoerecError
from moerec.registry import pointer_signature, resolve_artefact
from moerec.registry.artefact import MANIFEST
from moerec.serving.background import stop_task
from moerec.serving.model_slot import LoadedModel, ModelSlot

log = logging.getLogger("moerec.serving")

Outcome = Literal["loaded", "refused"]
OnResult = Callable[[Outcome, str, str], None]  # (outcome, target, detail)


def watchable(model_path: Path) -> bool:
    """Whether ``model_path`` is a model folder (which may be promoted in), not one version."""
    return model_path.is_dir() and not (model_path / MANIFEST).is_file()


class ModelWatcher:
    """Polls a model folder's promotion pointer and hot-loads the promoted version.

    Create it before the slot's first load: the pointer as it was then is the baseline, so a
    promotion that lands while the service starts is not missed (at worst loaded twice).
    """

    def __init__(
        self,
        slot: ModelSlot,
        model_dir: Path,
        every_seconds: float,
        on_result: OnResult | None = None,
        after_load: Callable[[LoadedModel], Awaitable[object]] | None = None,
    ) -> None:
        self.slot = slot
        self.model_dir = model_dir
        self.every_seconds = every_seconds
        self.on_result = on_result
        self.after_load = after_load
        self._seen = pointer_signature(model_dir)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch_forever(), name="moerec-model-watch")

    async def close(self) -> None:
        await stop_task(self._task)
        self._task = None

    async def check_once(self) -> bool:
        """Load the promoted version if the pointer was written since the last check.

        True when another model is now served. Never raises for a bad artefact.
        """
        try:
            signature = await asyncio.to_thread(pointer_signature, self.model_dir)
        except OSError:  # e.g. a network file system hiccup: look again next time
            log.warning("cannot read the promotion pointer", exc_info=True)
            return False
        if signature == self._seen:
            return False
        self._seen = signature
        before = self.slot.current.version if self.slot.loaded else "nothing"
        promoted = str(self.model_dir / signature[0]) if signature else str(self.model_dir)
        try:
            target = resolve_artefact(self.model_dir)
            if self.slot.loaded and self.slot.current.path == target:
                return False  # already served (e.g. loaded by an admin reload)
            loaded = await self.slot.load(target)
        except Exception as exc:  # a bad artefact (MoerecError) or anything else: keep serving
            self._refused(promoted, exc)
            return False
        log.info(
            "promoted model loaded",
            extra={"model_version": loaded.version, "previous": before, "path": str(target)},
        )
        if self.on_result is not None:
            self.on_result("loaded", loaded.version, f"promoted; was {before}")
        if self.after_load is not None:
            try:
                await self.after_load(loaded)
            except Exception:  # e.g. the database is down: the model serves all the same
                log.warning("after loading a promoted model", exc_info=True)
        return True

    def _refused(self, target: str, exc: BaseException) -> None:
        log.error(
            "promoted model refused; the current one keeps serving",
            extra={
                "target": target,
                "model_version": self.slot.current.version if self.slot.loaded else None,
                "error": str(exc),
            },
            exc_info=not isinstance(exc, MoerecError),  # a traceback only for the unexpected
        )
        if self.on_result is not None:
            self.on_result("refused", target, str(exc))

    async def _watch_forever(self) -> None:
        while True:
            await asyncio.sleep(self.every_seconds)
            try:
                await self.check_once()
            except Exception:  # keep watching: the next promotion may be fine
                log.exception("the model watcher failed; it keeps watching")
