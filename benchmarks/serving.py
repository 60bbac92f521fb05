"""Load test of `moerec serve` over loopback HTTP with wrk, next to the in-process ceiling.

One run: train a model of the data set's shape for one epoch (latency depends on the model's
shape, not on how good its weights are) or take --model; import the data set's catalogue and
histories into a fresh SQLite database; measure the in-process MicroBatcher throughput with the
same model, histories and batching settings (the ceiling, with nothing else running); start
`moerec serve` as a separate process (as in production, jemalloc re-exec included) and load it
with wrk (one thread, N keep-alive connections, closed loop) at several concurrencies:

* uncached: the cache is flushed before each run and every request asks for the next of the
  data set's users (benchmarks/wrk/users.lua); after the last user the list starts again with
  k one higher (k = 10, 11, ... 17), a new cache key, so every request is a miss: history read from
  the database, forward pass in the micro-batcher, response cached;
* cached: a few users are requested once, then only those: every request is a hit.

The hit ratio, mean micro-batch size, the model thread's busy time and the server's CPU come
from /metrics and /proc around each run. Each figure is the median of --repeats runs (the
spread is recorded). Writes benchmarks/results/serving.json and, with --docs, the "Serving
over HTTP" section of docs/benchmarks.md (between its own markers, so the rest of the file
is left as it is).

    python benchmarks/serving.py --data DATA/amazon-beauty/Beauty.txt \\
        --config configs/quality-beauty.yaml --docs docs/benchmarks.md
    python benchmarks/serving.py --render-only --docs docs/benchmarks.md
    python benchmarks/serving.py --tiny --output serving-tiny.json      # seconds; what CI runs

Needs wrk (Debian/Ubuntu: apt-get install wrk). Run it with nothing else on the machine: the
figures are wall-clock times, and the load generator shares the CPU with the server.
Exits 1 when any request failed (connection errors, timeouts or non-2xx answers), 2 when it
cannot run at all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import http.client
import itertools
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

import docs_section
from machine import machine_info
from recording import command_line

REPO = Path(__file__).resolve().parents[1]
LUA_SCRIPT = REPO / "benchmarks" / "wrk" / "users.lua"
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "serving.json"
P95_TARGET_MS = 29.0
CEILING_FRACTION = 0.6
K = 10
UNCACHED_ROUNDS = 8  # the uncached runs cycle k through K .. K + 7 (see _write_paths)
DOCS_BEGIN = "<!-- serving:begin (written by benchmarks/serving.py --docs; do not edit) -->"
DOCS_END = "<!-- serving:end -->"
# Rate limits far above anything one machine can send: the benchmark measures serving.
UNLIMITED = {
    "rate_limit_user_per_second": 1e9,
    "rate_limit_user_burst": 1_000_000_000,
    "rate_limit_client_per_second": 1e9,
    "rate_limit_client_burst": 1_000_000_000,
}
SUBJECT = "bench-backend"
TOKEN_ENV = "MOEREC_BENCH_TOKEN"  # how users.lua gets the bearer token


class BenchmarkError(RuntimeError):
    """The benchmark cannot run (no wrk, the server did not start, wrk failed)."""


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.ceiling_worker:
        print(json.dumps(ceiling_worker(args)))
        return 0
    if args.render_only:
        report = json.loads(args.output.read_text(encoding="utf-8"))
        write_docs(args.docs, report)
        print(f"wrote {args.docs}", file=sys.stderr)
        return 0
    try:
        report = run(args, argv if argv is not None else sys.argv[1:])
    except BenchmarkError as exc:
        print(f"serving benchmark: error: {exc}", file=sys.stderr)
        return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output}", file=sys.stderr)
    if args.docs is not None:
        write_docs(args.docs, report)
        print(f"wrote {args.docs}", file=sys.stderr)
    print(summary_table(report), file=sys.stderr)
    failed = total_errors(report)
    if failed:
        print(f"serving benchmark: {failed} request(s) failed; see {args.output}", file=sys.stderr)
        return 1
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, help="Interactions file (e.g. DATA/amazon-beauty/...).")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "quality-beauty.yaml")
    p.add_argument("--model", type=Path, help="Serve this artefact instead of training one.")
    p.add_argument("--concurrencies", default="1,4,16,32,64", help="wrk connections per run.")
    p.add_argument("--duration", type=int, default=10, help="Seconds per wrk run.")
    p.add_argument("--repeats", type=int, default=3, help="Runs per figure (median reported).")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (-t).")
    p.add_argument("--cached-users", type=int, default=200, help="Users of the cached runs.")
    p.add_argument("--batch-max-size", type=int, help="MOEREC_BATCH_MAX_SIZE for both sides.")
    p.add_argument("--batch-max-wait-ms", type=float, help="MOEREC_BATCH_MAX_WAIT_MS, same.")
    p.add_argument("--torch-threads", type=int, help="MOEREC_TORCH_THREADS, same.")
    p.add_argument(
        "--model-process",
        choices=("default", "true", "false"),
        default="default",
        help="MOEREC_MODEL_PROCESS for the server: forward passes in a child process.",
    )
    p.add_argument("--server-log-level", default="info", help="moerec serve --log-level.")
    p.add_argument("--redis-url", help="Serve with a Redis cache (default: in-process cache).")
    p.add_argument("--output", type=Path, help=f"JSON results (default {DEFAULT_OUTPUT}).")
    p.add_argument("--docs", type=Path, help="Markdown file whose serving section to rewrite.")
    p.add_argument("--render-only", action="store_true", help="Only rewrite --docs from --output.")
    p.add_argument("--tiny", action="store_true", help="Synthetic data, 1 s runs: a smoke run.")
    p.add_argument("--seed", type=int, default=0, help="User order and run offsets.")
    p.add_argument(
        "--max-other-cpu",
        type=float,
        default=0.25,
        help="Cores other processes may use during a run before it is measured again.",
    )
    p.add_argument("--attempts", type=int, default=3, help="Tries per run (see above).")
    p.add_argument(
        "--quiet-wait", type=float, default=300.0, help="Seconds to wait for a quiet machine."
    )
    p.add_argument("--ceiling-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--histories", type=Path, help=argparse.SUPPRESS)  # for --ceiling-worker
    args = p.parse_args(argv)
    if args.tiny:
        args.concurrencies, args.duration, args.repeats, args.cached_users = "1,8", 1, 1, 50
        args.attempts, args.quiet_wait = 1, 0.0
        if args.docs is not None and not args.render_only:
            p.error("--docs shows full runs only; leave it out with --tiny")
    if args.output is None:
        # Tiny runs never overwrite the committed results: they go next to the venv's others.
        tiny = Path(sys.prefix) / "bench-tiny" / "serving.json"
        args.output = tiny if args.tiny else DEFAULT_OUTPUT
    if args.render_only and args.docs is None:
        p.error("--render-only needs --docs FILE")
    if not (args.tiny or args.render_only or args.ceiling_worker) and args.data is None:
        p.error("--data is required (or use --tiny)")
    args.concurrency_list = [int(c) for c in str(args.concurrencies).split(",") if c]
    if not args.concurrency_list or min(args.concurrency_list) < args.wrk_threads:
        p.error("every concurrency must be at least --wrk-threads (wrk needs a connection each)")
    if args.duration < 1 or args.repeats < 1 or args.cached_users < 1:
        p.error("--duration, --repeats and --cached-users must be at least 1")
    return args


# --------------------------------------------------------------------------- the run


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise BenchmarkError("wrk is not installed (Debian/Ubuntu: apt-get install wrk)")
    moerec_command = _moerec_command()
    settings = _service_settings(args)
    load_before = os.getloadavg()
    speed_before = cpu_speed()
    with tempfile.TemporaryDirectory(prefix="moerec-serving-") as tmp_name:
        tmp = Path(tmp_name)
        dataset, config = _prepare_data(args)
        model_path, trained_epochs = _prepare_model(args, dataset, config, tmp)
        from moerec.registry import load_artefact

        artefact = load_artefact(model_path)
        users, histories = _users_and_histories(dataset, artefact, args.seed)
        uncached_paths = _write_paths(tmp / "uncached-paths.txt", users, UNCACHED_ROUNDS)
        cached_users = users[: args.cached_users]
        cached_paths = _write_paths(tmp / "cached-paths.txt", cached_users)
        database_url = f"sqlite+aiosqlite:///{tmp / 'serving.db'}"
        import_seconds = _import_data(dataset, database_url)

        _log(f"in-process ceiling at {args.concurrency_list} clients")
        ceiling_code = source_files()
        ceiling_raw = _run_ceiling_worker(args, model_path, histories, settings, tmp)

        server = Server(moerec_command, model_path, database_url, settings, args, tmp)
        server_code = source_files()  # what the server imports (it loads everything at start)
        with server:
            _log(f"server pid {server.pid} on port {server.port}")
            tokens = _tokens(settings)
            bench = HttpBench(wrk, server, tokens, args, tmp)
            bench.warm_up(uncached_paths, max(args.concurrency_list))
            uncached_raw: dict[int, list[dict[str, Any]]] = {c: [] for c in args.concurrency_list}
            cached_raw: dict[int, list[dict[str, Any]]] = {c: [] for c in args.concurrency_list}
            for repeat in range(args.repeats):
                for concurrency in args.concurrency_list:
                    _log(f"repeat {repeat + 1}/{args.repeats}: {concurrency} connections")
                    uncached_raw[concurrency].append(
                        quiet_run(lambda c=concurrency: bench.uncached(uncached_paths, c), args)
                    )
                    cached_raw[concurrency].append(
                        quiet_run(
                            lambda c=concurrency: bench.cached(cached_paths, cached_users, c), args
                        )
                    )
            memory = server.memory_mb()
            allocator = server.allocator()
            server_log_errors = server.log_errors()
        load_after = os.getloadavg()
    if ceiling_code != server_code:
        _log("WARNING: moerec's source changed between the ceiling and the server's start")

    uncached_runs = [aggregate(c, uncached_raw[c]) for c in args.concurrency_list]
    cached_runs = [aggregate(c, cached_raw[c]) for c in args.concurrency_list]
    ceiling_runs = [aggregate(c, ceiling_raw["runs"][str(c)]) for c in args.concurrency_list]
    uncached = headline(uncached_runs)
    cached = headline(cached_runs)
    ceiling_at = {run["concurrency"]: run for run in ceiling_runs}
    ceiling_rps = ceiling_at[uncached["concurrency"]]["rps"]
    ratio = uncached["rps"] / ceiling_rps if ceiling_rps else 0.0
    model_config = artefact.config.model
    return {
        "command": command_line("serving.py", argv, args.data),
        "measured_at": time.strftime("%Y-%m-%d"),
        "machine": _machine(wrk),
        "load_average": {"before": list(load_before), "after": list(load_after)},
        # The same machine type runs at different speeds from day to day (shared hosts): this
        # tells two runs' absolute figures apart; ratios within one run stay comparable.
        "cpu_speed_s": {"before": speed_before, "after": cpu_speed()},
        "code": {
            "server_source_sha256": source_digest(server_code),
            "ceiling_source_sha256": source_digest(ceiling_code),
            "same_code": server_code == ceiling_code,
            "changed_files": sorted(
                name
                for name in set(server_code) | set(ceiling_code)
                if server_code.get(name) != ceiling_code.get(name)
            ),
        },
        "data": {
            "source": Path(dataset.source).name,
            "users": dataset.num_users,
            "items": dataset.num_items,
            "interactions": dataset.num_interactions,
            "requestable_users": len(users),
            "import_seconds": round(import_seconds, 1),
        },
        "model": {
            "items": model_config.num_items,
            "layers": model_config.num_layers,
            "experts": model_config.moe_num_experts,
            "top_k": model_config.moe_top_k,
            "hidden": model_config.hidden_size,
            "ffn_hidden": model_config.ffn_hidden_size,
            "max_len": model_config.max_len,
            "variant": artefact.config.variant,
            "trained_epochs": trained_epochs,
            "note": "latency depends on the model's shape, not on its weights: "
            + (
                f"trained for {trained_epochs} epoch{'s' if trained_epochs > 1 else ''} only"
                if trained_epochs
                else "an existing artefact"
            ),
        },
        "server": {
            "command": "moerec serve --model MODEL --port PORT --database-url "
            "sqlite+aiosqlite:///TMP/serving.db"
            + (" --redis-url REDIS" if args.redis_url else "")
            + f" --log-level {args.server_log_level}",
            "database": "sqlite",
            "cache": "redis" if args.redis_url else "local",
            "batch_max_size": settings.batch_max_size,
            "batch_max_wait_ms": settings.batch_max_wait_ms,
            "torch_threads": settings.torch_threads,
            "model_process": bool(getattr(settings, "model_process", False)),
            "log_level": args.server_log_level,
            "allocator": allocator,
            "rate_limits": "raised out of the way (1e9 per second)",
            "logged_errors": server_log_errors,
        },
        "load": {
            "generator": "wrk",
            "threads": args.wrk_threads,
            "duration_s": args.duration,
            "repeats": args.repeats,
            "concurrencies": args.concurrency_list,
            "k": K,
            "cached_users": len(cached_users),
            "max_other_cpu": args.max_other_cpu,
            "attempts": args.attempts,
            "figures": "median over repeats; spread = [min, max]; errors = sum over repeats",
        },
        "uncached": uncached,
        "cached": cached,
        "ceiling": {
            "rps": ceiling_rps,
            "concurrency": uncached["concurrency"],
            "best_rps": max(run["rps"] for run in ceiling_runs),
            "allocator": ceiling_raw["allocator"],
            "what": "MicroBatcher.submit from N concurrent coroutines in one process, same "
            "model, histories and batch settings; no HTTP, database or cache",
            "runs": ceiling_runs,
        },
        "targets": {
            "uncached_p95_le_29ms": uncached["p95_ms"] <= P95_TARGET_MS,
            "uncached_rps_ge_60pct_ceiling": ratio >= CEILING_FRACTION,
            "no_errors": sum(r["errors"] for r in uncached_runs + cached_runs) == 0,
            "uncached_rps_over_ceiling": round(ratio, 3),
            "best_uncached_rps_over_best_ceiling": round(
                max(run["rps"] for run in uncached_runs) / max(run["rps"] for run in ceiling_runs),
                3,
            ),
            "p95_target_ms": P95_TARGET_MS,
            "ceiling_fraction_target": CEILING_FRACTION,
            "at_concurrency": uncached["concurrency"],
        },
        "server_peak_rss_mb": memory["peak_rss_mb"],
        "server_rss_mb_at_end": memory["rss_mb"],
        "model_process_peak_rss_mb": memory["children_peak_rss_mb"],
    }


def source_files() -> dict[str, str]:
    """The moerec package's Python files and their digests: which code the figures belong to."""
    import hashlib

    import moerec

    root = Path(moerec.__file__).parent
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*.py"))
    }


def source_digest(files: dict[str, str]) -> str:
    """One digest for all of ``files`` (from :func:`source_files`)."""
    import hashlib

    text = "".join(f"{name}\0{digest}\n" for name, digest in sorted(files.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_STARTED = time.monotonic()


def _log(message: str) -> None:
    print(f"[serving {time.monotonic() - _STARTED:5.0f}s] {message}", file=sys.stderr, flush=True)


def _moerec_command() -> list[str]:
    """The `moerec` console script next to this interpreter (else `python -m moerec`)."""
    script = Path(sys.executable).parent / "moerec"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "moerec"]


def _service_settings(args: argparse.Namespace) -> Any:
    """The settings both the server (through MOEREC_* variables) and this process use."""
    from moerec.config import load_service_settings

    return load_service_settings(
        **UNLIMITED,
        batch_max_size=args.batch_max_size,
        batch_max_wait_ms=args.batch_max_wait_ms,
        torch_threads=args.torch_threads,
        redis_url=args.redis_url,
        model_process=None if args.model_process == "default" else args.model_process == "true",
    )


def _prepare_data(args: argparse.Namespace) -> tuple[Any, Any]:
    from moerec.config import load_config
    from moerec.data.dataset import dataset_from_interactions, load_dataset
    from moerec.data.synthetic import generate_interactions

    if args.tiny:
        # One torch thread: two OpenMP threads crawl when another process holds a core.
        overrides = {
            "model.max_len": 20,
            "train.batch_size": 128,
            "train.epochs": 1,
            "train.num_threads": 1,
        }
        config = load_config(args.config, overrides)
        interactions = generate_interactions(num_users=1000, num_items=200, mean_length=15, seed=3)
        return dataset_from_interactions(interactions, config.data), config
    config = load_config(args.config, {"train.epochs": 1})
    _log(f"loading {args.data}")
    return load_dataset(args.data, config.data), config


def _prepare_model(
    args: argparse.Namespace, dataset: Any, config: Any, tmp: Path
) -> tuple[Path, int]:
    from moerec.registry import resolve_artefact, save_artefact
    from moerec.training import train

    if args.model is not None:
        return resolve_artefact(args.model), 0
    _log(f"training {config.variant} for 1 epoch (only the shape matters for latency)")
    result = train(dataset, config, progress=False)
    path = save_artefact(
        tmp / "models",
        "serving-bench",
        result.model,
        result.config,
        dataset.vocab,
        result.metrics(),
        dataset.fingerprint,
    )
    return path, result.epochs_run


def _users_and_histories(
    dataset: Any, artefact: Any, seed: int
) -> tuple[list[str], list[np.ndarray]]:
    """Requestable users (a history the model can read) in a seeded random order, with the
    encoded histories the server will read for them (the last 4 x max_len items)."""
    from moerec.serving.service import HISTORY_WINDOW_FACTOR

    window = artefact.config.model.max_len * HISTORY_WINDOW_FACTOR
    same_vocab = tuple(dataset.vocab.item_ids) == tuple(artefact.vocab.item_ids)
    users: list[str] = []
    histories: list[np.ndarray] = []
    for index, user_id in enumerate(dataset.vocab.user_ids):
        sequence = np.asarray(dataset.sequences[index][-window:], dtype=np.int64)
        if not same_vocab:
            raw = dataset.vocab.decode_items(sequence.tolist())
            known = [artefact.vocab.item_index(item) for item in raw]
            sequence = np.asarray([i for i in known if i is not None], dtype=np.int64)
        if len(sequence):
            users.append(str(user_id))
            histories.append(sequence)
    if not users:
        raise BenchmarkError("no user has a history the model knows; check --model and --data")
    order = np.random.default_rng(seed).permutation(len(users))
    return [users[i] for i in order], [histories[i] for i in order]


def _write_paths(path: Path, users: Sequence[str], rounds: int = 1) -> Path:
    """One request path per line: every user with k = K, then (rounds > 1) every user again
    with k = K + 1, ...: a fast server runs through the users in one run, and a path it has
    seen before would be a cache hit in a run meant to measure misses."""
    lines = [
        f"/v1/users/{quote(user, safe='')}/recommendations?k={K + round_}"
        for round_ in range(rounds)
        for user in users
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _import_data(dataset: Any, database_url: str) -> float:
    """The catalogue and histories into a fresh database (what `moerec db import` does)."""
    from moerec.storage import Storage
    from moerec.storage.importer import import_dataset
    from moerec.storage.migrate import upgrade

    started = time.perf_counter()
    upgrade(database_url)

    async def load() -> None:
        storage = Storage(database_url)
        try:
            await import_dataset(storage, dataset)
        finally:
            await storage.close()

    asyncio.run(load())
    seconds = time.perf_counter() - started
    _log(f"imported {dataset.num_interactions:,} events in {seconds:.1f}s")
    return seconds


def _tokens(settings: Any) -> dict[str, str]:
    from moerec.serving.auth import mint_token

    return {
        "reader": mint_token(settings, SUBJECT, ["recommend", "recommend:any"], 4 * 3600),
        "admin": mint_token(settings, f"{SUBJECT}-admin", ["admin"], 4 * 3600),
    }


def _speed_note(report: dict[str, Any]) -> str:
    speed = report.get("cpu_speed_s")
    if not speed:
        return ""
    return (
        f"; CPU speed: a 10M-step Python loop took {speed['before']:.2f} s before the run and "
        f"{speed['after']:.2f} s after"
    )


def cpu_speed() -> float:
    """Seconds for a fixed pure-Python loop (10M additions), best of three: the machine's
    single-core speed at the moment, on the scale of the interpreter work a request does."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for i in range(10_000_000):
            total += i
        best = min(best, time.perf_counter() - started)
    return round(best, 3)


def _machine(wrk: str) -> dict[str, Any]:
    version = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    return {
        **machine_info(),
        "kernel": platform.release(),
        "wrk": " ".join((version.stdout or version.stderr).split()[:2]),
    }


# --------------------------------------------------------------------------- the server


class Server:
    """`moerec serve` in its own process on a free loopback port, stopped on exit."""

    def __init__(
        self,
        command: list[str],
        model: Path,
        database_url: str,
        settings: Any,
        args: argparse.Namespace,
        tmp: Path,
    ) -> None:
        self.port = _free_port()
        self.command = [
            *command, "serve", "--model", str(model), "--port", str(self.port),
            "--database-url", database_url, "--log-level", args.server_log_level,
        ]  # fmt: skip
        if args.redis_url:
            self.command += ["--redis-url", args.redis_url]
        self.env = {**os.environ, **_settings_environment(settings)}
        self.log_path = tmp / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_timeout = 180.0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> Server:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise BenchmarkError(
                    f"the server exited with code {self.process.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _ = http_request(self.port, "GET", "/readyz", timeout=2.0)
                if status == 200:
                    return
            time.sleep(0.2)
        raise BenchmarkError(f"the server was not ready after {self.startup_timeout:.0f}s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def log_errors(self) -> int:
        """Lines the server logged at level error or worse."""
        count = 0
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            if '"level":"error"' in line or '"level":"critical"' in line:
                count += 1
        return count

    def cpu_seconds(self) -> tuple[float, float, float]:
        """CPU seconds (user + system) of the server process, of its main thread (the event
        loop), and of its child processes (the model process, when the service runs one)."""
        children = 0.0
        for pid in _descendants(self.pid):
            with contextlib.suppress(OSError, IndexError, ValueError):
                children += _proc_cpu(f"/proc/{pid}/stat")
        return (
            _proc_cpu(f"/proc/{self.pid}/stat"),
            _proc_cpu(f"/proc/{self.pid}/task/{self.pid}/stat"),
            children,
        )

    def memory_mb(self) -> dict[str, float]:
        """Peak and current RSS of the server process, and the children's peaks summed."""
        own = _proc_memory_mb(self.pid)
        children = 0.0
        for pid in _descendants(self.pid):
            with contextlib.suppress(OSError, KeyError, ValueError):
                children += _proc_memory_mb(pid)["VmHWM"]
        return {
            "peak_rss_mb": round(own["VmHWM"], 1),
            "rss_mb": round(own["VmRSS"], 1),
            "children_peak_rss_mb": round(children, 1),
        }

    def allocator(self) -> str:
        maps = Path(f"/proc/{self.pid}/maps").read_text(encoding="utf-8", errors="replace")
        return "jemalloc" if "jemalloc" in maps else "system"


def _settings_environment(settings: Any) -> dict[str, str]:
    values = {
        **UNLIMITED,
        "batch_max_size": settings.batch_max_size,
        "batch_max_wait_ms": settings.batch_max_wait_ms,
        "torch_threads": settings.torch_threads,
    }
    if hasattr(settings, "model_process"):  # services that can run the model in a child
        values["model_process"] = str(settings.model_process).lower()
    return {f"MOEREC_{name.upper()}": str(value) for name, value in values.items()}


def _proc_memory_mb(pid: int) -> dict[str, float]:
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            fields[name] = int(value.split()[0]) / 1024  # kB → MB
    return fields


def _descendants(root: int) -> list[int]:
    """Every live process below ``root`` (children, grandchildren, ...)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int((entry / "stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _proc_cpu(stat_path: str) -> float:
    """utime + stime in seconds from a /proc/.../stat file."""
    text = Path(stat_path).read_text(encoding="utf-8")
    fields = text.rsplit(")", 1)[1].split()  # fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_request(
    port: int,
    method: str,
    path: str,
    token: str | None = None,
    timeout: float = 30.0,
    connection: http.client.HTTPConnection | None = None,
) -> tuple[int, bytes]:
    conn = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        if connection is None:
            conn.close()


# --------------------------------------------------------------------------- HTTP runs


class HttpBench:
    """wrk runs against one server, with /metrics and CPU read around each run."""

    def __init__(
        self,
        wrk: str,
        server: Server,
        tokens: dict[str, str],
        args: argparse.Namespace,
        tmp: Path,
    ) -> None:
        self.wrk = wrk
        self.server = server
        self.tokens = tokens
        self.args = args
        self.rng = random.Random(args.seed)
        self.env = {**os.environ, TOKEN_ENV: tokens["reader"]}

    def flush(self) -> None:
        status, body = http_request(
            self.server.port, "POST", "/v1/admin/cache/flush", self.tokens["admin"]
        )
        if status != 200:
            raise BenchmarkError(f"cache flush answered {status}: {body[:200]!r}")

    def metrics(self) -> dict[str, float]:
        status, body = http_request(self.server.port, "GET", "/metrics")
        if status != 200:
            raise BenchmarkError(f"/metrics answered {status}")
        return parse_metrics(body.decode("utf-8"))

    def warm_up(self, paths: Path, concurrency: int) -> None:
        """One short discarded run: connection pools, page cache, allocator arenas."""
        self.flush()
        self._wrk(paths, concurrency, max(1, min(3, self.args.duration)), offset=0)

    def uncached(self, paths: Path, concurrency: int) -> dict[str, Any]:
        self.wait_idle()  # a late answer of the last run must not refill the cache
        self.flush()
        return self._measured(paths, concurrency)

    def cached(self, paths: Path, users: Sequence[str], concurrency: int) -> dict[str, Any]:
        """Flush, request each user once (misses), then measure requests for those users."""
        self.wait_idle()
        self.flush()
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        try:
            for user in users:
                path = f"/v1/users/{quote(user, safe='')}/recommendations?k={K}"
                status, body = http_request(
                    self.server.port, "GET", path, self.tokens["reader"], connection=conn
                )
                if status != 200:
                    raise BenchmarkError(f"warming {path} answered {status}: {body[:200]!r}")
        finally:
            conn.close()
        return self._measured(paths, concurrency)

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait until the requests a previous run left in flight are answered, so that they
        do not count in the next run's metric deltas (the /metrics request is the only one)."""
        deadline = time.monotonic() + timeout
        while self.metrics().get("in_flight", 0.0) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)

    def _measured(self, paths: Path, concurrency: int) -> dict[str, Any]:
        offset = self.rng.randrange(1 << 30)
        self.wait_idle()
        before, cpu_before = self.metrics(), self.server.cpu_seconds()
        children_before, own_before, machine_before = _children_cpu(), _own_cpu(), machine_cpu()
        result = self._wrk(paths, concurrency, self.args.duration, offset)
        machine = machine_cpu() - machine_before
        wrk_cpu, own = _children_cpu() - children_before, _own_cpu() - own_before
        cpu_after, after = self.server.cpu_seconds(), self.metrics()
        run = describe_run(concurrency, result, before, after, cpu_before, cpu_after, wrk_cpu)
        server = cpu_after[0] - cpu_before[0] + cpu_after[2] - cpu_before[2]
        run["other_cpu_cores"] = max(0.0, machine - server - wrk_cpu - own) / run["seconds"]
        return run

    def _wrk(self, paths: Path, concurrency: int, seconds: int, offset: int) -> dict[str, Any]:
        command = [
            self.wrk, "-t", str(self.args.wrk_threads), "-c", str(concurrency),
            "-d", f"{seconds}s", "--timeout", "10s", "-s", str(LUA_SCRIPT),
            f"http://127.0.0.1:{self.server.port}", "--",
            str(paths), str(offset), str(self.args.wrk_threads),
        ]  # fmt: skip
        done = subprocess.run(
            command, env=self.env, capture_output=True, text=True, timeout=seconds + 60
        )
        found = [line for line in done.stdout.splitlines() if line.startswith("WRK_JSON ")]
        if done.returncode != 0 or not found:
            raise BenchmarkError(
                f"wrk failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}\n"
                f"server log:\n{self.server.log_tail()}"
            )
        result: dict[str, Any] = json.loads(found[-1].removeprefix("WRK_JSON "))
        return result


def machine_cpu() -> float:
    """CPU seconds every core of the machine has been busy (steal included) since boot."""
    fields = Path("/proc/stat").read_text(encoding="utf-8").splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def wait_for_quiet(limit: float, max_wait: float) -> float:
    """Wait (at most ``max_wait`` s) until the machine's busy cores over one second are below
    ``limit`` while this benchmark is idle; returns the last reading."""
    deadline = time.monotonic() + max_wait
    told = False
    while True:
        before, own = machine_cpu(), _own_cpu()
        time.sleep(1.0)
        busy = max(0.0, machine_cpu() - before - (_own_cpu() - own))
        if busy < limit or time.monotonic() >= deadline:
            return busy
        if not told:
            _log(f"other processes keep {busy:.2f} cores busy; waiting for a quiet machine")
            told = True


def quiet_run(measure: Callable[[], dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """``measure()`` on a quiet machine: repeated (up to ``--attempts`` times) when other
    processes used more than ``--max-other-cpu`` cores during it; the last try is kept."""
    result: dict[str, Any] = {}
    for attempt in range(1, args.attempts + 1):
        if args.quiet_wait > 0:
            wait_for_quiet(args.max_other_cpu, args.quiet_wait)
        result = measure()
        result["attempts"] = attempt
        if result["other_cpu_cores"] <= args.max_other_cpu:
            break
        _log(
            f"other processes used {result['other_cpu_cores']:.2f} cores during the run"
            + ("; measuring again" if attempt < args.attempts else "; kept anyway")
        )
    return result


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def parse_metrics(text: str) -> dict[str, float]:
    """The samples this benchmark reads, summed over the labels it does not care about."""
    from prometheus_client.parser import text_string_to_metric_families

    route = "/v1/users/{user_id}/recommendations"
    wanted: dict[str, Callable[[dict[str, str]], str | None]] = {
        "moerec_cache_requests_total": lambda labels: f"cache_{labels.get('result')}",
        "moerec_http_requests_in_flight": lambda labels: "in_flight",
        "moerec_degraded_requests_total": lambda labels: "degraded",
        "moerec_fallback_recommendations_total": lambda labels: "fallbacks",
        "moerec_batch_size_sum": lambda labels: "batch_size_sum",
        "moerec_batch_size_count": lambda labels: "batch_count",
        "moerec_batch_duration_seconds_sum": lambda labels: "batch_seconds",
        "moerec_batch_wait_seconds_sum": lambda labels: "batch_wait_seconds",
        "moerec_http_request_duration_seconds_sum": lambda labels: (
            "server_seconds" if labels.get("route") == route else None
        ),
        "moerec_http_request_duration_seconds_count": lambda labels: (
            "server_requests" if labels.get("route") == route else None
        ),
        "moerec_http_requests_total": lambda labels: (
            ("status_ok" if labels.get("status", "").startswith("2") else "status_failed")
            if labels.get("route") == route
            else None
        ),
    }
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            pick = wanted.get(sample.name)
            key = pick(sample.labels) if pick else None
            if key is not None:
                values[key] = values.get(key, 0.0) + float(sample.value)
    return values


def describe_run(
    concurrency: int,
    wrk: dict[str, Any],
    before: dict[str, float],
    after: dict[str, float],
    cpu_before: tuple[float, float, float],
    cpu_after: tuple[float, float, float],
    wrk_cpu: float,
) -> dict[str, Any]:
    """One wrk run's figures, with the server's own view of it from the metric deltas."""

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    seconds = wrk["duration_us"] / 1e6
    lat = wrk["latency_us"]
    hits, misses = delta("cache_hit"), delta("cache_miss")
    batches = delta("batch_count")
    server_requests = delta("server_requests")
    return {
        "concurrency": concurrency,
        "p50_ms": lat["p50"] / 1000,
        "p95_ms": lat["p95"] / 1000,
        "p99_ms": lat["p99"] / 1000,
        "mean_ms": lat["mean"] / 1000,
        "max_ms": lat["max"] / 1000,
        "rps": wrk["requests"] / seconds,
        "requests": wrk["requests"],
        "errors": sum(wrk["errors"].values()),
        "error_kinds": wrk["errors"],
        "server_failed_responses": delta("status_failed"),
        "degraded_requests": delta("degraded"),
        "fallback_answers": delta("fallbacks"),
        "hit_ratio": hits / (hits + misses) if hits + misses else None,
        "cache_lookups": hits + misses,
        "mean_batch_size": delta("batch_size_sum") / batches if batches else None,
        "batches": batches,
        "model_busy": delta("batch_seconds") / seconds,
        "mean_batch_ms": 1000 * delta("batch_seconds") / batches if batches else None,
        "mean_batch_wait_ms": 1000 * delta("batch_wait_seconds") / batches if batches else None,
        "server_mean_ms": (
            1000 * delta("server_seconds") / server_requests if server_requests else None
        ),
        # the whole service: the serving process and its model process, if any
        "server_cpu_cores": (cpu_after[0] - cpu_before[0] + cpu_after[2] - cpu_before[2]) / seconds,
        "server_event_loop_cores": (cpu_after[1] - cpu_before[1]) / seconds,
        "model_process_cores": (cpu_after[2] - cpu_before[2]) / seconds,
        "wrk_cpu_cores": wrk_cpu / seconds,
        "seconds": seconds,
    }


# --------------------------------------------------------------------------- the ceiling


def _run_ceiling_worker(
    args: argparse.Namespace,
    model: Path,
    histories: Sequence[np.ndarray],
    settings: Any,
    tmp: Path,
) -> dict[str, Any]:
    """The in-process ceiling in a fresh process with the server's allocator and threads."""
    from moerec.runtime import jemalloc_environment, jemalloc_library

    path = tmp / "histories.npz"
    lengths = np.asarray([len(h) for h in histories], dtype=np.int64)
    np.savez(path, lengths=lengths, items=np.concatenate(histories))
    command = [
        sys.executable, __file__, "--ceiling-worker", "--model", str(model),
        "--histories", str(path), "--concurrencies", args.concurrencies,
        "--duration", str(args.duration), "--repeats", str(args.repeats),
        "--batch-max-size", str(settings.batch_max_size),
        "--batch-max-wait-ms", str(settings.batch_max_wait_ms),
        "--torch-threads", str(settings.torch_threads), "--seed", str(args.seed),
        "--max-other-cpu", str(args.max_other_cpu), "--attempts", str(args.attempts),
        "--quiet-wait", str(args.quiet_wait),
    ]  # fmt: skip
    if args.tiny:
        command.append("--tiny")
    env = dict(os.environ)
    env = jemalloc_environment(env, jemalloc_library()) or env  # as `moerec serve` re-execs
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchmarkError(f"the ceiling worker failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def ceiling_worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from moerec.inference import Predictor, Query
    from moerec.runtime import active_allocator

    torch.set_num_threads(args.torch_threads)
    predictor = Predictor.from_path(args.model)
    predictor.run([Query(np.asarray([1], dtype=np.int64), k=1)])  # as the server's warm-up
    stored = np.load(args.histories)
    offsets = np.cumsum(stored["lengths"])[:-1]
    histories = np.split(stored["items"], offsets)
    rng = random.Random(args.seed)
    runs: dict[str, list[dict[str, Any]]] = {str(c): [] for c in args.concurrency_list}
    gc.collect()
    gc.freeze()  # as the server does after start-up: full collections skip the imports

    async def measure_all() -> None:
        await closed_loop(predictor, histories, max(args.concurrency_list), 1.0, args, 0)
        for _ in range(args.repeats):
            for concurrency in args.concurrency_list:
                for attempt in range(1, args.attempts + 1):
                    if args.quiet_wait > 0:
                        wait_for_quiet(args.max_other_cpu, args.quiet_wait)
                    start = rng.randrange(len(histories))
                    machine, own = machine_cpu(), _own_cpu()
                    result = await closed_loop(
                        predictor, histories, concurrency, float(args.duration), args, start
                    )
                    other = machine_cpu() - machine - (_own_cpu() - own)
                    result["other_cpu_cores"] = max(0.0, other) / result["seconds"]
                    result["attempts"] = attempt
                    if result["other_cpu_cores"] <= args.max_other_cpu:
                        break
                runs[str(concurrency)].append(result)

    _event_loop_runner(measure_all)
    return {"allocator": active_allocator(), "runs": runs}


def _event_loop_runner(main: Callable[[], Any]) -> None:
    """Run ``main()`` on uvloop when installed (as uvicorn does), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


async def closed_loop(
    predictor: Any,
    histories: Sequence[np.ndarray],
    concurrency: int,
    seconds: float,
    args: argparse.Namespace,
    start: int,
) -> dict[str, Any]:
    """``concurrency`` clients, each sending its next request when the last one is answered,
    for ``seconds``; every request is the next user's history."""
    from moerec.inference import MicroBatcher, Query

    latencies: list[float] = []
    sizes: list[int] = []
    busy: list[float] = []
    position = itertools.count(start)

    def on_batch(report: Any) -> None:
        sizes.append(report.size)
        busy.append(report.seconds)

    async with MicroBatcher(
        predictor, args.batch_max_size, args.batch_max_wait_ms, on_batch=on_batch
    ) as batcher:
        began = time.perf_counter()
        deadline = began + seconds

        async def client() -> None:
            while time.perf_counter() < deadline:
                history = histories[next(position) % len(histories)]
                sent = time.perf_counter()
                await batcher.submit(Query(history, k=K))
                latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    q = np.percentile(np.asarray(latencies) * 1000, [50, 95, 99])
    return {
        "concurrency": concurrency,
        "p50_ms": float(q[0]),
        "p95_ms": float(q[1]),
        "p99_ms": float(q[2]),
        "rps": len(latencies) / elapsed,
        "requests": len(latencies),
        "errors": 0,
        "mean_batch_size": sum(sizes) / max(len(sizes), 1),
        "model_busy": sum(busy) / elapsed,
        "seconds": elapsed,
    }


# --------------------------------------------------------------------------- summaries

FIGURES = ("p50_ms", "p95_ms", "p99_ms", "rps")
MEDIANS = (
    "mean_ms", "hit_ratio", "mean_batch_size", "model_busy", "mean_batch_ms",
    "mean_batch_wait_ms", "server_mean_ms", "server_cpu_cores", "server_event_loop_cores",
    "model_process_cores", "wrk_cpu_cores",
)  # fmt: skip


def aggregate(concurrency: int, repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """One concurrency: the median of each figure over the repeats, its spread, the runs."""

    def median(key: str) -> float | None:
        values = [r[key] for r in repeats if r.get(key) is not None]
        return float(statistics.median(values)) if values else None

    entry: dict[str, Any] = {"concurrency": concurrency}
    for key in FIGURES:
        entry[key] = median(key)
    entry["errors"] = int(sum(r["errors"] for r in repeats))
    others = [r["other_cpu_cores"] for r in repeats if r.get("other_cpu_cores") is not None]
    if others:
        entry["other_cpu_cores_max"] = max(others)
    for key in ("degraded_requests", "fallback_answers"):  # sums over the repeats
        if any(key in r for r in repeats):
            entry[key] = int(sum(r.get(key) or 0 for r in repeats))
    for key in MEDIANS:
        if any(key in r for r in repeats):
            entry[key] = median(key)
    entry["spread"] = {
        key: [min(r[key] for r in repeats), max(r[key] for r in repeats)] for key in FIGURES
    }
    entry["repeats"] = repeats
    return entry


def headline(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The headline figures: the concurrency with the most req/s among those whose p95 is
    within the target; if none is, the one with the lowest p95 (and the rule says so)."""
    within = [run for run in runs if run["p95_ms"] <= P95_TARGET_MS]
    if within:
        best = max(within, key=lambda run: run["rps"])
        rule = f"the concurrency with the most req/s whose p95 ≤ {P95_TARGET_MS:g} ms"
    else:
        best = min(runs, key=lambda run: run["p95_ms"])
        rule = f"no concurrency had p95 ≤ {P95_TARGET_MS:g} ms: the one with the lowest p95"
    return {
        "concurrency": best["concurrency"],
        **{key: best[key] for key in FIGURES},
        "errors": best["errors"],
        "errors_all_runs": int(sum(run["errors"] for run in runs)),
        "headline_rule": rule,
        "runs": runs,
    }


def total_errors(report: dict[str, Any]) -> int:
    return int(
        sum(run["errors"] for part in ("uncached", "cached") for run in report[part]["runs"])
    )


def summary_table(report: dict[str, Any]) -> str:
    lines = [
        f"{'requests':<9} {'conns':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
        f"{'req/s':>8} {'batch':>6} {'hits':>6} {'errors':>6}"
    ]
    for part in ("uncached", "cached", "ceiling"):
        for run in report[part]["runs"]:
            batch = run.get("mean_batch_size")
            hits = run.get("hit_ratio")
            lines.append(
                f"{part:<9} {run['concurrency']:>5} {run['p50_ms']:>8.2f} {run['p95_ms']:>8.2f} "
                f"{run['p99_ms']:>8.2f} {run['rps']:>8.0f} "
                f"{'' if batch is None else f'{batch:.1f}':>6} "
                f"{'' if hits is None else f'{hits:.1%}':>6} {run['errors']:>6}"
            )
    t = report["targets"]
    lines.append(
        f"targets at {_n(t['at_concurrency'], 'connection')}: p95 ≤ {t['p95_target_ms']:g} ms "
        f"{_met(t['uncached_p95_le_29ms'])}; req/s ≥ {t['ceiling_fraction_target']:.0%} of the "
        f"ceiling {_met(t['uncached_rps_ge_60pct_ceiling'])} "
        f"({t['uncached_rps_over_ceiling']:.0%}); no errors {_met(t['no_errors'])}"
    )
    return "\n".join(lines)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


# --------------------------------------------------------------------------- docs


def write_docs(path: Path, report: dict[str, Any]) -> None:
    """Rewrite the serving section of ``path`` (between its markers; appended if absent)."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    path.write_text(splice_section(text, render_section(report)), encoding="utf-8")


def splice_section(text: str, section: str) -> str:
    """``text`` with the marked serving section replaced by ``section`` (or appended)."""
    return docs_section.splice_section(text, section, DOCS_BEGIN, DOCS_END)


def render_section(report: dict[str, Any]) -> str:
    m, s, load, t = report["model"], report["server"], report["load"], report["targets"]
    machine = report["machine"]
    ceiling = report["ceiling"]
    uncached = report["uncached"]
    ratio = t["uncached_rps_over_ceiling"]
    best_http = max(uncached["runs"], key=lambda run: run["rps"])
    best_ceiling = max(ceiling["runs"], key=lambda run: run["rps"])
    lines = [
        "## Serving over HTTP (`benchmarks/serving.py`)",
        "",
        f"Measured {report['measured_at']} on {machine['cpus']} CPU cores (torch "
        f"{machine['torch']}, Python {machine['python']}, {machine['wrk']}"
        f"{_speed_note(report)}): `{report['command']}`.",
        f"`moerec serve` in its own process on loopback (uvicorn, one worker, SQLite, "
        f"{s['cache']} cache, micro-batches of at most {s['batch_max_size']} waiting at most "
        f"{s['batch_max_wait_ms']:g} ms, {_n(s['torch_threads'], 'torch thread')}, "
        f"{s['allocator']}, "
        + (
            "forward passes in a child process, "
            if s.get("model_process")
            else "forward passes in a thread of the serving process, "
        )
        + f"log level {s['log_level']}, rate limits out of the way) serving a model of the "
        f"{report['data']['source']} shape: {m['items']:,} items, {m['layers']} layers, "
        f"{m['experts']} experts, top-{m['top_k']}, hidden {m['hidden']}, max length "
        f"{m['max_len']} ({m['note']}). Load: wrk with {_n(load['threads'], 'thread')} and N "
        f"keep-alive connections, each sending its next `GET /v1/users/{{id}}/recommendations"
        f"?k={load['k']}` as soon as the last one is answered, for {load['duration_s']} s; "
        f"median of {load['repeats']} runs (range of req/s in brackets).",
        "",
        f"**Targets** (uncached, at {_n(t['at_concurrency'], 'connection')}: "
        f"{uncached['headline_rule']}):",
        f"p95 ≤ {t['p95_target_ms']:g} ms — **{_met(t['uncached_p95_le_29ms'])}** "
        f"({uncached['p95_ms']:.1f} ms); "
        f"throughput ≥ {t['ceiling_fraction_target']:.0%} of the in-process ceiling — "
        f"**{_met(t['uncached_rps_ge_60pct_ceiling'])}** ({uncached['rps']:.0f} of "
        f"{ceiling['rps']:.0f} req/s, {ratio:.0%}); no request errors — "
        f"**{_met(t['no_errors'])}**. Server peak RSS {report['server_peak_rss_mb']:.0f} MB"
        + (
            f" (+ {report['model_process_peak_rss_mb']:.0f} MB model process)."
            if report.get("model_process_peak_rss_mb")
            else "."
        ),
        f"At saturation the server answered at most {best_http['rps']:.0f} misses/s "
        f"({_n(best_http['concurrency'], 'connection')}, p95 {best_http['p95_ms']:.0f} ms) against "
        f"the ceiling's best {best_ceiling['rps']:.0f} req/s ({best_ceiling['concurrency']} "
        f"clients): {best_http['rps'] / best_ceiling['rps']:.0%}.",
        *(
            []
            if report.get("code", {}).get("same_code", True)
            else [
                "**moerec's source changed between the ceiling and the server's start**"
                + (
                    f" ({', '.join(report['code']['changed_files'])})."
                    if report["code"].get("changed_files")
                    else "."
                )
            ]
        ),
        "",
        "| requests | connections | p50 ms | p95 ms | p99 ms | req/s | mean batch | "
        "cache hits | service CPU (cores) | wrk CPU (cores) | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    labels = {
        "uncached": "uncached (miss)",
        "cached": "cached (hit)",
        "ceiling": "in-process ceiling",
    }
    for part in ("uncached", "cached", "ceiling"):
        for run in report[part]["runs"]:
            low, high = run["spread"]["rps"]
            batch = run.get("mean_batch_size")
            hits = run.get("hit_ratio")
            server_cpu = run.get("server_cpu_cores")
            wrk_cpu = run.get("wrk_cpu_cores")
            lines.append(
                f"| {labels[part]} | {run['concurrency']} | {run['p50_ms']:.2f} | "
                f"{run['p95_ms']:.2f} | {run['p99_ms']:.2f} | {run['rps']:.0f} "
                f"[{low:.0f}–{high:.0f}] | {'' if batch is None else f'{batch:.1f}'} | "
                f"{'' if hits is None else f'{hits:.1%}'} | "
                f"{'' if server_cpu is None else f'{server_cpu:.2f}'} | "
                f"{'' if wrk_cpu is None else f'{wrk_cpu:.2f}'} | {run['errors']} |"
            )
    lines += [
        "",
        "What the rows mean. *Uncached*: the cache is flushed before each run and each request "
        "asks for the next of the data set's users, so every request (hit ratio above) reads "
        "the user's history from SQLite, waits for a micro-batch, runs the forward pass and "
        "stores its answer. *Cached*: a few users are requested once, then only those; a hit "
        "still verifies the token, charges the rate limits and reads the user's history "
        "version (part of the cache key), but skips the model. *In-process ceiling*: the same "
        "model, histories and batch settings called through `MicroBatcher` from N coroutines "
        "in one process, with no HTTP, database or cache: the most a single server process "
        "could answer as misses. The load is a closed loop, so once the server is saturated "
        "more connections only lengthen the queue: latency ≈ connections ÷ throughput. "
        "Service CPU counts the serving process and its model process, if any. wrk "
        "shares the machine's cores with the server (its CPU is shown), so on a 2-core "
        "machine the HTTP figures are a lower bound for a server with the machine to itself.",
        "",
        *_findings(report),
        "",
        "Reproduce with `make bench-serving DATA_ROOT=...` (the command above); "
        "`python benchmarks/serving.py --render-only --docs docs/benchmarks.md` rewrites this "
        "section from `benchmarks/results/serving.json`.",
    ]
    return "\n".join(lines)


def _batch_ms(run: dict[str, Any]) -> float:
    """Mean forward-pass time of a run: busy fraction / batches per second."""
    if not run or not run.get("rps") or not run.get("mean_batch_size"):
        return float("nan")
    return 1000 * run["model_busy"] * run["mean_batch_size"] / run["rps"]


def _findings(report: dict[str, Any]) -> list[str]:
    """Where the time went, read off this run's own counters (one line each)."""
    busiest = max(report["uncached"]["runs"], key=lambda run: run["concurrency"])
    ceiling = {run["concurrency"]: run for run in report["ceiling"]["runs"]}
    inside = ceiling.get(busiest["concurrency"], {})
    cached_best = max(report["cached"]["runs"], key=lambda run: run["rps"])
    lines = ["Read off this run's own counters (`/metrics` and `/proc` around each run):"]
    others = [
        run["other_cpu_cores_max"]
        for part in ("uncached", "cached", "ceiling")
        for run in report[part]["runs"]
        if "other_cpu_cores_max" in run
    ]
    limit = report["load"].get("max_other_cpu", 0.25)
    repeats = [
        repeat
        for part in ("uncached", "cached", "ceiling")
        for run in report[part]["runs"]
        for repeat in run["repeats"]
    ]
    noisy = [r for r in repeats if (r.get("other_cpu_cores") or 0.0) > limit]
    if others:
        lines.append(
            f"- Other processes on the machine: a run is measured again (up to "
            f"{report['load'].get('attempts', 1)} times) when they use more than {limit:.2f} "
            f"cores during it; {len(noisy)} of {len(repeats)} kept runs still had them above "
            f"that (at most {max(others):.2f} cores); each figure is a median of "
            f"{report['load']['repeats']} runs."
        )
    if busiest.get("mean_batch_size") is not None:
        lines.append(
            f"- At {_n(busiest['concurrency'], 'connection')} the server answered misses in "
            f"micro-batches of {busiest['mean_batch_size']:.1f} requests on average "
            f"({inside.get('mean_batch_size', float('nan')):.1f} in-process), "
            f"{busiest['mean_batch_ms']:.1f} ms per batch "
            f"({_batch_ms(inside):.1f} ms per batch of "
            f"{inside.get('mean_batch_size', float('nan')):.0f} in-process), and requests "
            f"waited {busiest['mean_batch_wait_ms']:.1f} ms in the batcher's queue on average; "
            f"the batcher's worker was busy {busiest['model_busy']:.0%} of the run "
            f"({inside.get('model_busy', float('nan')):.0%} in-process)."
        )
    fastest = max(report["uncached"]["runs"], key=lambda run: run["rps"])
    model_cores = fastest.get("model_process_cores") or 0.0
    serving_ms = 1000 * (fastest["server_cpu_cores"] - model_cores) / fastest["rps"]
    lines.append(
        f"- At the most misses/s ({fastest['rps']:.0f}, "
        f"{_n(fastest['concurrency'], 'connection')}) the serving process spent "
        f"{serving_ms:.2f} ms of CPU per miss ({fastest['server_event_loop_cores']:.2f} cores "
        "on its event-loop thread)"
        + (
            f" and the model process {1000 * model_cores / fastest['rps']:.2f} ms."
            if model_cores
            else "."
        )
    )
    degraded = sum(
        run.get("degraded_requests") or 0.0
        for part in ("uncached", "cached")
        for run in report[part]["runs"]
    )
    if degraded:
        lines.append(
            f"- {degraded / max(report['load']['repeats'], 1):.0f} requests per repetition were "
            "served degraded (history from memory after a database-call timeout) and so missed "
            "the cache."
        )
    lines.append(
        f"- The service used {busiest['server_cpu_cores']:.2f} cores "
        f"({busiest['server_event_loop_cores']:.2f} on the serving process's event-loop thread"
        + (
            f", {busiest['model_process_cores']:.2f} in the model process"
            if busiest.get("model_process_cores")
            else ""
        )
        + ") and wrk "
        f"{busiest['wrk_cpu_cores']:.2f} for {busiest['rps']:.0f} misses/s; the server's own "
        f"mean time per request was {busiest['server_mean_ms']:.1f} ms."
    )
    per_hit_ms = 1000 * cached_best["server_cpu_cores"] / cached_best["rps"]
    lines.append(
        f"- Cache hits peaked at {cached_best['rps']:.0f} req/s "
        f"({_n(cached_best['concurrency'], 'connection')}) with the event-loop thread at "
        f"{cached_best['server_event_loop_cores']:.2f} cores: {per_hit_ms:.2f} ms of server "
        "CPU per hit."
    )
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
