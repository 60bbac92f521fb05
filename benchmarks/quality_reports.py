"""Reading the quality reports (benchmarks/results/quality-*.json) back: which are sweeps, and
every run of one variant over seeds. Shared by quality.py (the tables) and plots.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from moerec.config import ExperimentConfig

Report = dict[str, Any]

# A file moved aside when its data set's frozen config changed: quality-X-until-DATE.json, or
# quality-X-until-DATE-N.json for the Nth config retired that day.
RETIRED = re.compile(r"-until-(\d{4}-\d{2}-\d{2})(?:-(\d+))?$")

# Set per run by a quality.py flag, not by the frozen config: no sign of another config.
RUN_OPTIONS = {
    "train.epochs",
    "train.seed",
    "model.time_context",
    "data.item_features",
    "model.item_feature_mode",
}


def retired_until(path: Path) -> str | None:
    """The date until which the file's config was the frozen one, for a file moved aside
    ("2026-12-05", or "2026-12-05, change 2" for the second config retired that day)."""
    until = RETIRED.search(path.stem)
    if until is None:
        return None
    return until[1] + (f", change {until[2]}" if until[2] else "")


def config_order(until: str | None) -> int:
    """How late a file's config was the frozen one, from its ``retired_until``: retired files by
    the date (and number) of their retirement, a current file (``None``) after them all."""
    if until is None:
        return 10**12
    date, _, change = until.partition(", change ")
    return int(date.replace("-", "")) * 100 + int(change or 1)


def retired_name(path: Path, until: str) -> Path:
    """The name to move ``path`` aside to when the frozen config changes: dated, and numbered
    when a config of the same day was retired already."""
    candidate, number = path.with_name(f"{path.stem}-until-{until}.json"), 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.stem}-until-{until}-{number}.json")
    return candidate


def settings(config: dict[str, Any]) -> dict[str, Any]:
    """A report's config with the options added since it was written at their defaults, so
    that an older report compares equal to a new one with the same settings."""
    try:
        return ExperimentConfig.model_validate(config).to_dict()
    except ValidationError:
        return config


def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"hidden_size": 64}}`` as ``{"model.hidden_size": 64}``."""
    leaves: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            leaves.update(flat(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


def same_settings(a: Report, b: Report) -> bool:
    """Whether two reports trained the same config, per-run options (seed, epoch cap, inputs)
    aside: a sweep is set only against the variants run of its own config."""
    ours, theirs = flat(settings(a["config"])), flat(settings(b["config"]))
    return all(
        ours.get(key) == theirs.get(key) for key in (ours.keys() | theirs.keys()) - RUN_OPTIONS
    )


def is_sweep(report: Report) -> bool:
    """A top-p, seed or hyper-parameter sweep (quality-<name>-topp/-seeds/-search.json), not a
    variants comparison."""
    return any(key in row for row in report["rows"] for key in ("top_p", "seed", "overrides"))


def feature_mode(report: Report) -> str:
    """What the model reads besides items: reports that differ here are not compared."""
    model = report["config"]["model"]
    mode = str(model.get("item_feature_mode", "none"))
    return f"{mode}+time" if model.get("time_context") else mode


def variants_run(reports: list[Report], like: Report) -> Report | None:
    """The variants comparison of ``like``'s data set, with the same features and time."""
    return next(
        (
            r
            for r in reports
            if r["dataset"] == like["dataset"]
            and feature_mode(r) == feature_mode(like)
            and not is_sweep(r)
            and same_settings(r, like)
        ),
        None,
    )


def seed_runs(reports: list[Report], like: Report, variant: str) -> list[dict[str, Any]]:
    """Every run of ``variant`` on ``like``'s data set and features, one per seed: the rows of
    its seed sweeps, then the variants run's own row (marked ``from_variants_run``) when its
    seed is not among them."""
    by_seed: dict[int, dict[str, Any]] = {}
    for report in reports:
        if (
            report["dataset"] != like["dataset"]
            or feature_mode(report) != feature_mode(like)
            or not same_settings(report, like)
        ):
            continue
        for row in report["rows"]:
            if row["variant"] == variant and "seed" in row and not row.get("from_variants_run"):
                by_seed.setdefault(int(row["seed"]), row)
    plain = variants_run(reports, like)
    if plain is not None and by_seed:
        seed = int(plain["config"]["train"]["seed"])
        own = next((row for row in plain["rows"] if row["variant"] == variant), None)
        if own is not None and seed not in by_seed:
            by_seed[seed] = {**own, "seed": seed, "from_variants_run": True}
    return list(by_seed.values())
