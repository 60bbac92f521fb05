"""Admin operations: the served models, hot reload per A/B arm, the experiment's read-out,
cache flush. Every call that changes something is audited."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from moerec import MoerecError
from moerec.serving.audit import AuditEntry
from moerec.serving.auth import ADMIN, Principal
from moerec.serving.deps import ServicesDep, request_id, requires
from moerec.serving.errors import ApiError
from moerec.serving.experiment import CHALLENGER, CONTROL, Arm
from moerec.serving.model_slot import ModelSlot
from moerec.serving.resilience import DATABASE
from moerec.serving.routes._responses import errors, json
from moerec.serving.schemas import (
    ExperimentResponse,
    FlushResponse,
    ModelInfo,
    ModelResponse,
    ReloadRequest,
)

router = APIRouter(prefix="/v1/admin", tags=["admin"])
Admin = Annotated[Principal, Depends(requires(ADMIN))]


@router.get(
    "/model",
    response_model=ModelResponse,
    responses=errors(401, 403, 429),
    summary="Served models: the control at the top level, the A/B challenger nested",
)
async def model_info(services: ServicesDep, _: Admin) -> Response:
    arms = services.arms
    challenger = arms.challenger
    return json(
        _describe(CONTROL, arms.control)
        | {
            "challenger": _describe(CHALLENGER, challenger) if challenger else None,
            "challenger_fraction": arms.fraction(),
        }
    )


@router.post(
    "/model/reload",
    response_model=ModelInfo,
    responses=errors(401, 403, 409, 422, 429),
    summary="Load another artefact version into an A/B arm without a restart (atomic; a bad "
    "one is refused)",
)
async def reload_model(
    request: Request, services: ServicesDep, principal: Admin, body: ReloadRequest | None = None
) -> Response:
    arm: Arm = body.arm if body else CONTROL
    slot = services.arms.slot(arm)
    if slot is None:
        raise ApiError(
            409,
            "no_experiment",
            "no challenger model is configured; set MOEREC_AB_MODEL_PATH and restart to run "
            "an A/B experiment",
        )
    before = slot.current.version
    target = Path(body.path) if body and body.path else None
    root = _registry_root(slot.source)
    if target is not None and not _inside(target, root):
        _audit(services, request, principal, "model.reload", "forbidden", str(target), arm)
        raise ApiError(
            422,
            "model_path_outside_registry",
            f"only artefacts under {root} can be loaded into the {arm} arm",
        )
    try:
        loaded = await slot.load(target)
    except MoerecError as exc:
        services.metrics.model_reloads.labels("refused").inc()
        _audit(
            services, request, principal, "model.reload", "refused", str(target),
            f"{arm}: {exc}",
        )  # fmt: skip
        raise ApiError(
            409,
            "model_refused",
            f"the artefact was refused and {before} keeps serving the {arm} arm: {exc}",
        ) from None
    services.metrics.model_reloads.labels("loaded").inc()
    _audit(
        services, request, principal, "model.reload", "ok", loaded.version,
        f"{arm} from {before}",
    )  # fmt: skip
    return json(_describe(arm, slot))


@router.get(
    "/experiment",
    response_model=ExperimentResponse,
    responses=errors(401, 403, 422, 429, 503),
    summary="The A/B split and the stored events per arm, model version and event type",
)
async def experiment(
    services: ServicesDep,
    _: Admin,
    since: Annotated[
        datetime | None,
        Query(description="Count events that occurred at or after this time (ISO 8601)."),
    ] = None,
) -> Response:
    start = _utc(since) if since is not None else None
    rows = await services.guard.call(DATABASE, lambda: services.storage.events_by_arm(start))
    arms = services.arms
    shares = [(CONTROL, arms.control, 1.0 - arms.fraction())]
    if arms.challenger is not None:
        shares.append((CHALLENGER, arms.challenger, arms.fraction()))
    return json(
        {
            "running": arms.experiment,
            "arms": [
                {"arm": arm, "model_version": slot.current.version, "share": share}
                for arm, slot, share in shares
            ],
            "events": [
                {
                    "arm": row.arm,
                    "model_version": row.model_version,
                    "event_type": row.event_type,
                    "events": row.events,
                    "users": row.users,
                }
                for row in rows
            ],
        }
    )


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


def _utc(moment: datetime) -> datetime:
    """``moment`` in UTC; no offset means UTC, as for event timestamps."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59-23:59 is past the last representable day
        raise ApiError(
            422, "invalid_request", "since: the time is outside the range of dates"
        ) from None


def _describe(arm: Arm, slot: ModelSlot) -> dict[str, Any]:
    return {"arm": arm, **slot.current.describe()}


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
