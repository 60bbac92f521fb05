"""One trained MoE, several routings at inference: quality against cost, without retraining.

The router scores every expert, so the same weights can serve with fewer experts per token
(top-1), more (top-3, top-4) or a number that follows the router's confidence (top-p with
1..4 experts). For each routing this measures, on the same model and the same data:

- full-ranking NDCG@10 / HR@10 on validation and test (history excluded, as everywhere);
- routed experts per token (over the test users' tokens) and the feed-forward FLOPs of one
  request (the FLOP counter of ``moerec evaluate``);
- the latency of one user's top-10 request through ``Predictor.recommend`` (p50/p95/p99, one
  torch thread, the routings interleaved in rounds so that drift in the machine's speed is
  shared by all of them).

Choose a routing on validation; test is shown for the record. Writes
benchmarks/results/routing-<name>.json and, with --docs, the "Routing at inference" section of
docs/benchmarks.md (between its own markers, so the rest of the file is left as it is), drawn
from every routing-*.json present.

    moerec train --data DATA/amazon-beauty/Beauty.txt -c configs/quality-beauty.yaml \\
        --set train.num_threads=1 --name beauty
    python benchmarks/routing.py --model models/beauty --data DATA/amazon-beauty/Beauty.txt \\
        --docs docs/benchmarks.md
    python benchmarks/routing.py --render-only --docs docs/benchmarks.md
    python benchmarks/routing.py --tiny --output-dir OUT     # seconds; what CI runs

Run it with nothing else on the machine: the latencies are wall-clock times.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import docs_section
from machine import machine_info
from moerec import MoerecError
from moerec.config import (
    INFERENCE_ROUTING_FIELDS,
    load_config,
    parse_overrides,
    routing_changes,
)
from moerec.data.dataset import Dataset, dataset_from_interactions
from moerec.data.synthetic import generate_interactions
from moerec.evaluation import evaluate
from moerec.evaluation.cost import measure_cost
from moerec.inference import Predictor
from moerec.registry import Artefact, load_artefact, save_artefact
from recording import command_line, percentiles

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DOCS_BEGIN = "<!-- routing:begin (written by benchmarks/routing.py --docs; do not edit) -->"
DOCS_END = "<!-- routing:end -->"
# Absolute routings (every routing field given), so each row is what its label says whatever
# the model was trained with.
DEFAULT_ROUTINGS = (
    "model.moe_router=topk,model.moe_top_k=1,model.moe_capacity_factor_eval=0",
    "model.moe_router=topk,model.moe_top_k=2,model.moe_capacity_factor_eval=0",
    "model.moe_router=topk,model.moe_top_k=3,model.moe_capacity_factor_eval=0",
    "model.moe_router=topk,model.moe_top_k=4,model.moe_capacity_factor_eval=0",
    "model.moe_router=topp,model.moe_top_p=0.5,model.moe_min_k=1,model.moe_max_k=4,"
    "model.moe_capacity_factor_eval=0",
    "model.moe_router=topp,model.moe_top_p=0.7,model.moe_min_k=1,model.moe_max_k=4,"
    "model.moe_capacity_factor_eval=0",
    "model.moe_router=topp,model.moe_top_p=0.9,model.moe_min_k=1,model.moe_max_k=4,"
    "model.moe_capacity_factor_eval=0",
    # Capacity at inference: each expert takes at most cf * slots / E of an evaluation batch's
    # slots, the rest pass through the residual (a single request never reaches it).
    "model.moe_router=topk,model.moe_top_k=2,model.moe_capacity_factor_eval=1.0",
    "model.moe_router=topk,model.moe_top_k=2,model.moe_capacity_factor_eval=1.25",
)
ROUNDS = 5  # latency rounds; every routing is timed once per round


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        write_docs(args.docs, args.output_dir)
        return 0
    try:
        report = run(args, argv if argv is not None else sys.argv[1:])
    except MoerecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = args.output_dir / f"routing-{report['name']}.json"
    args.output_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(_json(report), encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)
    if args.docs is not None:
        write_docs(args.docs, args.output_dir)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, help="A trained MoE: artefact version or model folder.")
    p.add_argument("--data", type=Path, help="The interactions the model was trained on.")
    p.add_argument("--format", default="auto", help="Reader of --data (as moerec's --format).")
    p.add_argument("--name", help="Results name (default: the data file's stem, lower case).")
    p.add_argument(
        "--routing",
        dest="routings",
        action="append",
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="A routing to measure (repeatable), in `moerec evaluate --set` keys, e.g. "
        "model.moe_router=topk,model.moe_top_k=3; unset keys keep the trained model's value. "
        "Default: top-1..4 and top-p 0.5/0.7/0.9 over 1..4 experts.",
    )
    p.add_argument("--requests", type=int, default=500, help="Timed requests per routing.")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the service uses 1).")
    p.add_argument("--output-dir", type=Path, default=RESULTS)
    p.add_argument("--docs", type=Path, help="Markdown file whose routing section to rewrite.")
    p.add_argument("--render-only", action="store_true", help="Only rewrite --docs.")
    p.add_argument("--tiny", action="store_true", help="Train a tiny model on synthetic data.")
    args = p.parse_args(argv)
    if args.render_only:
        if args.docs is None:
            p.error("--render-only needs --docs FILE")
    elif args.tiny:
        if args.model or args.data:
            p.error("--tiny trains its own model on synthetic data; leave out --model and --data")
        if args.docs is not None:
            p.error("--tiny figures do not belong in the docs; leave out --docs")
        args.requests = min(args.requests, 20)
    elif not (args.model and args.data):
        p.error("give --model and --data (or --tiny, or --render-only)")
    if args.requests < 1:
        p.error("--requests must be at least 1")
    return args


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            artefact, dataset = tiny_model(Path(tmp))
            name = args.name or "tiny"
        else:
            artefact = load_artefact(args.model)
            dataset = artefact.load_data(args.data, None if args.format == "auto" else args.format)
            name = args.name or args.data.stem.lower()
        if not artefact.config.model.is_moe:
            raise MoerecError(f"{artefact.path} is a dense model: it has no routing to change")
        routings = [absolute_routing(artefact, r) for r in (args.routings or DEFAULT_ROUTINGS)]
        if not args.routings:  # the defaults that this model's expert count allows
            experts = artefact.config.model.moe_num_experts
            routings = [r for r in routings if max(r["moe_top_k"], r["moe_max_k"]) <= experts]
        rows = [measure_quality(artefact, dataset, changes) for changes in routings]
        latencies = time_requests(artefact, dataset, routings, args.requests)
    for row, times in zip(rows, latencies, strict=True):
        row["latency_ms"] = percentiles(times)
    trained = artefact.config.model
    return {
        "command": command_line("routing.py", argv, args.data),
        "measured_at": time.strftime("%Y-%m-%d"),
        "machine": machine_info(),
        "name": name,
        "model": {
            "variant": artefact.config.variant,
            "feed_forward": trained.feed_forward,
            "version": artefact.version,
            "best_epoch": artefact.manifest.get("metrics", {}).get("best_epoch"),
            "data": Path(dataset.source).name,
        },
        "threads": args.threads,
        # what else ran: the latencies are wall-clock times
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "requests_per_routing": args.requests,
        "rows": rows,
    }


def tiny_model(root: Path) -> tuple[Artefact, Dataset]:
    from moerec.training import train

    dataset = dataset_from_interactions(generate_interactions(300, 100, seed=0))
    overrides = {
        "model.max_len": 20, "model.hidden_size": 32, "model.ffn_hidden_size": 32,
        "model.moe_num_experts": 4, "train.epochs": 2, "train.batch_size": 64,
    }  # fmt: skip
    config = load_config(None, overrides)
    trained = train(dataset, config, progress=False)
    path = save_artefact(
        root, "tiny", trained.model, trained.config, dataset.vocab, trained.metrics(),
        dataset.fingerprint,
    )  # fmt: skip
    return load_artefact(path), dataset


def absolute_routing(artefact: Artefact, pairs: str) -> dict[str, Any]:
    """``model.moe_top_k=3,...`` -> every routing field, the unset ones as trained."""
    trained = artefact.config.model
    changes = {field: getattr(trained, field) for field in INFERENCE_ROUTING_FIELDS}
    overrides = parse_overrides(pairs.split(","), "--routing")
    return {**changes, **routing_changes(overrides, "--routing")}


def measure_quality(
    artefact: Artefact, dataset: Dataset, changes: dict[str, Any]
) -> dict[str, Any]:
    model = artefact.model.eval()
    try:
        config = model.reroute(changes)
    except ValueError as exc:
        raise MoerecError(f"--routing: {exc}") from None
    label = config.feed_forward
    if config.moe_capacity_factor_eval > 0:
        label += f", capacity {config.moe_capacity_factor_eval:g}"
    print(f"[routing] {label}", file=sys.stderr)
    settings = artefact.config.eval
    valid = evaluate(model, dataset.split.valid, settings)
    test = evaluate(model, dataset.split.test, settings)
    cost = measure_cost(model)
    trained = artefact.config.model
    layers = test.routing.to_dict()["layers"]
    return {
        "label": label,
        "feed_forward": config.feed_forward,
        "trained": all(getattr(trained, f) == v for f, v in changes.items()),
        "routing": {f"model.{f}": v for f, v in changes.items()},
        "valid": _metrics(valid.metrics),
        "test": _metrics(test.metrics),
        "experts_per_token": test.routing.to_dict()["experts_per_token"],
        "dropped_fraction": sum(layer["dropped_fraction"] for layer in layers) / len(layers),
        "ffn_flops_per_request": cost.ffn_flops_per_request,
        "flops_per_request": cost.flops_per_request,
    }


def _metrics(metrics: dict[str, float]) -> dict[str, float]:
    return {key: metrics[key] for key in ("ndcg@10", "hr@10", "mrr@10")}


def time_requests(
    artefact: Artefact, dataset: Dataset, routings: list[dict[str, Any]], requests: int
) -> list[list[float]]:
    """Milliseconds per single-user top-10 request, per routing, interleaved in rounds."""
    predictor = Predictor(artefact)
    histories = [h for h in (dataset.sequences[u] for u in range(len(dataset.sequences))) if len(h)]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(histories))
    times: list[list[float]] = [[] for _ in routings]
    per_round = -(-requests // ROUNDS)
    with torch.no_grad():
        for round_ in range(ROUNDS):
            for i, changes in enumerate(routings):
                predictor.model.reroute(changes)
                for j in range(10):  # warm-up after the switch
                    predictor.recommend([histories[order[j % len(order)]]], k=10)
                for j in range(per_round):
                    if len(times[i]) == requests:
                        break
                    history = histories[order[(round_ * per_round + j) % len(order)]]
                    started = time.perf_counter()
                    predictor.recommend([history], k=10)
                    times[i].append((time.perf_counter() - started) * 1000)
    return times


def _json(report: dict[str, Any]) -> str:
    import json

    return json.dumps(report, indent=2) + "\n"


# ------------------------------------------------------------------------------------ docs


def write_docs(path: Path, results_dir: Path) -> None:
    """Rewrite the routing section of ``path`` from every routing-*.json in ``results_dir``."""
    import json

    reports = [
        json.loads(p.read_text(encoding="utf-8"))
        for p in sorted(results_dir.glob("routing-*.json"))
    ]
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    section = render_section(reports)
    path.write_text(
        docs_section.splice_section(text, section, DOCS_BEGIN, DOCS_END, _after_quality),
        encoding="utf-8",
    )


def _after_quality(text: str, block: str) -> str:
    """A new section goes right after the quality section (appended when there is none)."""
    marker = "<!-- quality:end -->\n"
    at = text.find(marker)
    if at == -1:
        return (text.rstrip("\n") + "\n\n" if text.strip() else "") + block
    at += len(marker)
    return text[:at] + "\n" + block + text[at:]


def render_section(reports: list[dict[str, Any]]) -> str:
    lines = [
        "## Routing at inference",
        "",
        "One trained MoE served with other routings, the weights unchanged (`moerec evaluate "
        "--set model.moe_top_k=…` does the same for one routing). Experts per token are routed "
        "experts over the test users' tokens, slots dropped the share of them over an "
        "expert's capacity (evaluation batches; a lone request never reaches it); FLOPs are "
        "one request's feed-forward FLOPs; "
        "latency is one user's top-10 request, one torch thread, the routings interleaved. "
        "Choose on validation.",
    ]
    if not reports:
        lines += ["", "No results yet: run the command in `benchmarks/routing.py`'s docstring."]
    for report in reports:
        lines += ["", *render_report(report)]
    lines += [
        "",
        "`python benchmarks/routing.py --render-only --docs docs/benchmarks.md` rewrites this "
        "section from the results files.",
    ]
    return "\n".join(lines)


def _load(report: dict[str, Any]) -> str:
    """The 1-minute load average before and after the run: above ~0 something else ran."""
    load = report.get("load_average")
    if not load:
        return "not recorded"
    return f"{load['before'][0]:.1f} before, {load['after'][0]:.1f} after"


def render_report(report: dict[str, Any]) -> list[str]:
    model, m = report["model"], report["machine"]
    rows = report["rows"]
    base = next((r for r in rows if r["trained"]), rows[0])
    lines = [
        f"### {model['data']}: {model['variant']} {model['feed_forward']} as trained",
        "",
        f"`{report['command']}` ({report['measured_at']}, {m['cpu_model']}, {m['cpus']} CPUs, "
        f"{report['threads']} thread; {report['requests_per_routing']} requests per routing; "
        f"load average {_load(report)})",
        "",
        "| routing | experts per token | slots dropped | FFN MFLOPs per request "
        "| request p50 / p95 ms | valid NDCG@10 | test NDCG@10 | test HR@10 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        label = r["label"] + (" (as trained)" if r["trained"] else "")
        change = (r["valid"]["ndcg@10"] / base["valid"]["ndcg@10"] - 1) * 100
        delta = "" if r is base else f" ({change:+.1f}%)"
        lat = r["latency_ms"]
        dropped = f"{r['dropped_fraction']:.1%}" if r.get("dropped_fraction") else "—"
        lines.append(
            f"| {label} | {r['experts_per_token']:.2f} | {dropped} "
            f"| {r['ffn_flops_per_request'] / 1e6:.2f} "
            f"| {lat['p50']:.2f} / {lat['p95']:.2f} | {r['valid']['ndcg@10']:.4f}{delta} "
            f"| {r['test']['ndcg@10']:.4f} | {r['test']['hr@10']:.4f} |"
        )
    best = max(rows, key=lambda r: r["valid"]["ndcg@10"])
    lines += [
        "",
        f"Best on validation: {best['label']} ({best['valid']['ndcg@10']:.4f}, "
        f"{best['experts_per_token']:.2f} experts per token).",
    ]
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
