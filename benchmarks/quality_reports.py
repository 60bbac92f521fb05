"""Reading the quality reports (benchmarks/results/quality-*.json) back: which are sweeps, and
every run of one variant over seeds. Shared by quality.py (the tables) and plots.py."""

from __future__ import annotations

from typing import Any

Report = dict[str, Any]


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
        ),
        None,
    )


def seed_runs(reports: list[Report], like: Report, variant: str) -> list[dict[str, Any]]:
    """Every run of ``variant`` on ``like``'s data set and features, one per seed: the rows of
    its seed sweeps, then the variants run's own row (marked ``from_variants_run``) when its
    seed is not among them."""
    by_seed: dict[int, dict[str, Any]] = {}
    for report in reports:
        if report["dataset"] != like["dataset"] or feature_mode(report) != feature_mode(like):
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
