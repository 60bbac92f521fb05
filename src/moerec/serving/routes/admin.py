"""Admin operations: the served model, hot reload, cache flush. Every call is audited."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from moerec import MoerecError
from moerec.serving.audit import AuditEntry
from moerec.serving.auth import ADMIN, Principal
from moerec.serving.deps import ServicesDep, request_id, requires
from moerec.serving.errors import ApiError
from moerec.serving.routes._responses import errors, json
from moerec.serving.schemas import FlushResponse, ModelResponse, ReloadRequest

router = APIRouter(prefix="/v1/admin", tags=["admin"])
Admin = Annotated[Principal, Depends(requires(ADMIN))]


@router.get(
    "/model", response_model=ModelResponse, responses=errors(401, 403, 429), summary="Served model"
)
async def model_info(services: ServicesDep, _: Admin) -> Response:
    return json(services.models.current.describe())


@router.post(
    "/model/reload",
    response_model=ModelResponse,
    responses=errors(401, 403, 409, 422, 429),
    summary="Load another artefact version without a restart (atomic; a bad one is refused)",
)
async def reload_model(
    request: Request, services: ServicesDep, principal: Admin, body: ReloadRequest | None = None
) -> Response:
    before = services.models.current.version
    target = Path(body.path) if body and body.path else None
    if target is not None and not _inside(target, _registry_root(services.settings.model_path)):
        _audit(services, request, principal, "model.reload", "forbidden", str(target), "")
        raise ApiError(
            422,
            "model_path_outside_registry",
            f"only artefacts under {_registry_root(services.settings.model_path)} can be loaded",
        )
    try:
        loaded = await services.models.load(target)
    except MoerecError as exc:
        services.metrics.model_reloads.labels("refused").inc()
        _audit(services, request, principal, "model.reload", "refused", str(target), str(exc))
        raise ApiError(
            409, "model_refused", f"the artefact was refused and {before} keeps serving: {exc}"
        ) from None
    services.metrics.model_reloads.labels("loaded").inc()
    _audit(services, request, principal, "model.reload", "ok", loaded.version, f"from {before}")
    return json(loaded.describe())


@router.post(
    "/cache/flush",
    response_model=FlushResponse,
    responses=errors(401, 403, 429, 503),
    summary="Drop every cached recommendation",
)
async def flush_cache(request: Request, services: ServicesDep, principal: Admin) -> Response:
    deleted = await services.cache.flush()
    _audit(services, request, principal, "cache.flush", "ok", None, f"{deleted} entries")
    return json({"deleted": deleted})


def _registry_root(model_path: Path) -> Path:
    """The folder holding the served model's folder: its sibling models may be loaded too."""
    model_dir = model_path.parent if (model_path / "manifest.json").is_file() else model_path
    return model_dir.resolve().parent


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root)


def _audit(
    services: ServicesDep,
    request: Request,
    principal: Principal,
    action: str,
    outcome: str,
    target: str | None,
    note: str,
) -> None:
    services.audit.record(
        AuditEntry(
            actor=principal.subject,
            action=action,
            outcome=outcome,
            target=target,
            request_id=request_id(request),
            detail={"note": note},
        )
    )
