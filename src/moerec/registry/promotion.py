"""Promotion: which version of a model folder is served, and the way back.

    <registry>/<name>/PROMOTED          the version to serve (see pointer.py)
    <registry>/<name>/promotions.jsonl  one JSON line per promotion or rollback, oldest first

:func:`promote` verifies the artefact completely (every checksum, and the model rebuilds from
it) before it moves the pointer, so a service that follows the pointer is never pointed at an
artefact it would refuse. The history is a stack: a promotion pushes a version, a rollback
pops the current one and re-promotes the one below it, so repeated rollbacks walk back through
earlier promotions until the first one. Promotions and rollbacks of one model folder are
serialised by a lock file, so two operators (or an operator and a training job) cannot
interleave their writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from moerec.config import ExperimentConfig
from moerec.registry.artefact import (
    MANIFEST,
    ArtefactError,
    list_versions,
    load_artefact,
    read_manifest,
)
from moerec.registry.pointer import POINTER, PointerError, read_pointer, write_pointer

HISTORY = "promotions.jsonl"
LOCK = ".promotion.lock"
NEWEST = "newest"  # the VERSION that means "the newest version in the folder"
Action = Literal["promote", "rollback"]


class PromotionError(ArtefactError):
    """A promotion or rollback that cannot be done as asked; nothing was changed."""


@dataclass(frozen=True)
class PromotionRecord:
    """One line of the promotion history: ``version`` became the promoted one."""

    at: str  # UTC, ISO 8601
    action: Action
    version: str
    previous: str | None  # the version promoted before (None: nothing was)


@dataclass(frozen=True)
class VersionInfo:
    """One version of a model folder, as ``moerec registry list`` shows it."""

    name: str
    path: Path
    created_at: str | None
    metrics: dict[str, Any] = field(default_factory=dict)
    model: str | None = None  # variant and feed-forward, e.g. 'moe 8x128 top-2'
    promoted: bool = False
    served: bool = False  # what a (re)started service loads: the promoted one, else the newest
    problem: str | None = None  # why its manifest cannot be read, if it cannot


def promoted_version(model_dir: Path | str) -> str | None:
    """The promoted version's name, or None when nothing was promoted."""
    try:
        return read_pointer(Path(model_dir))
    except PointerError as exc:
        raise PromotionError(str(exc)) from None


def version_name(model_dir: Path | str, version: str) -> str:
    """The folder name of ``version`` (``v0003``, ``3`` or ``newest``), which must exist."""
    model_dir = Path(model_dir)
    versions = [p.name for p in list_versions(model_dir)]
    if not versions:
        raise PromotionError(
            f"{model_dir}: no model versions here (expected folders v0001, …); point at a model "
            "folder such as models/NAME, or train one with `moerec train … --registry DIR`"
        )
    if version == NEWEST:
        return versions[-1]
    match = re.fullmatch(r"v?(\d{1,9})", version.strip())
    name = f"v{int(match.group(1)):04d}" if match else version
    if name not in versions:
        raise PromotionError(
            f"{model_dir}: there is no version {version!r}; it has {_listed(versions)} "
            f"(`moerec registry list {model_dir}`)"
        )
    return name


def list_promotions(model_dir: Path | str) -> list[VersionInfo]:
    """Every version with its creation time, metrics and promotion state, oldest first."""
    model_dir = Path(model_dir)
    promoted = promoted_version(model_dir)
    versions = list_versions(model_dir)
    served = promoted or (versions[-1].name if versions else None)
    infos = []
    for path in versions:
        try:
            manifest = read_manifest(path)
            created, metrics, problem = manifest.get("created_at"), manifest.get("metrics"), None
            model = _model_label(manifest.get("config"))
            source = manifest.get("derived_from")
            if model and isinstance(source, dict) and source.get("version"):
                model += f", rerouted {source['version']}"  # same weights (registry reroute)
        except (ArtefactError, OSError) as exc:
            created, metrics, model, problem = None, None, None, str(exc)
        infos.append(
            VersionInfo(
                name=path.name,
                path=path,
                created_at=created,
                metrics=metrics if isinstance(metrics, dict) else {},
                model=model,
                promoted=path.name == promoted,
                served=path.name == served,
                problem=problem,
            )
        )
    return infos


def _model_label(config: Any) -> str | None:
    """'moe 8x128 top-2' or 'dense-active 256' from a manifest's config; None when this
    release cannot read it."""
    try:
        experiment = ExperimentConfig.model_validate(config)
    except ValidationError:
        return None
    return f"{experiment.variant} {experiment.model.feed_forward}"


def history(model_dir: Path | str) -> list[PromotionRecord]:
    """The promotion history, oldest first (lines that cannot be parsed are skipped)."""
    path = Path(model_dir) / HISTORY
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        try:
            data = json.loads(line)
            records.append(
                PromotionRecord(
                    at=str(data["at"]),
                    action=data["action"],
                    version=str(data["version"]),
                    previous=data.get("previous"),
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # e.g. a line cut short by a crash; the pointer check below still holds
    return records


def promote(
    model_dir: Path | str,
    version: str,
    floors: Mapping[str, float] | None = None,
    max_drop: float | None = None,
    gate_metric: str = "valid.ndcg@10",
) -> PromotionRecord:
    """Verify ``version`` and make it the promoted one (``newest``: the newest version).

    The quality gate, for unattended promotions (a nightly retrain): ``floors`` maps metric
    paths of the manifest (``valid.ndcg@10``) to the least value each must reach, and
    ``max_drop`` refuses a version whose ``gate_metric`` is more than that fraction below the
    promoted version's. Promoting the version that is already promoted rewrites the pointer (a
    watching service takes that as a cue to retry a load it refused) without adding a line.
    """
    model_dir = Path(model_dir)
    with _locked(model_dir):
        name = version_name(model_dir, version)
        current = promoted_version(model_dir)
        _verify(model_dir, name, f"refusing to promote {name}", current)
        _check_gate(model_dir, name, current, floors or {}, max_drop, gate_metric)
        record = PromotionRecord(_now(), "promote", name, current)
        write_pointer(model_dir, name)
        if current != name:
            _append(model_dir, record)
        return record


def rollback(model_dir: Path | str) -> PromotionRecord:
    """Re-promote the version that was promoted before the current one."""
    model_dir = Path(model_dir)
    with _locked(model_dir):
        current = promoted_version(model_dir)
        if current is None:
            raise PromotionError(
                f"{model_dir}: no version was promoted, so there is nothing to roll back; "
                f"promote one with `moerec registry promote {model_dir} VERSION`"
            )
        stack = _stack(history(model_dir))
        if not stack or stack[-1] != current:
            raise PromotionError(
                f"{model_dir / POINTER} names {current} but the promotion history "
                f"({HISTORY}) ends with {stack[-1] if stack else 'no promotion'}: the pointer "
                "was changed outside moerec; promote the version you want explicitly"
            )
        if len(stack) < 2:
            raise PromotionError(
                f"{model_dir}: {current} is the first promoted version, there is no earlier "
                "one to roll back to; promote a version explicitly with "
                f"`moerec registry promote {model_dir} VERSION`"
            )
        target = stack[-2]
        if not (model_dir / target).is_dir():
            raise PromotionError(
                f"cannot roll back to {target}: it is no longer in {model_dir} and {current} "
                "stays promoted; promote another version explicitly"
            )
        _verify(model_dir, target, f"cannot roll back to {target}", current)
        record = PromotionRecord(_now(), "rollback", target, current)
        write_pointer(model_dir, target)
        _append(model_dir, record)
        return record


def _stack(records: list[PromotionRecord]) -> list[str]:
    """The promoted versions still to return to, the current one last."""
    stack: list[str] = []
    for record in records:
        if record.action == "promote":
            stack.append(record.version)
        elif stack:
            stack.pop()
    return stack


def _verify(model_dir: Path, name: str, refusal: str, current: str | None) -> None:
    """Load the artefact as the service would; refuse (changing nothing) if it fails."""
    try:
        load_artefact(model_dir / name)
    except (ArtefactError, OSError) as exc:
        kept = f"{current} stays promoted" if current else "nothing was promoted"
        raise PromotionError(f"{refusal} ({kept}): {exc}") from None


def metric_value(metrics: Mapping[str, Any], path: str) -> float | None:
    """``metrics["valid"]["ndcg@10"]`` for ``valid.ndcg@10``; None when it is not there."""
    value: Any = metrics
    for part in path.split(".", 1):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, int | float) else None


def _check_gate(
    model_dir: Path,
    name: str,
    current: str | None,
    floors: Mapping[str, float],
    max_drop: float | None,
    gate_metric: str,
) -> None:
    if not floors and max_drop is None:
        return
    kept = f"{current} stays promoted" if current else "nothing was promoted"
    metrics = read_manifest(model_dir / name).get("metrics") or {}
    for path, floor in floors.items():
        value = metric_value(metrics, path)
        if value is None:
            raise PromotionError(
                f"refusing to promote {name} ({kept}): its manifest has no metric {path!r} "
                "(paths look like valid.ndcg@10 or test.hr@10; see `moerec registry list`)"
            )
        if value < floor:
            raise PromotionError(
                f"refusing to promote {name} ({kept}): {path} = {value:.4f} is below the "
                f"required {floor:.4f}"
            )
    if max_drop is None or current is None or current == name:
        return
    candidate = metric_value(metrics, gate_metric)
    baseline = metric_value(read_manifest(model_dir / current).get("metrics") or {}, gate_metric)
    if candidate is None or baseline is None:
        missing = name if candidate is None else current
        raise PromotionError(
            f"refusing to promote {name} ({kept}): {missing} has no metric {gate_metric!r} to "
            "compare; choose another --gate-metric or drop --max-drop"
        )
    if candidate < baseline * (1.0 - max_drop):
        raise PromotionError(
            f"refusing to promote {name} ({kept}): {gate_metric} = {candidate:.4f} is more than "
            f"{max_drop:.0%} below {current}'s {baseline:.4f}"
        )


def _append(model_dir: Path, record: PromotionRecord) -> None:
    with (model_dir / HISTORY).open("a", encoding="utf-8") as f:
        f.write(json.dumps(asdict(record)) + "\n")
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def _locked(model_dir: Path) -> Iterator[None]:
    if not model_dir.is_dir():
        raise PromotionError(
            f"{model_dir}: not a model folder; pass the folder that holds v0001, v0002, … "
            "(e.g. models/NAME)"
        )
    if (model_dir / MANIFEST).is_file():
        raise PromotionError(
            f"{model_dir}: this is one version; pass its model folder, {model_dir.parent}"
        )
    with (model_dir / LOCK).open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _listed(versions: list[str]) -> str:
    shown = ", ".join(versions[-8:])
    return f"…, {shown}" if len(versions) > 8 else shown


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
