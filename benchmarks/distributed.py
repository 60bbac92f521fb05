"""Training throughput with 1, 2, … data-parallel processes (torchrun, DDP) on one machine.

Each process count runs the real command, ``torchrun --standalone --nproc_per_node N -m moerec
train``, on the same data, config, seed and global batch, so every run takes the same optimiser
steps. Throughput = training sequences per epoch / seconds per epoch, where the seconds are the
run log's ``train_seconds`` (the epochs' own time: no start-up, validation or saving), first
epoch left out as warm-up. With one process torch uses every core; with N, torchrun gives each
process one thread (OMP_NUM_THREADS=1), so the comparison shares the same cores either way.
Writes benchmarks/results/distributed.json.

    python benchmarks/distributed.py --data DATA/ml-100k/u.data \\
        --config configs/quality-ml-100k.yaml --processes 1,2 --epochs 5
    python benchmarks/distributed.py --tiny --output distributed-tiny.json   # seconds; CI

Run it with nothing else on the machine: the figures are wall-clock times.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from machine import machine_info
from moerec.config import load_config, parse_overrides
from moerec.data.dataset import load_dataset
from moerec.data.synthetic import generate_interactions, write_csv
from moerec.training.trainer import trainable_users
from recording import command_line

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = [
    "model.max_len=20",
    "model.hidden_size=32",
    "model.ffn_hidden_size=32",
    "model.moe_num_experts=4",
    "train.batch_size=64",
]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = args.data or synthetic_data(work, args.tiny)
        overrides = (TINY_MODEL if args.tiny else []) + args.overrides
        config = load_config(args.config, parse_overrides(overrides))
        sequences = int(trainable_users(load_dataset(data, config.data).split.train).size)
        rows = []
        for processes in args.processes:
            print(f"[distributed] {processes} process(es)", file=sys.stderr)
            rows.append(run(args, data, overrides, processes, work / f"p{processes}", sequences))
    base = rows[0]["sequences_per_s"]
    report = {
        "command": command_line(
            "distributed.py", argv if argv is not None else sys.argv[1:], args.data
        ),
        "machine": machine_info(),
        "measured_at": time.strftime("%Y-%m-%d"),
        "data": data.name if args.data else "synthetic",
        "global_batch_size": config.train.batch_size,
        "sequences_per_epoch": sequences,
        "rows": [{**row, "speedup": row["sequences_per_s"] / base} for row in rows],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output}", file=sys.stderr)
    for row in report["rows"]:
        print(
            f"{row['processes']} process(es) x {row['threads_per_process']} thread(s): "
            f"{row['sequences_per_s']:.1f} sequences/s ({row['speedup']:.2f}x), "
            f"final loss {row['final_loss']:.4f}, wall {row['wall_seconds']:.1f}s",
            file=sys.stderr,
        )
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, help="Interactions file (default: synthetic data).")
    p.add_argument("--config", type=Path, help="Experiment config YAML (default: the defaults).")
    p.add_argument(
        "--processes",
        type=lambda s: [int(n) for n in s.split(",")],
        default=[1, 2],
        help="Process counts to compare, e.g. 1,2 (the first is the baseline).",
    )
    p.add_argument("--epochs", type=int, default=5, help="Epochs per run (the first is warm-up).")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="key=value")
    p.add_argument(
        "--output", type=Path, default=REPO / "benchmarks" / "results" / "distributed.json"
    )
    p.add_argument("--tiny", action="store_true", help="Small synthetic data, tiny model.")
    args = p.parse_args(argv)
    if args.tiny:
        args.epochs = 2
    return args


def synthetic_data(work: Path, tiny: bool) -> Path:
    users, items = (300, 120) if tiny else (5000, 2000)
    path = work / "interactions.csv"
    write_csv(generate_interactions(users, items, seed=0), path)
    return path


def run(
    args: argparse.Namespace,
    data: Path,
    overrides: list[str],
    processes: int,
    work: Path,
    sequences: int,
) -> dict[str, Any]:
    """One ``torchrun … moerec train`` run; its throughput from the run log."""
    settings = [
        *overrides,
        f"train.epochs={args.epochs}",
        f"train.patience={args.epochs + 1}",  # no early stop: every run trains every epoch
        f"train.eval_every={args.epochs}",  # validate once, at the end
    ]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc_per_node", str(processes), "-m", "moerec", "train", "--data", str(data),
        "--registry", str(work / "models"), "--run-dir", str(work / "run"), "--quiet",
    ]  # fmt: skip
    if args.config:
        command += ["--config", str(args.config)]
    for pair in settings:
        command += ["--set", pair]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"torchrun with {processes} process(es) failed")
    records = [json.loads(line) for line in (work / "run" / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["event"] == "epoch"]
    cumulative = [0.0] + [r["train_seconds"] for r in epochs]
    seconds = [b - a for a, b in itertools.pairwise(cumulative)]
    timed = seconds[1:] or seconds  # first epoch: warm-up
    threads = os.environ.get("OMP_NUM_THREADS") or (
        "1" if processes > 1 else str(torch.get_num_threads())
    )
    return {
        "processes": processes,
        "threads_per_process": int(threads),
        "epoch_seconds": [round(s, 3) for s in seconds],
        "sequences_per_s": sequences / statistics.median(timed),
        "final_loss": epochs[-1]["loss"],
        "wall_seconds": round(wall, 2),
    }


if __name__ == "__main__":
    raise SystemExit(main())
