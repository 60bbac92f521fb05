"""Quality and cost of the MoE model against its two dense baselines, measured in one run.

For each data set: train `moe`, `dense-active` (same active FFN FLOPs) and `dense-params`
(same total FFN parameters) with the frozen config in configs/, select the epoch on validation
NDCG@10, report test HR/NDCG/MRR@5/10/20 at that epoch, training time, parameters and measured
FLOPs per request. Writes benchmarks/results/quality-<dataset>.json and docs/benchmarks.md.

    python benchmarks/quality.py --data-root PATH/TO/data     # all five data sets: ~6 h, 2 cores
    python benchmarks/quality.py --data-root PATH --datasets toys --threads 1 --jobs 2  # 2 at once
    python benchmarks/quality.py --data-root PATH --datasets beauty --variants moe
    python benchmarks/quality.py --data-root PATH --datasets beauty --item-features
    python benchmarks/quality.py --data-root PATH --datasets ml-100k --time-context
    python benchmarks/quality.py --data-root PATH --datasets beauty --top-p 0.3,0.5,0.7,0.9
    python benchmarks/quality.py --data-root PATH --datasets beauty --variants moe --seeds 42,43,44
    python benchmarks/quality.py --data-root PATH --datasets beauty --variants moe \\
        --try model.num_heads=1 --try train.label_smoothing=0.1       # a validation search
    python benchmarks/quality.py --tiny --output-dir results-tiny     # seconds; what CI runs
"""

from __future__ import annotations

import argparse
import fcntl
import json
import multiprocessing
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

import docs_section
from machine import machine_info
from moerec.config import (
    VARIANTS,
    ConfigError,
    ExperimentConfig,
    ModelConfig,
    Variant,
    load_config,
    parse_overrides,
    resolve_variant,
    with_overrides,
)
from moerec.data.dataset import Dataset, dataset_from_interactions, load_dataset
from moerec.data.synthetic import generate_interactions
from moerec.evaluation import evaluate_popularity
from moerec.evaluation.cost import measure_cost
from moerec.runtime import active_allocator, reexec_with_jemalloc
from moerec.training import train
from quality_reports import (
    RETIRED,
    RUN_OPTIONS,
    config_order,
    feature_mode,
    flat,
    is_sweep,
    retired_name,
    retired_until,
    seed_runs,
    settings,
    variants_run,
)

REPO = Path(__file__).resolve().parents[1]
DATASETS: dict[str, dict[str, str]] = {
    "beauty": {
        "file": "amazon-beauty/Beauty.txt",
        "config": "configs/quality-beauty.yaml",
        "features": "amazon-beauty/Beauty_item2attributes.json",
    },
    "sports": {
        "file": "amazon-sports/Sports_and_Outdoors.txt",
        "config": "configs/quality-sports.yaml",
    },
    "toys": {"file": "amazon-toys/Toys_and_Games.txt", "config": "configs/quality-toys.yaml"},
    "yelp": {"file": "yelp/Yelp.txt", "config": "configs/quality-yelp.yaml"},
    "ml-100k": {
        "file": "ml-100k/u.data",
        "config": "configs/quality-ml-100k.yaml",
        "features": "ml-100k/u.item",
        "timed": "yes",  # the file has timestamps (the S3-Rec sequence files do not)
    },
}
# Best published full-ranking figures on the same files, for context (not our measurements).
PUBLISHED = {
    "beauty": [
        ("BSARec / TV-Rec / WEARec (best published)", 0.061, 0.104),
        ("SASRec, binary cross-entropy (as published)", 0.032, 0.061),
    ],
    "sports": [("TV-Rec / WEARec (best published)", 0.037, 0.064)],
    "toys": [("ICSRec (best published)", 0.066, 0.106)],
    "yelp": [("TV-Rec (best published)", 0.025, 0.047)],
}
# What moerec aims for on each file: NDCG@10 and HR@10 at least the best published (the first
# PUBLISHED entry), rounded up.
GOALS = {
    "beauty": (0.062, 0.105),
    "sports": (0.037, 0.064),
    "toys": (0.066, 0.106),
    "yelp": (0.025, 0.048),
}
HEADLINE = ("hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr@10")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        write_docs(args.docs, args.output_dir)
        return 0
    reexec_with_jemalloc()  # 2-8x faster CPU training where installed (see moerec.runtime)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    args.output_dir.mkdir(parents=True, exist_ok=True)
    names = ["tiny"] if args.tiny else args.datasets.split(",")
    for name in names:
        dataset, config = prepare(name, args)
        suffix = (
            ("-features" if args.item_features else "")
            + ("-time" if args.time_context else "")
            + ("-topp" if args.top_p else "")
            + ("-seeds" if args.seeds else "")
            + ("-search" if args.tries else "")
        )
        path = args.output_dir / f"quality-{name}{suffix}.json"
        if args.append:
            check_appendable(path, dataset, config)
        run_dataset(
            name, dataset, config, jobs(config, args), path, append=args.append, workers=args.jobs
        )
    if args.docs is not None:
        write_docs(args.docs, args.output_dir)
        print(f"wrote {args.docs}", file=sys.stderr)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-root", type=Path, help="Folder holding amazon-beauty/, ml-100k/, …")
    p.add_argument(
        "--datasets",
        default=",".join(DATASETS),
        help="Comma-separated, from: " + ",".join(DATASETS),
    )
    p.add_argument(
        "--variants",
        type=_variants,
        default=list(VARIANTS),
        help=f"Comma-separated, from: {','.join(VARIANTS)}",
    )
    p.add_argument("--epochs", type=int, help="Override the config's max epochs.")
    p.add_argument("--seed", type=int, help="Override the config's seed.")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default).")
    p.add_argument(
        "--jobs",
        type=_positive,
        default=1,
        help="Train this many models at once, each in a process of its own with --threads "
        "threads (on 2 cores: --jobs 2 --threads 1). Rows are written as each model finishes.",
    )
    p.add_argument("--output-dir", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--docs", type=Path, default=None, help="Markdown file to (re)render.")
    p.add_argument(
        "--item-features",
        action="store_true",
        help="Train every variant with the data set's item attributes (Beauty's "
        "item2attributes file, MovieLens genres); writes quality-<dataset>-features.json.",
    )
    p.add_argument(
        "--time-context",
        action="store_true",
        help="Train every variant with model.time_context (data sets with timestamps: "
        "ml-100k); writes quality-<dataset>-time.json.",
    )
    p.add_argument(
        "--top-p",
        type=_probabilities,
        help="Instead of the variants, train the MoE once per listed mass p with top-p routing "
        "(moe_router: topp, clamped to moe_min_k..moe_max_k experts): the cost/quality curve. "
        "Writes quality-<dataset>-topp.json.",
    )
    p.add_argument(
        "--seeds",
        type=_integers,
        help="Train the --variants once per listed seed: the run-to-run spread. Writes "
        "quality-<dataset>-seeds.json.",
    )
    p.add_argument(
        "--try",
        dest="tries",
        action="append",
        type=_overrides,
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="Instead of the plain variants, train the --variants once per --try with these "
        "config changes (repeatable): a hyper-parameter search, judged on validation NDCG@10. "
        "Writes quality-<dataset>-search.json; with --append, earlier tries are kept.",
    )
    p.add_argument(
        "--append",
        action="store_true",
        help="Keep the rows of the existing results file and add (or replace) the ones trained "
        "now, e.g. a variant a long run did not reach; several runs may append to one file at "
        "once. Refused when the data or the config differ from the file's.",
    )
    p.add_argument("--tiny", action="store_true", help="Synthetic data, 2 epochs: a smoke run.")
    p.add_argument(
        "--render-only", action="store_true", help="Only rewrite --docs from existing results."
    )
    args = p.parse_args(argv)
    if sum(bool(sweep) for sweep in (args.seeds, args.top_p, args.tries)) > 1:
        p.error("--seeds, --top-p and --try are separate sweeps; run them one at a time")
    if args.seeds and args.seed is not None:
        p.error("--seeds sets the seed of each run; leave out --seed")
    if args.render_only and args.docs is None:
        p.error("--render-only needs --docs FILE")
    if not (args.tiny or args.render_only) and args.data_root is None:
        p.error("--data-root is required (or use --tiny)")
    if args.item_features:
        lacking = [n for n in args.datasets.split(",") if "features" not in DATASETS.get(n, {})]
        if args.tiny or lacking:
            p.error(
                f"--item-features: no attribute file is known for {', '.join(lacking) or 'tiny'}"
                f" (known: {', '.join(n for n, d in DATASETS.items() if 'features' in d)})"
            )
    if args.time_context and not args.tiny:
        lacking = [n for n in args.datasets.split(",") if "timed" not in DATASETS.get(n, {})]
        if lacking:
            p.error(
                f"--time-context: {', '.join(lacking)} has no timestamps (with times: "
                f"{', '.join(n for n, d in DATASETS.items() if 'timed' in d)})"
            )
    return args


def _probabilities(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers like 0.3,0.5,0.7; got {text!r}"
        ) from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"each p must be in (0, 1]; got {text!r}")
    return values


def _overrides(text: str) -> dict[str, Any]:
    """``model.num_heads=1,train.label_smoothing=0.1`` as config overrides (values read as YAML)."""
    pairs = text.split(",")
    if any(pair.partition(".")[0].strip() not in SECTIONS for pair in pairs):
        raise argparse.ArgumentTypeError(
            f"expected section.key=value pairs like model.num_heads=1; got {text!r}"
        )
    try:
        return parse_overrides(pairs, option="--try")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


SECTIONS = ("data", "model", "train", "eval")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1; got {text!r}")
    return value


def _integers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 42,43,44; got {text!r}") from None


def _variants(text: str) -> list[Variant]:
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [part for part in chosen if part not in VARIANTS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown variant(s) {', '.join(unknown) or repr(text)}; "
            f"choose from {','.join(VARIANTS)}"
        )
    return [variant for variant in VARIANTS if variant in chosen]  # the usual order


def jobs(config: ExperimentConfig, args: argparse.Namespace) -> list[tuple[dict, ExperimentConfig]]:
    """(row labels, config) per model to train: the variants, the seed or the top-p sweep."""
    if args.seeds:
        return [
            ({"variant": variant, "seed": seed}, _with_seed(resolve_variant(config, variant), seed))
            for seed in args.seeds
            for variant in args.variants
        ]
    if args.tries:
        return [
            (
                {"variant": variant, "overrides": changes},
                resolve_variant(with_changes(config, changes), variant),
            )
            for changes in args.tries
            for variant in args.variants
        ]
    if args.top_p:
        return [
            (
                {"variant": "moe-topp", "top_p": p},
                config.model_copy(update={"model": top_p_model(config.model, p)}),
            )
            for p in args.top_p
        ]
    return [({"variant": variant}, resolve_variant(config, variant)) for variant in args.variants]


def with_changes(config: ExperimentConfig, changes: dict[str, Any]) -> ExperimentConfig:
    """``config`` with one ``--try``'s dotted overrides applied, validated like a config file."""
    try:
        return with_overrides(config, changes)
    except ConfigError as exc:
        raise SystemExit(f"--try {changes}: {exc}") from None


def _with_seed(config: ExperimentConfig, seed: int) -> ExperimentConfig:
    return config.model_copy(update={"train": config.train.model_copy(update={"seed": seed})})


def top_p_model(model: ModelConfig, p: float) -> ModelConfig:
    """The same model with top-p routing at mass p (validated like a config file)."""
    return ModelConfig.model_validate({**model.model_dump(), "moe_router": "topp", "moe_top_p": p})


def prepare(name: str, args: argparse.Namespace) -> tuple[Dataset, ExperimentConfig]:
    overrides: dict[str, Any] = {}
    if args.epochs:
        overrides["train.epochs"] = args.epochs
    if args.seed is not None:
        overrides["train.seed"] = args.seed
    if args.time_context:  # every variant, dense ones included
        overrides["model.time_context"] = True
    if name == "tiny":
        overrides.update({"train.epochs": 2, "model.max_len": 20, "train.batch_size": 64})
        config = load_config(REPO / "configs" / "quality-beauty.yaml", overrides)
        interactions = generate_interactions(num_users=200, num_items=150, seed=1)
        return dataset_from_interactions(interactions, config.data), config
    spec = DATASETS[name]
    if args.item_features:  # every variant, dense ones included, sees the same attributes
        overrides["data.item_features"] = str(args.data_root / spec["features"])
        overrides["model.item_feature_mode"] = "sum"
    config = load_config(REPO / spec["config"], overrides)
    return load_dataset(args.data_root / spec["file"], config.data), config


def check_appendable(path: Path, dataset: Dataset, config: ExperimentConfig) -> None:
    """Refuse ``--append`` to a results file whose rows are not comparable with this run's."""
    if not path.is_file():
        return  # the first run of a search creates it
    report = json.loads(path.read_text(encoding="utf-8"))
    if report.get("data_fingerprint") != dataset.fingerprint:
        raise SystemExit(
            f"--append: {path} was measured on other data (fingerprint "
            f"{report.get('data_fingerprint')} against {dataset.fingerprint}); rerun without "
            "--append"
        )
    theirs, ours = flat(settings(report.get("config", {}))), flat(recorded_config(config))
    if theirs != ours:
        changed = sorted(key for key, value in ours.items() if theirs.get(key) != value)
        if set(changed) <= RUN_OPTIONS:
            remedy = f"pass the same options as its command ({report.get('command')})"
        else:  # the frozen config changed since: the file's rows cannot take new ones
            remedy = (
                f"the frozen config changed since it was written, so start a new file: "
                f"move it aside (git mv {path.name} "
                f"{retired_name(path, str(report.get('measured_at'))).name}; it still renders)"
            )
        raise SystemExit(
            f"--append: {path} was measured with another config (differs in: "
            f"{', '.join(changed) or 'its sections'}); {remedy}, or rerun without --append"
        )


def recorded_config(config: ExperimentConfig) -> dict[str, Any]:
    """``config`` as a results file keeps it: the attribute file named under ``DATA/`` (the
    ``--data-root``, as in the recorded command), not by this machine's path."""
    recorded = config.to_dict()
    features = recorded["data"].get("item_features")
    if features:
        recorded["data"]["item_features"] = "DATA/" + "/".join(Path(features).parts[-2:])
    return recorded


def _changed_since(report: dict[str, Any], overrides: dict[str, Any]) -> dict[str, tuple]:
    """{setting: (now, then)} where the data set's frozen config as it is now differs from
    ``report``'s config with ``overrides`` applied; per-run options are not counted."""
    spec = DATASETS.get(report["dataset"])
    if spec is None:
        return {}
    now = flat(load_config(REPO / spec["config"]).to_dict())
    then = flat(settings(report["config"])) | overrides
    return {
        key: (value, then.get(key))
        for key, value in now.items()
        if key not in RUN_OPTIONS and then.get(key) != value
    }


def config_drift(report: dict[str, Any]) -> list[str]:
    """The settings in which ``report``'s config differs from its data set's frozen config as
    it is now, so that a section measured before the frozen config changed says so."""
    return [
        f"`{key}: {json.dumps(now)}` (here {json.dumps(then)})"
        for key, (now, then) in _changed_since(report, {}).items()
    ]


def is_frozen_now(report: dict[str, Any], overrides: dict[str, Any]) -> bool:
    """Whether a try made before the frozen config changed is what the frozen config is now
    (the try that was adopted), so its row stands for the current config."""
    return bool(_changed_since(report, {})) and not _changed_since(report, overrides)


def _drift_note(report: dict[str, Any], consequence: str) -> list[str]:
    drift = config_drift(report)
    if not drift:
        return []
    return [
        "",
        f"Measured before the frozen config changed: `{DATASETS[report['dataset']]['config']}` "
        f"now sets {', '.join(drift)}. {consequence}",
    ]


def run_dataset(
    name: str,
    dataset: Dataset,
    config: ExperimentConfig,
    to_train: list[tuple[dict, ExperimentConfig]],
    path: Path,
    append: bool = False,
    workers: int = 1,
) -> dict[str, Any]:
    """Train every job, ``workers`` at a time (each in a process of its own when more than
    one); the report is rewritten as each finishes, so a long run keeps its rows.

    With ``append``, each new row (which records the command that made it) is merged into the
    file as it is on disk at that moment, replacing a row with the same label.
    """
    report = _report(name, dataset, config, [popularity_row(dataset, config)])
    trained: dict[int, dict[str, Any]] = {}

    def keep(index: int, row: dict[str, Any]) -> None:
        if append:
            row |= {
                "command": command_line(),
                "measured_at": time.strftime("%Y-%m-%d"),
                "machine": this_machine(),
            }
        trained[index] = row
        report["rows"][1:] = [trained[i] for i in sorted(trained)]
        if append:
            merge_rows(path, {**report, "rows": [report["rows"][0], row]})
        else:
            path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {path} ({row_label(row)})", file=sys.stderr)

    if workers == 1:
        for index, (labels, cfg) in enumerate(to_train):
            keep(index, train_row(name, dataset, labels, cfg))
        return report
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),  # torch and fork do not mix
        initializer=torch.set_num_threads,
        initargs=(torch.get_num_threads(),),
    ) as pool:
        running = {
            pool.submit(train_row, name, dataset, *to_train[index]): index
            for index in slowest_first(to_train)
        }
        for future in as_completed(running):
            keep(running[future], future.result())
    return report


def slowest_first(to_train: list[tuple[dict, ExperimentConfig]]) -> list[int]:
    """Job indices with dense-params first, the rest in their order.

    Dense-params is the slowest per epoch (four times dense-active's feed-forward) and often
    trains the most epochs; queued last behind two shorter jobs, it alone would run on for an
    hour or more with the other core idle.
    """
    return sorted(range(len(to_train)), key=lambda i: to_train[i][1].variant != "dense-params")


def train_row(
    name: str, dataset: Dataset, labels: dict[str, Any], config: ExperimentConfig
) -> dict[str, Any]:
    """Train one model and return its results row (in a worker process with ``--jobs``)."""
    label = row_label(labels)
    print(f"[{name}] training {label}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    curve: list[float] = []
    routing: list[dict[str, list[float]]] = []
    result = train(dataset, config, progress=False, on_epoch=_progress(name, label, curve, routing))
    return {
        **labels,
        "valid": result.valid.metrics,
        "test": result.test.metrics,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "train_seconds": round(result.train_seconds, 1),
        "seconds_per_epoch": round(result.train_seconds / max(result.epochs_run, 1), 2),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "valid_ndcg10_by_epoch": curve,
        **({"routing_by_epoch": routing} if routing else {}),
        "cost": measure_cost(result.model).to_dict(),
        "routing": result.test.routing.to_dict(),
    }


def merge_rows(path: Path, report: dict[str, Any]) -> None:
    """Merge ``report``'s rows into the results file at ``path`` (``report`` itself when there
    is none yet), each replacing a row with the same label, under a lock so that runs
    appending side by side keep each other's rows. The variants stay in their usual order."""
    order = ["popularity", *VARIANTS]
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merged = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else report
        rows = list(merged["rows"])
        for row in report["rows"]:
            rows = [r for r in rows if row_label(r) != row_label(row)] + [row]
        rows.sort(key=lambda r: order.index(r["variant"]) if r["variant"] in order else len(order))
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps({**merged, "rows": rows}, indent=2) + "\n", "utf-8")
        temporary.replace(path)


def format_changes(overrides: dict[str, Any], code: bool = False) -> str:
    """``--try``'s overrides as typed on the command line: ``model.embedding_norm=true``."""
    quote = "`" if code else ""
    return ", ".join(
        f"{quote}{key}={json.dumps(value) if isinstance(value, bool) else value}{quote}"
        for key, value in overrides.items()
    )


def _same_changes(overrides: dict[str, Any]) -> str:
    """A key that equal overrides share however they were typed (true/True, 0.5/.5)."""
    return json.dumps(overrides, sort_keys=True)


def row_label(row: dict[str, Any]) -> str:
    """'moe', 'dense-active', …; 'moe top-p 0.5', 'moe seed 43' or 'moe model.num_heads=1' in a
    sweep."""
    if row.get("overrides"):
        return f"{row['variant']} {format_changes(row['overrides'])}"
    if "top_p" in row:
        return f"moe top-p {row['top_p']:g}"
    if "seed" not in row:
        return str(row["variant"])
    label = f"{row['variant']} seed {row['seed']}"
    return label + " (from the variants run)" if row.get("from_variants_run") else label


def _report(
    name: str, dataset: Dataset, config: ExperimentConfig, rows: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "dataset": name,
        "source": Path(dataset.source).name,
        "data_fingerprint": dataset.fingerprint,
        "stats": dataset.stats(),
        "config": recorded_config(config),
        "command": command_line(),
        "machine": this_machine(),
        "measured_at": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }


def this_machine() -> dict[str, Any]:
    """The file records the first run's machine; rows appended later record their own, since
    kernels of another processor change one seed's curve (``benchmarks/machine.py``)."""
    return {
        **machine_info(),
        "torch_threads": torch.get_num_threads(),
        "allocator": active_allocator(),
    }


def command_line() -> str:
    """This run's command, with the local data folder shown as DATA and without the local
    --output-dir (where the results went does not change them)."""
    argv = sys.argv[1:]
    shown = []
    for before, arg in zip(["", *argv], argv, strict=False):
        if arg == "--output-dir" or before == "--output-dir" or arg.startswith("--output-dir="):
            continue
        shown.append("DATA" if before == "--data-root" else arg)
    return "python benchmarks/quality.py " + " ".join(shown)


def popularity_row(dataset: Dataset, config: ExperimentConfig) -> dict[str, Any]:
    """Most-popular items, same protocol: the floor that shows a model learned anything."""
    split, settings = dataset.split, config.eval
    return {
        "variant": "popularity",
        "valid": evaluate_popularity(split.train, split.valid, dataset.num_items, settings).metrics,
        "test": evaluate_popularity(split.train, split.test, dataset.num_items, settings).metrics,
    }


def _progress(
    name: str,
    variant: str,
    curve: list[float],
    routing: list[dict[str, list[float]]],
) -> Any:
    """Print each epoch's line and collect its validation NDCG@10 in ``curve`` (rounded), so
    that runs can be compared epoch by epoch, not only at their best. An MoE's training-time
    routing entropy and load imbalance per layer go to ``routing``: whether its router
    collapses or keeps specialising as it trains is read from them."""

    def report(record: dict[str, Any]) -> None:
        valid = record.get("valid", {})
        if "ndcg@10" in valid:
            curve.append(round(valid["ndcg@10"], 5))
        layers = record.get("routing", {}).get("layers", [])
        if layers:
            routing.append(
                {
                    "entropy": [round(layer["entropy"], 3) for layer in layers],
                    "imbalance": [round(layer["imbalance"], 3) for layer in layers],
                }
            )
        print(
            f"[{name}/{variant}] epoch {record['epoch']} loss {record['loss']:.4f} "
            f"valid ndcg@10 {valid.get('ndcg@10', float('nan')):.4f} "
            f"({record['train_seconds']:.0f}s)",
            file=sys.stderr,
            flush=True,
        )

    return report


DOCS_BEGIN = "<!-- quality:begin (written by benchmarks/quality.py --docs; do not edit) -->"
DOCS_END = "<!-- quality:end -->"
PAGE_HEADER = [
    "# Benchmarks",
    "",
    "Full ranking over the whole catalogue with the user's history excluded, leave-one-out",
    "(last item = test, second last = validation), test metrics at the epoch with the best",
    "validation NDCG@10. Each section is written by the script it names, from",
    "`benchmarks/results/`; do not edit them by hand.",
    "",
]


def write_docs(path: Path, results_dir: Path) -> None:
    """Rewrite the quality section of ``path`` (between its markers; a new page if absent).

    The other benchmarks (plots, serving, soak, scale) own sections of the same page; they are
    left as they are.
    """
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    path.write_text(splice_section(text, render_markdown(results_dir)), encoding="utf-8")


def splice_section(text: str, section: str) -> str:
    """``text`` with the marked quality section replaced by ``section``; on an empty page, the
    page's header first."""

    def new_page(text: str, block: str) -> str:
        if not text.strip():
            return "\n".join(PAGE_HEADER) + "\n" + block
        return text.rstrip("\n") + "\n\n" + block

    return docs_section.splice_section(text, section, DOCS_BEGIN, DOCS_END, new_page)


def render_markdown(results_dir: Path) -> str:
    """The quality and speed tables from every quality-*.json and speed.json in ``results_dir``."""
    lines: list[str] = []
    files = {
        path: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(results_dir.glob("quality-*.json"), key=_current_first)
    }
    files = {path: report for path, report in files.items() if report["dataset"] != "tiny"}
    reports = list(files.values())
    lines += _summary_section(summary_reports(files), reports)
    for path, report in files.items():
        retired = _retired_title(path)
        if any("overrides" in row for row in report["rows"]):
            lines += _search_section(report, variants_run(reports, report), retired)
            continue
        if any("seed" in row for row in report["rows"]):
            report = _with_variants_run(report, reports)
        lines += _dataset_section(report, retired)
    speed = results_dir / "speed.json"
    if speed.is_file():
        lines += _speed_section(json.loads(speed.read_text(encoding="utf-8")))
    return "\n".join(lines) + "\n"


def summary_reports(files: dict[Path, dict[str, Any]]) -> list[dict[str, Any]]:
    """The variants runs the summary shows: each current one, and, while a data set's rerun
    after a config change lacks a variant (or has not started), the newest file moved aside
    for it, so that the summary keeps its last complete comparison until the new one is."""
    current = {
        (report["dataset"], feature_mode(report)): report
        for path, report in files.items()
        if retired_until(path) is None and not is_sweep(report)
    }
    shown = list(current.values())
    standing_in: set[tuple[str, str]] = set()
    for path, report in files.items():  # retired files newest first (render_markdown's order)
        key = (report["dataset"], feature_mode(report))
        if retired_until(path) is None or is_sweep(report) or key in standing_in:
            continue
        rerun = {row["variant"] for row in current[key]["rows"]} if key in current else set()
        if not set(VARIANTS) <= rerun:
            shown.append({**report, "retired_until": retired_until(path)})
            standing_in.add(key)
    return shown


def _summary_section(
    reports: list[dict[str, Any]], every: list[dict[str, Any]] | None = None
) -> list[str]:
    """One line per data set's variants run: the MoE against the goal, the best published
    result and the two dense baselines of the same code; with ``every`` report at hand, the
    MoE's range over the seeds measured with the same config."""
    order = list(DATASETS)
    reports = sorted(
        reports,
        key=lambda r: (
            order.index(r["dataset"]) if r["dataset"] in order else len(order),
            feature_mode(r),
        ),
    )
    lines = [
        "## Summary",
        "",
        "Test NDCG@10 / HR@10 at the best-validation epoch of each data set's variants run "
        "(`quality-<data set>.json`, one seed), and the MoE's range over every seed measured "
        "with the same config where a seed sweep exists; the sections below give each run "
        "and its command. The goal is the best published result on the same file, rounded up. "
        "Against the dense baselines: the MoE's test NDCG@10 relative to theirs (in brackets, "
        "over the seeds both were trained with: the ratio of the means and on how many seeds "
        "the MoE leads), and its feed-forward FLOPs per request as a share of dense-params'.",
        "",
        "| data set | moe | moe over seeds | goal (best published) | goal met | vs dense-active | "
        "vs dense-params | FFN FLOPs vs dense-params | config |",
        "|---|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for report in reports:
        rows = {row["variant"]: row for row in report["rows"]}
        moe = rows.get("moe")
        if moe is None:
            continue
        ndcg, hr = moe["test"]["ndcg@10"], moe["test"]["hr@10"]
        goal = GOALS.get(report["dataset"])
        published = PUBLISHED.get(report["dataset"], [])
        goal_words = (
            f"{goal[0]:.3f} / {goal[1]:.3f}"
            + (f" ({published[0][1]:.3f} / {published[0][2]:.3f})" if published else "")
            if goal
            else ""
        )
        if goal is None:
            met = ""
        elif ndcg >= goal[0] and hr >= goal[1]:
            met = "yes"
        else:
            short = min(ndcg / goal[0], hr / goal[1]) - 1
            met = f"no ({short:+.0%})"
        versus = {
            name: _versus(moe, rows[name])
            for name in ("dense-active", "dense-params")
            if name in rows
        }
        ndcg_words = [
            f"{versus[name][0]:+.1%}" if name in versus else "not run"
            for name in ("dense-active", "dense-params")
        ]
        seeds = seed_runs(every or [], report, "moe")
        ndcg_words[0] += _over_seed_pairs(seeds, seed_runs(every or [], report, "dense-active"))
        flops = f"{versus['dense-params'][1]:.0%}" if "dense-params" in versus else ""
        if report.get("retired_until"):
            config = f"the one until {report['retired_until']} (see its section)"
        else:
            config = "frozen" if not config_drift(report) else "an earlier one (see its section)"
        spread = ""
        if len(seeds) > 1:
            low, high = (f"{pick(r['test']['ndcg@10'] for r in seeds):.4f}" for pick in (min, max))
            spread = f"{low if low == high else f'{low}-{high}'} ({len(seeds)} seeds)"
        lines.append(
            f"| {report['dataset']}{_setting_title(report)} | {ndcg:.4f} / {hr:.4f} | {spread} | "
            f"{goal_words} | {met} | {ndcg_words[0]} | {ndcg_words[1]} | {flops} | {config} |"
        )
    return [*lines, ""]


def _over_seed_pairs(moe: list[dict[str, Any]], other: list[dict[str, Any]]) -> str:
    """The MoE's seed runs against another variant's (``seed_runs`` of one config) over every
    seed both have: the ratio of their mean test NDCG@10 and how many of the pairs the MoE leads.
    One seed's margin is often smaller than a model's own spread over seeds; the pairs say
    whether it holds."""
    theirs = {int(row["seed"]): row for row in other}
    pairs = [
        (row["test"]["ndcg@10"], theirs[int(row["seed"])]["test"]["ndcg@10"])
        for row in moe
        if int(row["seed"]) in theirs
    ]
    if len(pairs) < 2:
        return ""
    mean = sum(moe for moe, _ in pairs) / sum(base for _, base in pairs) - 1
    ahead = sum(moe > base for moe, base in pairs)
    return f" ({len(pairs)} seeds: {mean:+.1%}, ahead on {ahead})"


def _versus(moe: dict[str, Any], other: dict[str, Any]) -> tuple[float, float]:
    """The MoE's test NDCG@10 relative to ``other``'s, and its FFN FLOPs as a share of theirs."""
    ndcg = moe["test"]["ndcg@10"] / other["test"]["ndcg@10"] - 1
    flops = moe["cost"]["ffn_flops_per_request"] / other["cost"]["ffn_flops_per_request"]
    return ndcg, flops


def _retired_title(path: Path) -> str:
    """A file moved aside when the frozen config changed (quality-X-until-DATE.json) says so in
    its heading, so that it and its successor are told apart at a glance."""
    until = retired_until(path)
    return f" (frozen config until {until})" if until else ""


def _current_first(path: Path) -> tuple[str, int]:
    """Sort key: retired files (quality-X-until-DATE[-N]) right after the one that replaced
    them, newest first."""
    return RETIRED.sub("", path.stem), -config_order(retired_until(path))


def _machine_words(machine: dict[str, Any]) -> str:
    """ "2 CPU cores (AMD EPYC, AVX2 kernels; torch 2.13.0+cpu)"; older files lack the processor."""
    processor = ", ".join(
        part
        for part in (
            machine.get("cpu_model"),
            machine.get("cpu_capability") and f"{machine['cpu_capability']} kernels",
        )
        if part
    )
    torch_version = machine.get("torch") and f"torch {machine['torch']}"
    described = "; ".join(filter(None, (processor, torch_version)))
    return f"{machine['cpus']} CPU cores" + (f" ({described})" if described else "")


MACHINE_KEYS = ("cpus", "cpu_model", "cpu_capability", "torch")


def _other_machines(report: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """A line naming the rows appended from a machine unlike the one the file records (as far
    as both records tell: older files lack the processor)."""
    theirs = report["machine"]
    elsewhere: dict[str, list[str]] = {}
    for row in rows:
        ours = row.get("machine", theirs)
        if any(ours[key] != theirs[key] for key in MACHINE_KEYS if key in ours and key in theirs):
            elsewhere.setdefault(_machine_words(ours), []).append(row_label(row))
    return [
        f"Measured on {words} instead: {', '.join(labels)}." for words, labels in elsewhere.items()
    ]


def _speed_section(report: dict[str, Any]) -> list[str]:
    lines = [
        "## Speed and memory (`benchmarks/speed.py`)",
        "",
        f"Measured {report['measured_at']} on {_machine_words(report['machine'])}: "
        f"`{report['command']}`. Training step: median "
        "over real batches; latency: one user's top-10 request through the predictor "
        "(last position only in the final block); 32 clients: concurrent requests through the "
        "micro-batcher (max batch 32, max wait 2 ms); peak memory: the whole process.",
        "",
        "| variant | allocator | train step (s) | p50 ms | p95 ms | p99 ms | users/s (batch 256) "
        "| 32 clients: req/s | p50 ms | p99 ms | mean batch | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        lat = row["latency_ms"]
        mb = row.get("micro_batched")
        batched = (
            f"{mb['requests_per_s']:.0f} | {mb['latency_ms']['p50']:.2f} | "
            f"{mb['latency_ms']['p99']:.2f} | {mb['mean_batch_size']:.1f}"
            if mb
            else " | | | "
        )
        lines.append(
            f"| {row['variant']} | {row['allocator']} | {row['train_step_s_median']:.3f} | "
            f"{lat['p50']:.2f} | {lat['p95']:.2f} | {lat['p99']:.2f} | "
            f"{row['batch_scoring_users_per_s']:.0f} | {batched} | {row['peak_rss_mb']:.0f} |"
        )
    return [*lines, "", *_dispatch_lines(report["rows"])]


def _dispatch_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The MoE layer alone through both dispatch paths (the first row that measured it)."""
    row = next((r for r in rows if r.get("moe_layer_us")), None)
    if row is None:
        return []
    lines = [
        f"One MoE layer alone at inference ({row['variant']}, {row['allocator']}), median "
        "microseconds per call on N random tokens: the sorted dispatch (sort the slots by "
        "expert, run each expert on its slice) against the gathered one (each slot's expert "
        "weights gathered, one batched matmul), which the layer takes while the gathered "
        "weights stay within `moerec.model.moe.GATHER_BUDGET`.",
        "",
        "| tokens | slots | sorted µs | gathered µs | gathered / sorted |",
        "|---:|---:|---:|---:|---:|",
    ]
    for step in row["moe_layer_us"]:
        lines.append(
            f"| {step['tokens']} | {step['slots']} | {step['sorted']:.0f} | "
            f"{step['gathered']:.0f} | {step['gathered'] / step['sorted']:.2f} |"
        )
    return [*lines, ""]


def _dataset_section(report: dict[str, Any], retired: str = "") -> list[str]:
    s = report["stats"]
    cfg = report["config"]["model"]
    lines = [
        f"## {report['dataset']} (`{report['source']}`){_setting_title(report)}"
        + _sweep_title(report["rows"])
        + retired,
        "",
        f"{s['users']:,} users, {s['items']:,} items, {s['interactions']:,} interactions; "
        f"max length {cfg['max_len']}, hidden {cfg['hidden_size']}, {cfg['num_layers']} layers, "
        f"{cfg['moe_num_experts']} experts × {cfg['ffn_hidden_size']} wide, "
        f"top-{cfg['moe_top_k']}.",
        f"Measured {report['measured_at']} on {_machine_words(report['machine'])}: "
        f"`{report['command']}`"
        + "".join(
            f"; {row_label(row)} added {row.get('measured_at', '')} by `{row['command']}`"
            for row in report["rows"]
            if row.get("command", report["command"]) != report["command"]
        ),
        *_other_machines(report, report["rows"]),
        *_drift_note(
            report,
            "These rows stand as measured; the command above now measures the current config.",
        ),
        "",
        "| variant | " + " | ".join(HEADLINE) + " | best epoch | s/epoch | params | "
        "active params/token | FFN MFLOPs/request | MFLOPs/request |",
        "|---|" + "---:|" * (len(HEADLINE) + 6),
    ]
    for row in report["rows"]:
        if "cost" not in row:  # a baseline without a model
            metrics = " | ".join(f"{row['test'][k]:.4f}" for k in HEADLINE)
            lines.append(f"| {row_label(row)} | {metrics} | | | | | | |")
            continue
        c = row["cost"]
        lines.append(
            f"| {row_label(row)} | "
            + " | ".join(f"{row['test'][k]:.4f}" for k in HEADLINE)
            + f" | {row['best_epoch']} | {row['seconds_per_epoch']:.1f} | {c['total_params']:,} | "
            f"{c['active_params_per_token']:,.0f} | {c['ffn_flops_per_request'] / 1e6:.2f} | "
            f"{c['flops_per_request'] / 1e6:.2f} |"
        )
    for label, ndcg, hr in PUBLISHED.get(report["dataset"], []):
        lines.append(f"| *{label}* | | | {hr:.3f} | {ndcg:.3f} | | | | | | | | | |")
    return [*lines, "", *_comparison(report["rows"], report["config"]["train"]["epochs"]), ""]


def _comparison(rows: list[dict[str, Any]], max_epochs: int) -> list[str]:
    """The claims the MoE design makes, checked against this run's own rows; in a seed sweep,
    the spread over seeds."""
    if any("seed" in row for row in rows):
        return _seed_spread(rows)
    by_name = {row["variant"]: row for row in rows}
    notes = []
    moe = by_name.get("moe")
    for name in ("dense-active", "dense-params"):
        other = by_name.get(name)
        if moe is None or other is None:
            continue
        ndcg, flops = _versus(moe, other)
        notes.append(
            f"- moe vs {name}: test NDCG@10 {ndcg:+.1%}, FFN FLOPs per request {flops:.0%} "
            f"of the {name} model's."
        )
    for row in rows:
        if "top_p" in row:
            notes.append(
                f"- {row_label(row)}: {row['routing']['experts_per_token']:.2f} routed experts "
                "per token on the test set (the cost columns count the most it may use, "
                "moe_max_k)."
            )
    capped = [row_label(r) for r in rows if r.get("epochs_run") == max_epochs]
    if capped:
        notes.append(
            f"- Stopped by the {max_epochs}-epoch cap before early stopping triggered: "
            f"{', '.join(capped)}."
        )
    return notes


def _search_section(
    report: dict[str, Any], plain: dict[str, Any] | None, retired: str = ""
) -> list[str]:
    """A hyper-parameter search: each try against the frozen config's own run (from the
    variants comparison, when it has the same settings), judged on validation NDCG@10."""
    rows = [row for row in report["rows"] if "overrides" in row]
    if plain is not None and settings(plain["config"]) == settings(report["config"]):
        variants = dict.fromkeys(row["variant"] for row in rows)
        rows = [
            {"machine": plain["machine"], **row, "overrides": {}}
            for row in plain["rows"]
            if row["variant"] in variants and "cost" in row
        ] + rows
    commands = [report["command"]] + [
        command
        for command in dict.fromkeys(row["command"] for row in rows if "command" in row)
        if command != report["command"]
    ]
    lines = [
        f"## {report['dataset']} (`{report['source']}`){_setting_title(report)}: "
        f"hyper-parameter search{retired}",
        "",
        "Each row changes the frozen config as shown (no change: this data set's variants "
        "comparison, same seed and epoch cap). Judge on validation NDCG@10; the test columns "
        "are shown, not used to choose. Seconds per epoch depend on the threads and on what "
        "else ran, so they compare only rows made side by side. Measured "
        f"{report['measured_at']} on {_machine_words(report['machine'])}: "
        + "; ".join(f"`{command}`" for command in commands),
        *_other_machines(report, rows),
        *_drift_note(report, "Each try changed the config as it was then."),
        "",
        "| variant | change | valid NDCG@10 | valid HR@10 | test NDCG@10 | test HR@10 | "
        "best epoch | s/epoch | FFN MFLOPs/request |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    unchanged = "none (the frozen config then)" if _changed_since(report, {}) else ""
    for row in rows:
        change = format_changes(row["overrides"], code=True)
        if change and is_frozen_now(report, row["overrides"]):
            change += " (the frozen config now)"
        lines.append(
            f"| {row['variant']} | {change or unchanged or 'none (frozen config)'} | "
            f"{row['valid']['ndcg@10']:.4f} | {row['valid']['hr@10']:.4f} | "
            f"{row['test']['ndcg@10']:.4f} | {row['test']['hr@10']:.4f} | "
            f"{row['best_epoch']} | {row['seconds_per_epoch']:.1f} | "
            f"{row['cost']['ffn_flops_per_request'] / 1e6:.2f} |"
        )
    done = {_same_changes(row["overrides"]) for row in rows}
    unfinished = [
        change
        for command in commands
        for change in re.findall(r"--try[ =](\S+)", command)
        if _same_changes(_overrides(change)) not in done
    ]
    notes = (
        [f"- Stopped before they finished, so not in the table: {', '.join(unfinished)}."]
        if unfinished
        else []
    )
    for variant in dict.fromkeys(row["variant"] for row in rows):
        runs = [row for row in rows if row["variant"] == variant]
        best = max(runs, key=lambda row: row["valid"]["ndcg@10"])
        change = format_changes(best["overrides"])
        if len(runs) > 1:
            notes.append(
                f"- {variant}: the best validation NDCG@10 is "
                f"{change or 'the frozen config'} ({best['valid']['ndcg@10']:.4f})."
            )
        else:  # one try alone is the best of nothing
            notes.append(
                f"- {variant}: one try; the config it changes has no {variant} run of its own "
                "with these settings to judge it against."
            )
    return [*lines, "", *notes, ""]


def _with_variants_run(sweep: dict[str, Any], reports: list[dict[str, Any]]) -> dict[str, Any]:
    """A seed sweep plus the same data set's variants run (same features) as one more seed,
    when that seed is not in the sweep: the spread then covers every seed measured."""
    variants = dict.fromkeys(row["variant"] for row in sweep["rows"] if "seed" in row)
    extra = [
        row
        for variant in variants
        for row in seed_runs(reports, sweep, variant)
        if row.get("from_variants_run")
    ]
    return {**sweep, "rows": [*sweep["rows"], *extra]} if extra else sweep


def _setting_title(report: dict[str, Any]) -> str:
    """What the run adds to the data set's plain config, for a section heading."""
    mode = feature_mode(report)  # what keeps reports apart also names them
    return (" with item attributes" if not mode.startswith("none") else "") + (
        " with time context" if mode.endswith("+time") else ""
    )


def _sweep_title(rows: list[dict[str, Any]]) -> str:
    if any("top_p" in row for row in rows):
        return ": top-p routing sweep"
    if any("seed" in row for row in rows):
        return ": seed sweep"
    return ""


def _seed_spread(rows: list[dict[str, Any]]) -> list[str]:
    notes = []
    for variant in dict.fromkeys(row["variant"] for row in rows if "seed" in row):
        runs = [row for row in rows if row.get("seed") is not None and row["variant"] == variant]
        seeds = ", ".join(str(row["seed"]) for row in runs)
        parts = []
        for metric in ("ndcg@10", "hr@10"):
            values = [row["test"][metric] for row in runs]
            parts.append(
                f"{metric.upper()} mean {sum(values) / len(values):.4f} "
                f"(min {min(values):.4f}, max {max(values):.4f}, "
                f"spread {max(values) - min(values):.4f})"
            )
        notes.append(f"- {variant} over seeds {seeds}: test " + "; ".join(parts) + ".")
    return notes


if __name__ == "__main__":
    raise SystemExit(main())
