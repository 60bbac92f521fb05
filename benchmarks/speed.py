"""Training-step time, inference latency and peak memory of moe, dense-active and dense-params.

Each (variant, allocator) pair runs in its own process, so peak memory and allocator are its
own. Training: median seconds per step over real batches of the data set. Inference: latency of
one user's top-10 request (Predictor.recommend, last position only), p50/p95/p99 over many
requests, throughput of batched scoring, and latency/throughput with 32 concurrent clients
through the MicroBatcher. For the MoE also one MoE layer alone on 1-64 tokens, through the
sorted and the gathered dispatch. Writes benchmarks/results/speed.json.

    python benchmarks/speed.py --data DATA/amazon-beauty/Beauty.txt \\
        --config configs/quality-beauty.yaml
    python benchmarks/speed.py --tiny --output speed-tiny.json     # seconds; what CI runs

Run it with nothing else on the machine: the figures are wall-clock times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from machine import machine_info
from moerec.config import VARIANTS, load_config, resolve_variant
from moerec.data.dataset import dataset_from_interactions, load_dataset
from moerec.data.synthetic import generate_interactions
from moerec.evaluation.cost import measure_cost
from moerec.inference import MicroBatcher, Predictor
from moerec.model import SequentialRecommender
from moerec.model.moe import MoEFeedForward
from moerec.registry import load_artefact, save_artefact
from moerec.runtime import active_allocator, jemalloc_environment, jemalloc_library
from moerec.training import train_step
from moerec.training.optim import build_optimizer, build_scheduler
from moerec.training.trainer import trainable_users, training_batches
from recording import command_line, percentiles

REPO = Path(__file__).resolve().parents[1]
DISPATCH_TOKENS = (1, 2, 4, 8, 16, 24, 32, 48, 64)  # tokens through one MoE layer


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args)))
        return 0
    rows = []
    for allocator in args.allocators.split(","):
        for variant in args.variants.split(","):
            print(f"[speed] {variant} with the {allocator} allocator", file=sys.stderr)
            rows.append(run_worker(args, variant, allocator))
    report = {
        "command": command_line("speed.py", argv or sys.argv[1:], args.data),
        "machine": machine_info(),
        "measured_at": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output}", file=sys.stderr)
    for row in rows:
        print(
            f"{row['variant']:>13} {row['allocator']:>8}  step {row['train_step_s_median']:.3f}s  "
            f"p50 {row['latency_ms']['p50']:.2f}ms p99 {row['latency_ms']['p99']:.2f}ms  "
            f"peak {row['peak_rss_mb']:.0f} MB",
            file=sys.stderr,
        )
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, help="Interactions file (default: synthetic data).")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "quality-beauty.yaml")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--allocators", default="jemalloc,system", help="jemalloc and/or system.")
    p.add_argument("--steps", type=int, default=30, help="Timed training steps.")
    p.add_argument("--requests", type=int, default=300, help="Timed single-user requests.")
    p.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "speed.json")
    p.add_argument("--tiny", action="store_true", help="Small synthetic data, few steps.")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # "variant" inside a child process
    args = p.parse_args(argv)
    if args.tiny:
        args.steps, args.requests = 3, 20
    return args


def run_worker(args: argparse.Namespace, variant: str, allocator: str) -> dict[str, Any]:
    """Measure in a fresh process: allocator, peak memory and caches are its own."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MOEREC_JEMALLOC")}
    command = [sys.executable, __file__, "--worker", variant, "--config", str(args.config)]
    command += ["--steps", str(args.steps), "--requests", str(args.requests)]
    if args.data:
        command += ["--data", str(args.data)]
    if args.tiny:
        command += ["--tiny"]
    if allocator == "jemalloc":
        env = jemalloc_environment(env, jemalloc_library()) or env
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["requested_allocator"] = allocator
    return row


def measure(args: argparse.Namespace) -> dict[str, Any]:
    variant = args.worker
    overrides = {"model.max_len": 20} if args.tiny else {}
    config = resolve_variant(load_config(args.config, overrides), variant)
    if args.data:
        dataset = load_dataset(args.data, config.data)
    else:
        users, items = (200, 100) if args.tiny else (5000, 2000)
        dataset = dataset_from_interactions(generate_interactions(users, items, seed=0))
    config = config.with_num_items(dataset.num_items)
    torch.manual_seed(0)
    model = SequentialRecommender(config.model)
    step_times = time_training(model, dataset, config, args.steps)
    latencies, throughput, batched = time_inference(model, dataset, config, args.requests)
    dispatch = time_dispatch(model, 20 if args.tiny else 300) if config.model.is_moe else None
    return {
        "variant": variant,
        "allocator": active_allocator(),
        "data": Path(dataset.source).name,
        "train_batch_size": config.train.batch_size,
        "train_step_s_median": statistics.median(step_times),
        "train_step_s_all": [round(t, 4) for t in step_times],
        "latency_ms": percentiles(latencies),
        "batch_scoring_users_per_s": throughput,
        "micro_batched": batched,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cost": measure_cost(model).to_dict(),
        **({"moe_layer_us": dispatch} if dispatch else {}),
    }


def time_training(
    model: SequentialRecommender, dataset: Any, config: Any, steps: int
) -> list[float]:
    """The trainer's own step (loss, backward, clipping, AdamW, schedule) on real batches."""
    optimizer = build_optimizer(model, config.train)
    scheduler = build_scheduler(optimizer, config.train, steps + 2)
    users = trainable_users(dataset.split.train)
    batches = training_batches(
        dataset.split.train, users, config.model.max_len, config.train.batch_size,
        np.random.default_rng(0),
    )  # fmt: skip
    model.train()
    times = []
    for i in range(steps + 2):  # two warm-up steps
        try:
            inputs, targets = next(batches)
        except StopIteration:
            batches = training_batches(
                dataset.split.train, users, config.model.max_len, config.train.batch_size,
                np.random.default_rng(i),
            )  # fmt: skip
            inputs, targets = next(batches)
        started = time.perf_counter()
        train_step(model, optimizer, scheduler, inputs, targets, config.train)
        if i >= 2:
            times.append(time.perf_counter() - started)
    return times


def time_inference(
    model: SequentialRecommender, dataset: Any, config: Any, requests: int
) -> tuple[list[float], float]:
    """Single-user request latency through a saved-and-loaded Predictor, and batch throughput."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = save_artefact(tmp, "speed", model, config, dataset.vocab, {}, dataset.fingerprint)
        predictor = Predictor(load_artefact(path))
    histories = [dataset.sequences[u] for u in range(len(dataset.sequences))]
    histories = [h for h in histories if len(h)]
    latencies = []
    for i in range(requests + 10):
        history = histories[i % len(histories)]
        started = time.perf_counter()
        predictor.recommend([history], k=10)
        if i >= 10:
            latencies.append((time.perf_counter() - started) * 1000)
    batch = histories[:256]
    started = time.perf_counter()
    predictor.recommend(batch, k=10)
    throughput = len(batch) / (time.perf_counter() - started)
    return latencies, throughput, asyncio.run(time_micro_batched(predictor, histories, requests))


def time_dispatch(model: SequentialRecommender, calls: int) -> list[dict[str, Any]]:
    """Median microseconds per call of the first MoE layer at inference on N random tokens,
    through the sorted dispatch and through the gathered one: where one overtakes the other
    is what ``GATHER_BUDGET`` should allow. An untrained router spreads the tokens over as
    many experts as it can, the sorted path's worst case."""
    layer = next(m for m in model.modules() if isinstance(m, MoEFeedForward)).eval()
    default = layer.gather_max_slots
    rows = []
    with torch.no_grad():
        for tokens in DISPATCH_TOKENS:
            x = torch.randn(tokens, model.config.hidden_size)
            row: dict[str, Any] = {"tokens": tokens, "slots": tokens * layer.router.slots}
            for path, limit in (("sorted", 0), ("gathered", row["slots"])):
                layer.gather_max_slots = limit
                for _ in range(10):
                    layer(x)
                times = []
                for _ in range(calls):
                    started = time.perf_counter()
                    layer(x)
                    times.append(time.perf_counter() - started)
                row[path] = statistics.median(times) * 1e6
            rows.append(row)
    layer.gather_max_slots = default
    return rows


async def time_micro_batched(
    predictor: Predictor, histories: list[Any], requests: int, concurrency: int = 32
) -> dict[str, Any]:
    """``concurrency`` clients each sending requests back to back through the MicroBatcher."""
    latencies: list[float] = []
    sizes: list[int] = []

    async def client(offset: int, batcher: MicroBatcher) -> None:
        for i in range(offset, requests, concurrency):
            started = time.perf_counter()
            await batcher.recommend(histories[i % len(histories)], k=10)
            latencies.append((time.perf_counter() - started) * 1000)

    async with MicroBatcher(predictor, max_batch_size=32, max_wait_ms=2.0,
                            on_batch=lambda r: sizes.append(r.size)) as batcher:  # fmt: skip
        started = time.perf_counter()
        await asyncio.gather(*(client(c, batcher) for c in range(concurrency)))
        seconds = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "latency_ms": percentiles(latencies),
        "requests_per_s": len(latencies) / seconds,
        "mean_batch_size": sum(sizes) / max(len(sizes), 1),
    }


if __name__ == "__main__":
    raise SystemExit(main())
