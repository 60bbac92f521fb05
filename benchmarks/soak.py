"""Soak test of `moerec serve`: minutes of mixed traffic over loopback, then error rate, tail
latency and memory growth of the service.

One run: train a model of the data set's shape for one epoch (or take --model); import the data
set's catalogue and histories into a fresh SQLite database; start `moerec serve` as a separate
process (as in production: jemalloc re-exec, the model in its own child process) with the rate
limits out of the way; then send a fixed rate of mixed requests for --minutes (an open loop
with a bound on the requests in flight) from an asyncio generator (httpx on uvloop):

* ~68% GET  /v1/users/{u}/recommendations  random known users, 30% of them from a small hot
  set (cache hits, until an event of theirs invalidates them);
* ~10% POST /v1/recommendations            an anonymous history of 1-20 known items;
*  ~5% POST /v1/scores                     a user or an anonymous history, 20 known items;
* ~15% POST /v1/events                     known user, known item, a unique idempotency key;
  5% of the stored ones are sent again at once (a client retry: must answer 200, duplicate);
*  ~1% GET  /v1/items/{id} and ~1% GET /v1/users/{u}/history.

Every response's status and latency is recorded. The RSS of the service (the server process
and its children: the model process) is sampled every 5 s. Warm-up is the first 20% of the run;
memory growth = (median RSS of the last minute - RSS at the end of warm-up) / RSS at the end of
warm-up (target: below 5%). Error rate = (5xx answers + transport errors) / requests; a 4xx is
a bug of this generator and fails the run. At the end, every event answered 201 (or 202,
spooled, once the spool has drained) must be in the database's events table exactly once.

Writes benchmarks/results/soak.json, a plot of RSS and p99 per 30 s window next to it (.png,
not committed) and, with --docs, the "Soak" section of docs/benchmarks.md (between its own
markers, so the rest of the file is left as it is).

    python benchmarks/soak.py --data DATA/amazon-beauty/Beauty.txt \\
        --config configs/quality-beauty.yaml --docs docs/benchmarks.md
    python benchmarks/soak.py --render-only --docs docs/benchmarks.md
    python benchmarks/soak.py --tiny --output soak-tiny.json       # ~40 s; what CI runs

Exits 1 when any request failed (5xx, transport error or 4xx) or an acknowledged event is
not stored exactly once, 2 when it cannot run at all. Memory growth above the target is
reported (JSON, docs, summary), not an exit status: over a short run it means little.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

import docs_section
from recording import command_line
from serving import (
    UNLIMITED,
    BenchmarkError,
    Server,
    _import_data,
    _machine,
    _moerec_command,
    _own_cpu,
    _prepare_data,
    _prepare_model,
    _proc_cpu,
    _users_and_histories,
    machine_cpu,
    parse_metrics,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "soak.json"
DOCS_BEGIN = "<!-- soak:begin (written by benchmarks/soak.py --docs; do not edit) -->"
DOCS_END = "<!-- soak:end -->"
SUBJECT = "soak-backend"
SCOPES = ["recommend", "recommend:any", "events:write"]
K = 10
MEMORY_GROWTH_TARGET = 0.05
WARM_UP_FRACTION = 0.2
QUIET_OTHER_CORES = 0.25
SAMPLE_SECONDS = 5.0
REQUEST_TIMEOUT_SECONDS = 10.0
# Request mix: kind -> share of the scheduled requests (event retries come on top).
MIX = {
    "rec_user": 0.68,
    "rec_anon": 0.10,
    "scores": 0.05,
    "event": 0.15,
    "item": 0.01,
    "history": 0.01,
}
KINDS = (*MIX, "event_retry")
LABELS = {
    "rec_user": "GET /v1/users/{u}/recommendations",
    "rec_anon": "POST /v1/recommendations (anonymous history)",
    "scores": "POST /v1/scores",
    "event": "POST /v1/events",
    "event_retry": "POST /v1/events (retry, same key)",
    "item": "GET /v1/items/{id}",
    "history": "GET /v1/users/{u}/history",
}
HOT_USERS = 300
HOT_SHARE = 0.3
RETRY_SHARE = 0.05
EVENT_TYPES = ("view", "view", "view", "click", "click", "add_to_cart", "purchase", "like",
               "rating", "dismiss")  # fmt: skip


def _log(message: str) -> None:
    print(f"[soak] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        report = json.loads(args.output.read_text(encoding="utf-8"))
        if args.note:
            report["notes"] = args.note
            args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        write_docs(args.docs, report)
        print(f"wrote {args.docs}", file=sys.stderr)
        return 0
    try:
        report = run(args, argv if argv is not None else sys.argv[1:])
    except BenchmarkError as exc:
        print(f"soak benchmark: error: {exc}", file=sys.stderr)
        return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output}", file=sys.stderr)
    plot = args.output.with_suffix(".png")
    if write_plot(plot, report):
        print(f"wrote {plot}", file=sys.stderr)
    if args.docs is not None:
        write_docs(args.docs, report)
        print(f"wrote {args.docs}", file=sys.stderr)
    print(summary(report), file=sys.stderr)
    problems = failures(report)
    for problem in problems:
        print(f"soak benchmark: FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, help="Interactions file (e.g. DATA/amazon-beauty/...).")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "quality-beauty.yaml")
    p.add_argument("--model", type=Path, help="Serve this artefact instead of training one.")
    p.add_argument("--minutes", type=float, default=10.0, help="Length of the traffic phase.")
    p.add_argument("--rate", type=float, default=100.0, help="Scheduled requests per second.")
    p.add_argument("--max-in-flight", type=int, default=64, help="Bound on open requests.")
    p.add_argument("--connections", type=int, default=32, help="httpx keep-alive pool size.")
    p.add_argument("--server-log-level", default="info", help="moerec serve --log-level.")
    p.add_argument("--output", type=Path, help=f"JSON results (default {DEFAULT_OUTPUT}).")
    p.add_argument("--docs", type=Path, help="Markdown file whose soak section to rewrite.")
    p.add_argument("--render-only", action="store_true", help="Only rewrite --docs from --output.")
    p.add_argument("--tiny", action="store_true", help="Synthetic data, a 20 s run: a smoke run.")
    p.add_argument(
        "--note",
        action="append",
        default=[],
        help="A finding to print under the figures in --docs (repeatable; kept in the JSON; "
        "with --render-only it replaces the JSON's notes).",
    )
    p.add_argument("--seed", type=int, default=0, help="Users, items and the request mix.")
    p.add_argument(
        "--max-load",
        type=float,
        default=0.7,
        help="Wait before starting while the 1-minute load average is above this (0: never).",
    )
    p.add_argument(
        "--load-wait", type=float, default=900.0, help="Longest wait for --max-load (s)."
    )
    args = p.parse_args(argv)
    # Set for serving.py's helpers (_prepare_data, Server), which read them off args.
    args.redis_url = None
    if args.tiny:
        args.minutes, args.rate, args.max_load = 20 / 60, 40.0, 0.0
        if args.docs is not None and not args.render_only:
            p.error("--docs shows full runs only; leave it out with --tiny")
    if args.output is None:
        # Tiny runs never overwrite the committed results: they go next to the venv's others.
        tiny = Path(sys.prefix) / "bench-tiny" / "soak.json"
        args.output = tiny if args.tiny else DEFAULT_OUTPUT
    if args.render_only and args.docs is None:
        p.error("--render-only needs --docs FILE")
    if not (args.tiny or args.render_only) and args.data is None:
        p.error("--data is required, also with --model: the database is filled from it")
    if args.minutes <= 0 or args.rate <= 0 or args.max_in_flight < 1 or args.connections < 1:
        p.error("--minutes, --rate, --max-in-flight and --connections must be positive")
    return args


# --------------------------------------------------------------------------- the run


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    load_at_launch = os.getloadavg()
    waited = wait_for_low_load(args.max_load, args.load_wait)
    load_before_setup = os.getloadavg()
    from moerec.config import load_service_settings
    from moerec.registry import load_artefact
    from moerec.serving.auth import mint_token

    settings = load_service_settings(**UNLIMITED)
    with tempfile.TemporaryDirectory(prefix="moerec-soak-") as tmp_name:
        tmp = Path(tmp_name)
        dataset, config = _prepare_data(args)
        model_path, trained_epochs = _prepare_model(args, dataset, config, tmp)
        artefact = load_artefact(model_path)
        users, _ = _users_and_histories(dataset, artefact, args.seed)
        known_items = [str(item) for item in artefact.vocab.item_ids]
        catalogue = [str(item) for item in dataset.vocab.item_ids]
        db_path = tmp / "soak.db"
        database_url = f"sqlite+aiosqlite:///{db_path}"
        import_seconds = _import_data(dataset, database_url)
        tokens = {
            "backend": mint_token(settings, SUBJECT, SCOPES, 4 * 3600),
            "admin": mint_token(settings, f"{SUBJECT}-admin", ["admin"], 4 * 3600),
        }
        server = Server(_moerec_command(), model_path, database_url, settings, args, tmp)
        with server:
            _log(f"server pid {server.pid} on port {server.port}")
            traffic = Traffic(args, server, tokens, users, known_items, catalogue)
            outcome = _event_loop_run(traffic.run)
            allocator = server.allocator()
            log_errors = server_log_errors(server.log_path)
        load_after = os.getloadavg()
        events = verify_events(db_path, traffic.key_prefix, traffic.acknowledged, traffic.unsure)
    model_config = artefact.config.model
    report = analyse(args, traffic, outcome)
    report.update(
        {
            "command": command_line("soak.py", argv, args.data),
            "measured_at": time.strftime("%Y-%m-%d"),
            "machine": _machine_info(),
            "load_average": {
                "start": [round(x, 2) for x in outcome["load_at_start"]],
                "end": [round(x, 2) for x in load_after],
                "at_launch": [round(x, 2) for x in load_at_launch],
                "before_setup": [round(x, 2) for x in load_before_setup],
                "waited_for_low_load_s": round(waited, 1),
                "note": "1, 5 and 15-minute load averages; start = when the traffic began "
                "(after this script's own training and import)",
            },
            "events_stored_exactly_once": events["exactly_once"],
            "events": events,
            "notes": args.note,
            "model": {
                "items": model_config.num_items,
                "layers": model_config.num_layers,
                "experts": model_config.moe_num_experts,
                "top_k": model_config.moe_top_k,
                "hidden": model_config.hidden_size,
                "max_len": model_config.max_len,
                "variant": artefact.config.variant,
                "version": outcome.get("model_version"),
                "trained_epochs": trained_epochs,
                "note": (
                    f"trained for {trained_epochs} epoch(s) only: load and memory depend on "
                    "the model's shape, not on how good its weights are"
                    if trained_epochs
                    else "an existing artefact"
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
            "server": {
                "command": "moerec serve --model MODEL --port PORT --database-url "
                f"sqlite+aiosqlite:///TMP/soak.db --log-level {args.server_log_level}",
                "database": "sqlite",
                "cache": "local",
                "allocator": allocator,
                "model_process": settings.model_process,
                "batch_max_size": settings.batch_max_size,
                "batch_max_wait_ms": settings.batch_max_wait_ms,
                "torch_threads": settings.torch_threads,
                "cache_ttl_seconds": settings.cache_ttl_seconds,
                "local_cache_entries": settings.local_cache_entries,
                "history_cache_users": settings.history_cache_users,
                "rate_limits": "raised out of the way (1e9 per second)",
                "logged_errors": log_errors,
            },
        }
    )
    return report


def wait_for_low_load(limit: float, max_wait: float) -> float:
    """Wait (polling every 30 s, at most ``max_wait`` s) until the 1-minute load average is
    at most ``limit``; the seconds waited."""
    if limit <= 0:
        return 0.0
    began = time.monotonic()
    while os.getloadavg()[0] > limit and time.monotonic() - began < max_wait:
        _log(f"1-minute load average {os.getloadavg()[0]:.2f} > {limit:g}; waiting")
        time.sleep(30.0)
    load = os.getloadavg()[0]
    if load > limit:
        _log(f"WARNING: starting at a 1-minute load average of {load:.2f} anyway")
    return time.monotonic() - began


def _event_loop_run(main: Any) -> dict[str, Any]:
    """``main()`` on uvloop when installed (as uvicorn does), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        result: dict[str, Any] = asyncio.run(main())
        return result
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(main())
    return result


def _machine_info() -> dict[str, Any]:
    import httpx

    info = _machine(shutil.which("wrk") or "true")  # wrk only adds its version: not used here
    info.pop("wrk", None)
    info["load_generator"] = f"httpx {httpx.__version__} on asyncio (uvloop), same machine"
    return info


# --------------------------------------------------------------------------- memory


def descendants(pid: int) -> list[int]:
    """``pid``'s child processes, recursively (the model process, multiprocessing helpers)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            text = (entry / "stat").read_text(encoding="utf-8")
            ppid = int(text.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = list(parents.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(parents.get(child, []))
    return sorted(found)


def process_memory(pid: int) -> dict[str, float] | None:
    """VmRSS, VmHWM (kB → MB) and PSS of one process; None once it is gone."""
    values: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(value.split()[0]) / 1024
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text(encoding="utf-8").splitlines():
            name, _, value = line.partition(":")
            if name in ("Pss", "Private_Clean", "Private_Dirty"):
                values[name] = int(value.split()[0]) / 1024
        values["Uss"] = values.pop("Private_Clean", 0.0) + values.pop("Private_Dirty", 0.0)
    except (OSError, ValueError):
        return None
    return values


def process_name(pid: int) -> str:
    with contextlib.suppress(OSError):
        raw = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        text = " ".join(part.decode(errors="replace") for part in raw if part)
        if "multiprocessing" in text and "resource_tracker" in text:
            return "resource_tracker"
        if "multiprocessing" in text or "spawn_main" in text:
            return "model_process"
        return Path(raw[0].decode(errors="replace")).name
    return "?"


def memory_sample(pid: int) -> dict[str, Any]:
    """The service's memory now: the server process and each descendant."""
    main_memory = process_memory(pid) or {}
    children: dict[str, dict[str, float]] = {}
    for child in descendants(pid):
        memory = process_memory(child)
        if memory:
            children[f"{process_name(child)}:{child}"] = memory
    total_rss = main_memory.get("VmRSS", 0.0) + sum(m.get("VmRSS", 0.0) for m in children.values())
    total_pss = main_memory.get("Pss", 0.0) + sum(m.get("Pss", 0.0) for m in children.values())
    total_uss = main_memory.get("Uss", 0.0) + sum(m.get("Uss", 0.0) for m in children.values())
    return {
        "rss_mb": round(total_rss, 1),
        "pss_mb": round(total_pss, 1),
        "uss_mb": round(total_uss, 1),
        "server_rss_mb": round(main_memory.get("VmRSS", 0.0), 1),
        "server_hwm_mb": round(main_memory.get("VmHWM", 0.0), 1),
        "children_rss_mb": {name: round(m.get("VmRSS", 0.0), 1) for name, m in children.items()},
        "children_hwm_mb": {name: round(m.get("VmHWM", 0.0), 1) for name, m in children.items()},
    }


# --------------------------------------------------------------------------- traffic


@dataclass
class Traffic:
    """The load generator, its records and the events it got acknowledged."""

    args: argparse.Namespace
    server: Server
    tokens: dict[str, str]
    users: list[str]
    known_items: list[str]
    catalogue: list[str]
    key_prefix: str = field(default_factory=lambda: f"soak-{uuid.uuid4().hex[:12]}-")
    # One entry per request: kind index, send time (s from the start), latency (s), status
    # (0: transport error).
    kinds: list[int] = field(default_factory=list)
    sent: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    transport_errors: Counter[str] = field(default_factory=Counter)
    client_error_samples: list[dict[str, Any]] = field(default_factory=list)
    server_error_samples: list[dict[str, Any]] = field(default_factory=list)
    acknowledged: dict[str, int] = field(default_factory=dict)  # key -> 201/202
    unsure: set[str] = field(default_factory=set)  # keys whose answer never came
    flags: Counter[str] = field(default_factory=Counter)
    response_bytes: Counter[str] = field(default_factory=Counter)
    samples: list[dict[str, Any]] = field(default_factory=list)
    skipped_slots: int = 0
    max_lag: float = 0.0
    max_in_flight_seen: int = 0
    distinct_rec_users: set[str] = field(default_factory=set)
    _event_number: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.args.seed)
        self.hot = self.users[: min(HOT_USERS, len(self.users))]
        self.kind_names = list(MIX)
        self.kind_weights = list(MIX.values())

    # ---------------------------------------------------------------- requests

    def _user(self) -> str:
        pool = self.hot if self.rng.random() < HOT_SHARE else self.users
        return self.rng.choice(pool)

    def _items(self, low: int, high: int) -> list[str]:
        return self.rng.sample(
            self.known_items, min(len(self.known_items), self.rng.randint(low, high))
        )

    def _request(self, kind: str) -> tuple[str, str, dict[str, Any] | None]:
        rng = self.rng
        if kind == "rec_user":
            user = self._user()
            self.distinct_rec_users.add(user)
            return "GET", f"/v1/users/{quote(user, safe='')}/recommendations?k={K}", None
        if kind == "rec_anon":
            return "POST", "/v1/recommendations", {"history": self._items(1, 20), "k": K}
        if kind == "scores":
            subject: dict[str, Any] = (
                {"user_id": self._user()} if rng.random() < 0.5 else {"history": self._items(1, 20)}
            )
            return "POST", "/v1/scores", {**subject, "items": self._items(20, 20)}
        if kind == "event":
            self._event_number += 1
            body = {
                "user_id": rng.choice(self.users),
                "item_id": rng.choice(self.known_items),
                "event_type": rng.choice(EVENT_TYPES),
                "idempotency_key": f"{self.key_prefix}{self._event_number:08d}",
            }
            return "POST", "/v1/events", body
        if kind == "item":
            return "GET", f"/v1/items/{quote(rng.choice(self.catalogue), safe='')}", None
        if kind == "history":
            return "GET", f"/v1/users/{quote(self._user(), safe='')}/history?limit=20", None
        raise ValueError(kind)

    async def _send(
        self,
        client: Any,
        kind: str,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        began: float,
    ) -> tuple[int, bytes]:
        import httpx

        sent = time.perf_counter()
        try:
            response = await client.request(method, path, json=body)
            status, content = response.status_code, response.content
        except httpx.HTTPError as exc:
            status, content = 0, repr(exc).encode()
            self.transport_errors[type(exc).__name__] += 1
        elapsed = time.perf_counter() - sent
        self.kinds.append(KINDS.index(kind))
        self.sent.append(sent - began)
        self.latency.append(elapsed)
        self.status.append(status)
        self.response_bytes[kind] += len(content) if status else 0
        if 400 <= status < 500 and len(self.client_error_samples) < 10:
            self.client_error_samples.append(
                {"kind": kind, "path": path, "status": status, "body": content[:300].decode()}
            )
        if (status == 0 or status >= 500) and len(self.server_error_samples) < 10:
            self.server_error_samples.append(
                {
                    "kind": kind,
                    "path": path,
                    "status": status,
                    "at_s": round(sent - began, 1),
                    "body": content[:300].decode(errors="replace"),
                }
            )
        return status, content

    async def _one(self, client: Any, kind: str, began: float) -> None:
        import orjson

        method, path, body = self._request(kind)
        status, content = await self._send(client, kind, method, path, body, began)
        if kind in ("rec_user", "rec_anon") and status == 200:
            payload = orjson.loads(content)
            self.flags[f"{kind}_cached"] += bool(payload.get("cached"))
            self.flags[f"{kind}_fallback"] += bool(payload.get("fallback"))
        if kind != "event" or body is None:
            return
        key = body["idempotency_key"]
        if status in (201, 202):
            self.acknowledged[key] = status
            self.flags[f"event_{status}"] += 1
        elif status == 200:
            self.flags["event_first_send_duplicate"] += 1  # a fresh key cannot be a duplicate
            self.acknowledged[key] = status
        elif status == 0 or status >= 500:
            self.unsure.add(key)
        if status == 201 and self.rng.random() < RETRY_SHARE:
            status, content = await self._send(client, "event_retry", method, path, body, began)
            duplicate = status == 200 and bool(orjson.loads(content).get("duplicate"))
            self.flags["retry_duplicate" if duplicate else "retry_not_duplicate"] += 1

    # ---------------------------------------------------------------- the run

    async def run(self) -> dict[str, Any]:
        import httpx

        base = f"http://127.0.0.1:{self.server.port}"
        headers = {"Authorization": f"Bearer {self.tokens['backend']}"}
        limits = httpx.Limits(
            max_connections=self.args.connections,
            max_keepalive_connections=self.args.connections,
            keepalive_expiry=2.0,  # below uvicorn's 5 s keep-alive: no race on a closing socket
        )
        timeout = httpx.Timeout(REQUEST_TIMEOUT_SECONDS, pool=None)
        async with httpx.AsyncClient(
            base_url=base, headers=headers, limits=limits, timeout=timeout
        ) as client:
            admin = {"Authorization": f"Bearer {self.tokens['admin']}"}
            info = await client.get("/v1/admin/model", headers=admin)
            model_version = info.json().get("model_version") if info.status_code == 200 else None
            metrics_before = parse_metrics((await client.get("/metrics")).text)
            load_at_start = os.getloadavg()
            duration = self.args.minutes * 60.0
            _log(
                f"{duration:.0f} s of mixed traffic at {self.args.rate:g} req/s "
                f"(load average {load_at_start[0]:.2f})"
            )
            began = time.perf_counter()
            monitor = asyncio.create_task(self._monitor(began, duration))
            await self._schedule(client, began, duration)
            traffic_seconds = time.perf_counter() - began
            await monitor
            # Events the database could not take wait in the spool: let it drain, then check.
            spooled = await self._drain_spool(client)
            metrics_after = parse_metrics((await client.get("/metrics")).text)
        return {
            "model_version": model_version,
            "load_at_start": load_at_start,
            "traffic_seconds": traffic_seconds,
            "spool_left": spooled,
            "metrics_before": metrics_before,
            "metrics_after": metrics_after,
        }

    async def _schedule(self, client: Any, began: float, duration: float) -> None:
        """An open loop at --rate, at most --max-in-flight open: a slot whose turn came more
        than a second ago (the bound was reached) is skipped, not sent in a burst."""
        interval = 1.0 / self.args.rate
        gate = asyncio.Semaphore(self.args.max_in_flight)
        tasks: set[asyncio.Task[None]] = set()
        slot = 0
        progress = began
        while True:
            due = began + slot * interval
            if due - began >= duration:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await gate.acquire()
            lag = time.perf_counter() - due
            if lag > 1.0:
                skip = int(lag / interval)
                self.skipped_slots += skip
                slot += skip
            self.max_lag = max(self.max_lag, lag)
            kind = self.rng.choices(self.kind_names, self.kind_weights)[0]
            task = asyncio.create_task(self._one(client, kind, began))
            tasks.add(task)
            self.max_in_flight_seen = max(self.max_in_flight_seen, len(tasks))

            def done(finished: asyncio.Task[None]) -> None:
                tasks.discard(finished)
                gate.release()

            task.add_done_callback(done)
            slot += 1
            if time.perf_counter() - progress >= 60:
                progress = time.perf_counter()
                _log(f"{progress - began:.0f} s: {len(self.status)} answers, {self._bad()} failed")
        if tasks:
            await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT_SECONDS * 3)
        for task in tasks:
            if task.done() and task.exception() is not None:
                raise BenchmarkError(f"the load generator failed: {task.exception()!r}")

    def _bad(self) -> int:
        return sum(1 for s in self.status if s == 0 or s >= 500)

    async def _monitor(self, began: float, duration: float) -> None:
        """Every SAMPLE_SECONDS: the service's memory, its CPU, the machine's and ours."""
        pid = self.server.pid
        last = None
        at = 0.0
        while True:
            now = time.perf_counter()
            cpu = {
                "server": _proc_cpu(f"/proc/{pid}/stat"),
                "children": sum(
                    _proc_cpu(f"/proc/{child}/stat")
                    for child in descendants(pid)
                    if Path(f"/proc/{child}/stat").exists()
                ),
                "machine": machine_cpu(),
                "own": _own_cpu(),
            }
            sample: dict[str, Any] = {"t": round(now - began, 2), **memory_sample(pid)}
            if last is not None:
                seconds = now - last[0]
                used = {name: (cpu[name] - last[1][name]) / seconds for name in cpu}
                sample["cpu_cores"] = {
                    "server": round(used["server"], 3),
                    "model_process": round(used["children"], 3),
                    "generator": round(used["own"], 3),
                    "others": round(
                        max(0.0, used["machine"] - used["server"] - used["children"] - used["own"]),
                        3,
                    ),
                }
            self.samples.append(sample)
            last = (now, cpu)
            if at >= duration:
                return
            at = min(at + SAMPLE_SECONDS, duration)
            await asyncio.sleep(max(0.0, began + at - time.perf_counter()))

    async def _drain_spool(self, client: Any, timeout: float = 120.0) -> int:
        deadline = time.monotonic() + timeout
        spooled = -1
        while time.monotonic() < deadline:
            response = await client.get("/readyz")
            spooled = int(response.json().get("spooled_events", 0))
            if spooled == 0:
                return 0
            await asyncio.sleep(1.0)
        _log(f"WARNING: {spooled} events still in the spool after {timeout:.0f} s")
        return spooled


# --------------------------------------------------------------------------- checks


def verify_events(
    db_path: Path, prefix: str, acknowledged: dict[str, int], unsure: set[str]
) -> dict[str, Any]:
    """Every acknowledged event in the events table exactly once (read after the server has
    stopped, straight from the SQLite file)."""
    connection = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows = connection.execute(
            "SELECT idempotency_key, COUNT(*) FROM events WHERE idempotency_key LIKE ? "
            "GROUP BY idempotency_key",
            (prefix.replace("_", r"\_") + "%",),
        ).fetchall()
        # LIKE's "_" is a wildcard; the prefix has none, but be exact anyway.
        rows = [(key, count) for key, count in rows if key.startswith(prefix)]
        total_events = connection.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    finally:
        connection.close()
    stored = dict(rows)
    missing = sorted(key for key in acknowledged if key not in stored)
    repeated = sorted(key for key, count in stored.items() if count != 1)
    unexpected = sorted(key for key in stored if key not in acknowledged and key not in unsure)
    return {
        "exactly_once": not missing and not repeated and not unexpected,
        "acknowledged": len(acknowledged),
        "acknowledged_201": sum(1 for s in acknowledged.values() if s == 201),
        "acknowledged_202_spooled": sum(1 for s in acknowledged.values() if s == 202),
        "stored_keys": len(stored),
        "missing": len(missing),
        "stored_more_than_once": len(repeated),
        "stored_but_never_acknowledged": len(unexpected),
        "unanswered_keys": len(unsure),
        "unanswered_keys_stored": sum(1 for key in unsure if key in stored),
        "missing_examples": missing[:5],
        "events_table_rows": total_events,
        "how": "sqlite3 on the database file after the server stopped: "
        "SELECT idempotency_key, COUNT(*) FROM events GROUP BY idempotency_key",
    }


def server_log_errors(path: Path) -> dict[str, Any]:
    """Lines the server logged at level error or worse, and warnings, with a few messages."""
    counts: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        level = str(entry.get("level", "")).lower()
        if level in ("warning", "error", "critical"):
            counts[level] += 1
            messages[f"{level}: {str(entry.get('message', entry.get('msg', '')))[:160]}"] += 1
    return {"counts": dict(counts), "top_messages": dict(messages.most_common(8))}


# --------------------------------------------------------------------------- analysis


def _percentiles(values: np.ndarray) -> dict[str, float | None]:
    if values.size == 0:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    q = np.percentile(values * 1000, [50, 95, 99])
    return {
        "p50_ms": round(float(q[0]), 2),
        "p95_ms": round(float(q[1]), 2),
        "p99_ms": round(float(q[2]), 2),
        "max_ms": round(float(values.max() * 1000), 2),
    }


def _status_counts(statuses: np.ndarray) -> dict[str, int]:
    counts = Counter("transport_error" if s == 0 else str(s) for s in statuses.tolist())
    return dict(sorted(counts.items()))


def analyse(args: argparse.Namespace, traffic: Traffic, outcome: dict[str, Any]) -> dict[str, Any]:
    kinds = np.asarray(traffic.kinds, dtype=np.int64)
    sent = np.asarray(traffic.sent, dtype=np.float64)
    latency = np.asarray(traffic.latency, dtype=np.float64)
    status = np.asarray(traffic.status, dtype=np.int64)
    duration = args.minutes * 60.0  # the schedule's length (the last answers come a bit later)
    answered = status > 0
    failed = (status == 0) | (status >= 500)
    client_errors = (status >= 400) & (status < 500)
    total = int(status.size)
    warm_up = WARM_UP_FRACTION * args.minutes * 60.0
    after_warm = sent >= warm_up

    per_kind = {}
    for index, kind in enumerate(KINDS):
        mask = kinds == index
        if not mask.any():
            continue
        per_kind[kind] = {
            "label": LABELS[kind],
            "requests": int(mask.sum()),
            "share": round(float(mask.sum()) / max(total, 1), 4),
            **_percentiles(latency[mask & answered]),
            "status_counts": _status_counts(status[mask]),
            "mean_response_bytes": round(
                traffic.response_bytes[kind] / max(int((mask & answered).sum()), 1)
            ),
        }

    window = 30.0 if duration >= 300 else max(1.0, round(duration / 10))
    windows = []
    edges = np.arange(0.0, duration + 1e-9, window)
    for start in edges:
        end = start + window
        if end > duration + 1e-6:
            break
        mask = (sent >= start) & (sent < end)
        in_window = [s for s in traffic.samples if start < s["t"] <= end + 1e-6]
        cores = [s["cpu_cores"] for s in in_window if "cpu_cores" in s]
        windows.append(
            {
                "start_s": round(float(start), 1),
                "requests": int(mask.sum()),
                "rps": round(float(mask.sum()) / window, 1),
                "p50_ms": _percentiles(latency[mask & answered])["p50_ms"],
                "p99_ms": _percentiles(latency[mask & answered])["p99_ms"],
                "failed": int((mask & failed).sum()),
                "rss_mb": in_window[-1]["rss_mb"] if in_window else None,
                "other_cpu_cores": (
                    round(statistics.mean(c["others"] for c in cores), 2) if cores else None
                ),
            }
        )

    minutes = []
    for number, start in enumerate(np.arange(0.0, duration - 1e-6, 60.0), start=1):
        end = min(float(start) + 60.0, duration)
        mask = (sent >= start) & (sent < end)
        in_minute = [s for s in traffic.samples if start < s["t"] <= end + 1e-6]
        cores = [s["cpu_cores"]["others"] for s in in_minute if "cpu_cores" in s]
        figures = _percentiles(latency[mask & answered])
        minutes.append(
            {
                "minute": number,
                "requests": int(mask.sum()),
                "rps": round(float(mask.sum()) / (end - start), 1),
                "p50_ms": figures["p50_ms"],
                "p99_ms": figures["p99_ms"],
                "failed": int((mask & failed).sum()),
                "rss_mb": in_minute[-1]["rss_mb"] if in_minute else None,
                "other_cpu_cores": round(max(cores), 2) if cores else None,
            }
        )

    memory = memory_figures(traffic.samples, warm_up, duration)
    quiet = quiet_requests(traffic.samples, sent)
    before, after = outcome["metrics_before"], outcome["metrics_after"]

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    hits, misses = delta("cache_hit"), delta("cache_miss")
    cores = [s["cpu_cores"] for s in traffic.samples if "cpu_cores" in s]
    error_rate = float(failed.sum()) / max(total, 1)
    return {
        "error_rate": round(error_rate, 6),
        "memory_growth": memory["growth"],
        "p99_ms": _percentiles(latency[answered])["p99_ms"],
        "p50_ms": _percentiles(latency[answered])["p50_ms"],
        "p95_ms": _percentiles(latency[answered])["p95_ms"],
        "max_ms": _percentiles(latency[answered])["max_ms"],
        "p99_ms_after_warm_up": _percentiles(latency[answered & after_warm])["p99_ms"],
        "p99_ms_quiet": _percentiles(latency[answered & quiet])["p99_ms"],
        "quiet_share": round(float(quiet.mean()), 3) if quiet.size else None,
        "quiet_definition": f"requests sent while other processes used under "
        f"{QUIET_OTHER_CORES:g} cores (5 s samples)",
        "requests": total,
        "rps": round(total / duration, 1),
        "duration_seconds": round(duration, 1),
        "traffic_seconds_until_last_answer": round(float(outcome["traffic_seconds"]), 1),
        "rss_mb": {key: memory[key] for key in ("start", "warm", "end", "peak")},
        "status_counts": _status_counts(status),
        "failed_requests": int(failed.sum()),
        "client_errors_4xx": int(client_errors.sum()),
        "transport_errors": dict(traffic.transport_errors),
        "targets": {
            "memory_growth_target": MEMORY_GROWTH_TARGET,
            "memory_growth_met": memory["growth"] is not None
            and memory["growth"] < MEMORY_GROWTH_TARGET,
            "no_failed_requests": int(failed.sum()) == 0,
            "no_client_errors": int(client_errors.sum()) == 0,
        },
        "memory": memory,
        "per_kind": per_kind,
        "minutes": minutes,
        "windows": windows,
        "window_seconds": window,
        "responses": {
            "rec_user_cached": traffic.flags["rec_user_cached"],
            "rec_user_fallback": traffic.flags["rec_user_fallback"],
            "rec_anon_cached": traffic.flags["rec_anon_cached"],
            "rec_anon_fallback": traffic.flags["rec_anon_fallback"],
            "event_retries_answered_duplicate": traffic.flags["retry_duplicate"],
            "event_retries_not_duplicate": traffic.flags["retry_not_duplicate"],
            "event_first_send_answered_duplicate": traffic.flags["event_first_send_duplicate"],
            "distinct_users_asked_for_recommendations": len(traffic.distinct_rec_users),
        },
        "server_metrics": {
            "cache_hits": hits,
            "cache_misses": misses,
            "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
            "degraded_requests": delta("degraded"),
            "fallback_answers": delta("fallbacks"),
            "mean_batch_size": (
                round(delta("batch_size_sum") / delta("batch_count"), 2)
                if delta("batch_count")
                else None
            ),
            "model_busy": round(delta("batch_seconds") / duration, 3),
            "spool_left_after_drain": outcome["spool_left"],
        },
        "cpu_cores_mean": {
            name: round(statistics.mean(c[name] for c in cores), 3) for name in cores[0]
        }
        if cores
        else {},
        "load": {
            "generator": "httpx.AsyncClient on uvloop, open loop at a fixed rate",
            "rate": args.rate,
            "max_in_flight": args.max_in_flight,
            "connections": args.connections,
            "minutes": args.minutes,
            "mix": MIX,
            "event_retry_share": RETRY_SHARE,
            "hot_users": len(traffic.hot),
            "hot_share": HOT_SHARE,
            "k": K,
            "timeout_s": REQUEST_TIMEOUT_SECONDS,
            "skipped_slots": traffic.skipped_slots,
            "max_schedule_lag_ms": round(traffic.max_lag * 1000, 1),
            "max_in_flight_seen": traffic.max_in_flight_seen,
            "warm_up_s": round(warm_up, 1),
            "sample_s": SAMPLE_SECONDS,
        },
        "error_samples": {
            "server_or_transport": traffic.server_error_samples,
            "client": traffic.client_error_samples,
        },
    }


def quiet_requests(samples: list[dict[str, Any]], sent: np.ndarray) -> np.ndarray:
    """Which requests were sent while other processes left the machine alone: the 5 s
    sample interval holding the send time saw under QUIET_OTHER_CORES cores of others."""
    timed = [(s["t"], s["cpu_cores"]["others"]) for s in samples if "cpu_cores" in s]
    if not timed:
        return np.zeros(sent.shape, dtype=bool)
    ends = np.asarray([t for t, _ in timed])
    others = np.asarray([o for _, o in timed])
    index = np.minimum(np.searchsorted(ends, sent), len(ends) - 1)
    return np.asarray(others[index] < QUIET_OTHER_CORES)


def memory_figures(
    samples: list[dict[str, Any]], warm_up: float, duration: float
) -> dict[str, Any]:
    """RSS at the end of warm-up, median over the last minute (the last 20% of a shorter
    run), the growth between them, the peak; for the whole service and per process."""
    if not samples:
        return {"growth": None, "start": None, "warm": None, "end": None, "peak": None}
    tail = min(60.0, WARM_UP_FRACTION * duration)
    warm_sample = min(samples, key=lambda s: abs(s["t"] - warm_up))
    last = [s for s in samples if s["t"] >= duration - tail - 1e-6] or samples[-1:]

    def figures(read: Any) -> dict[str, float | None]:
        warm = read(warm_sample)
        end = float(statistics.median(read(s) for s in last))
        return {
            "warm": warm,
            "end": round(end, 1),
            "growth": round((end - warm) / warm, 4) if warm else None,
        }

    service = figures(lambda s: s["rss_mb"])
    peak_main = max(s["server_hwm_mb"] for s in samples)
    peak_children = max(sum(s["children_hwm_mb"].values()) for s in samples)
    per_process: dict[str, Any] = {"server": figures(lambda s: s["server_rss_mb"])}
    children = set().union(*(s["children_rss_mb"] for s in samples))
    for name in sorted(children):
        if all(name in s["children_rss_mb"] for s in (warm_sample, *last)):
            per_process[name] = figures(lambda s, n=name: s["children_rss_mb"][n])
    return {
        "growth": service["growth"],
        "start": samples[0]["rss_mb"],
        "warm": service["warm"],
        "end": service["end"],
        "peak": round(max(peak_main + peak_children, max(s["rss_mb"] for s in samples)), 1),
        "uss": figures(lambda s: s["uss_mb"]),
        "pss": figures(lambda s: s["pss_mb"]),
        "per_process": per_process,
        "warm_sample_t": warm_sample["t"],
        "end_window_s": [round(duration - tail, 1), round(duration, 1)],
        "definition": "service = the `moerec serve` process plus its children (the model "
        "process); growth = (median RSS over the end window - RSS at the end of warm-up) / "
        "RSS at the end of warm-up; peak = sum of the processes' high-water marks; USS = "
        "private pages (Private_Clean + Private_Dirty); PSS also counts shares of library pages "
        "that other processes on the machine map (e.g. other torch processes), so it moves "
        "with them",
        "series": [
            {
                "t": s["t"],
                "rss_mb": s["rss_mb"],
                "uss_mb": s["uss_mb"],
                "pss_mb": s["pss_mb"],
                "server_rss_mb": s["server_rss_mb"],
                "model_process_rss_mb": round(
                    sum(v for n, v in s["children_rss_mb"].items() if n.startswith("model")), 1
                ),
                **({"cpu_cores": s["cpu_cores"]} if "cpu_cores" in s else {}),
            }
            for s in samples
        ],
    }


def failures(report: dict[str, Any]) -> list[str]:
    problems = []
    if report["failed_requests"]:
        problems.append(
            f"{report['failed_requests']} request(s) answered 5xx or failed in transport "
            f"({report['status_counts']})"
        )
    if report["client_errors_4xx"]:
        problems.append(
            f"{report['client_errors_4xx']} request(s) answered 4xx (a bug of the generator "
            f"or the service): {report['error_samples']['client'][:2]}"
        )
    if not report["events_stored_exactly_once"]:
        problems.append(f"acknowledged events not stored exactly once: {report['events']}")
    responses = report["responses"]
    if responses["event_retries_not_duplicate"] or responses["event_first_send_answered_duplicate"]:
        problems.append(f"idempotency answers were wrong: {responses}")
    return problems


def summary(report: dict[str, Any]) -> str:
    rss = report["rss_mb"]
    growth = report["memory_growth"]
    lines = [
        f"{report['requests']} requests in {report['duration_seconds']:.0f} s "
        f"({report['rps']:.1f} req/s): error rate {report['error_rate']:.4%}, "
        f"4xx {report['client_errors_4xx']}, p50 {report['p50_ms']} ms, "
        f"p95 {report['p95_ms']} ms, p99 {report['p99_ms']} ms",
        f"service RSS: start {rss['start']} MB, end of warm-up {rss['warm']} MB, "
        f"end {rss['end']} MB, peak {rss['peak']} MB; growth "
        + ("n/a" if growth is None else f"{growth:+.2%}")
        + f" (target < {MEMORY_GROWTH_TARGET:.0%}: "
        + ("met" if report["targets"]["memory_growth_met"] else "NOT met")
        + ")",
        f"events: {report['events']['acknowledged']} acknowledged, stored exactly once: "
        f"{report['events_stored_exactly_once']}",
        f"status counts: {report['status_counts']}",
    ]
    for kind, entry in report["per_kind"].items():
        lines.append(
            f"  {kind:<12} {entry['requests']:>7} p50 {entry['p50_ms']} p99 {entry['p99_ms']} "
            f"{entry['status_counts']}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- plot


def write_plot(path: Path, report: dict[str, Any]) -> bool:
    """RSS over the run and p50/p99 per window, one PNG (not committed: results/*.png)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _log("matplotlib is not installed: no plot")
        return False
    series = report["memory"]["series"]
    windows = report["windows"]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    t = [s["t"] for s in series]
    top.plot(t, [s["rss_mb"] for s in series], label="service RSS (server + model process)")
    top.plot(t, [s["server_rss_mb"] for s in series], label="server process RSS", alpha=0.7)
    top.plot(t, [s["model_process_rss_mb"] for s in series], label="model process RSS", alpha=0.7)
    warm = report["rss_mb"]["warm"]
    top.axvline(report["load"]["warm_up_s"], color="grey", linestyle=":", label="end of warm-up")
    top.axhline(warm * (1 + MEMORY_GROWTH_TARGET), color="red", linestyle="--", linewidth=0.8,
                label=f"warm-up RSS + {MEMORY_GROWTH_TARGET:.0%}")  # fmt: skip
    top.set_ylabel("MB")
    top.legend(fontsize=7, loc="center right")
    top.set_title(
        f"soak: {report['requests']} requests, error rate {report['error_rate']:.3%}, "
        f"memory growth {report['memory_growth']:+.2%}",
        fontsize=9,
    )
    mids = [w["start_s"] + report["window_seconds"] / 2 for w in windows]
    bottom.plot(mids, [w["p99_ms"] for w in windows], marker="o", label="p99")
    bottom.plot(mids, [w["p50_ms"] for w in windows], marker=".", label="p50")
    bottom.set_ylabel(f"ms per {report['window_seconds']:g} s window")
    bottom.set_xlabel("seconds since the traffic started")
    others = bottom.twinx()
    others.fill_between(
        mids,
        [w["other_cpu_cores"] or 0.0 for w in windows],
        step="mid",
        color="grey",
        alpha=0.2,
        label="other processes' CPU",
    )
    others.set_ylabel("cores used by other processes")
    others.set_ylim(0, max(2.0, *(w["other_cpu_cores"] or 0.0 for w in windows)))
    lines, labels = bottom.get_legend_handles_labels()
    more, more_labels = others.get_legend_handles_labels()
    bottom.legend(lines + more, labels + more_labels, fontsize=7, loc="upper right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


# --------------------------------------------------------------------------- docs


def write_docs(path: Path, report: dict[str, Any]) -> None:
    """Rewrite the soak section of ``path`` (between its markers; appended if absent)."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    path.write_text(splice_section(text, render_section(report)), encoding="utf-8")


def splice_section(text: str, section: str) -> str:
    """``text`` with the marked soak section replaced by ``section`` (or appended)."""
    return docs_section.splice_section(text, section, DOCS_BEGIN, DOCS_END)


def _pct(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}%}"


def render_section(report: dict[str, Any]) -> str:
    m, s, load, rss = report["model"], report["server"], report["load"], report["rss_mb"]
    machine, events, mem = report["machine"], report["events"], report["memory"]
    t = report["targets"]
    responses, metrics = report["responses"], report["server_metrics"]
    la = report["load_average"]
    growth = report["memory_growth"]
    per_process = ", ".join(
        f"{name.split(':')[0].replace('_', ' ')} {fig['warm']:.0f} → {fig['end']:.0f} MB "
        f"({_pct(fig['growth'])})"
        for name, fig in mem["per_process"].items()
    )
    cpu = report.get("cpu_cores_mean", {})
    lines = [
        "## Soak (`benchmarks/soak.py`)",
        "",
        f"Measured {report['measured_at']} on {machine['cpus']} CPU cores (torch "
        f"{machine['torch']}, Python {machine['python']}): `{report['command']}`. "
        f"Load average (1/5/15 min) {'/'.join(f'{x:.2f}' for x in la['start'])} when the "
        f"traffic started, {'/'.join(f'{x:.2f}' for x in la['end'])} at the end.",
        f"`moerec serve` in its own process on loopback (uvicorn, one worker, SQLite, local "
        f"cache of at most {s['local_cache_entries']:,} entries with a {s['cache_ttl_seconds']} s "
        f"TTL, the model in {'a child process' if s['model_process'] else 'a thread'}, "
        f"{s['allocator']}, log level info, rate limits out of the way) serving a model of the "
        f"{report['data']['source']} shape ({m['items']:,} items, {m['layers']} layers, "
        f"{m['experts']} experts, top-{m['top_k']}, hidden {m['hidden']}, max length "
        f"{m['max_len']}; {m['note']}). Load: {load['minutes']:g} minutes of mixed traffic "
        f"from one asyncio client (httpx, {load['connections']} keep-alive connections) on the "
        f"same machine, an open loop at {load['rate']:g} requests/s with at most "
        f"{load['max_in_flight']} in flight; {load['hot_share']:.0%} of the user requests go "
        f"to {load['hot_users']} hot users (cache hits), the rest to any of the "
        f"{report['data']['requestable_users']:,} users; {load['event_retry_share']:.0%} of "
        "the stored events are sent again with the same idempotency key (a client retry).",
        "",
        f"**Error rate** (5xx or transport errors / requests): **{_pct(report['error_rate'], 3)}**"
        f" ({report['failed_requests']} of {report['requests']:,}; "
        f"{report['client_errors_4xx']} 4xx). "
        f"**p99** {report['p99_ms']:.1f} ms (p50 {report['p50_ms']:.1f}, "
        f"p95 {report['p95_ms']:.1f}, max {report['max_ms']:.0f}; "
        f"p99 after warm-up {report['p99_ms_after_warm_up']:.1f}"
        + (
            f"; p99 {report['p99_ms_quiet']:.1f} over the {report['quiet_share']:.0%} of "
            f"requests sent while other processes used under {QUIET_OTHER_CORES:g} cores"
            if report.get("p99_ms_quiet") is not None
            else ""
        )
        + f") at {report['rps']:.1f} req/s"
        + (
            f" ({load['skipped_slots']:,} scheduled requests skipped: the generator fell more "
            "than 1 s behind)"
            if load["skipped_slots"]
            else ""
        )
        + ". "
        f"**Memory growth** after warm-up: **{_pct(growth)}** — target < "
        f"{t['memory_growth_target']:.0%} **{'met' if t['memory_growth_met'] else 'NOT met'}** "
        f"(service RSS {rss['start']:.0f} MB when the traffic started, {rss['warm']:.0f} MB at "
        f"the end of warm-up ({load['warm_up_s']:.0f} s), median {rss['end']:.0f} MB over the "
        f"last {mem['end_window_s'][1] - mem['end_window_s'][0]:.0f} s, peak {rss['peak']:.0f} "
        f"MB; per process: {per_process}"
        + (f"; private memory (USS) {_pct(mem['uss']['growth'])}" if "uss" in mem else "")
        + "). "
        f"**Events**: {events['acknowledged']:,} acknowledged "
        f"({events['acknowledged_202_spooled']} of them spooled), stored exactly once: "
        f"**{'yes' if report['events_stored_exactly_once'] else 'NO'}** "
        f"({events['missing']} missing, {events['stored_more_than_once']} twice); "
        f"{responses['event_retries_answered_duplicate']} retries answered 200 duplicate, "
        f"{responses['event_retries_not_duplicate']} otherwise.",
        "",
        "| requests | count | share | p50 ms | p95 ms | p99 ms | max ms | statuses |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for entry in report["per_kind"].values():
        statuses = ", ".join(f"{k}: {v:,}" for k, v in entry["status_counts"].items())
        lines.append(
            f"| `{entry['label']}` | {entry['requests']:,} | {entry['share']:.1%} | "
            f"{entry['p50_ms']:.1f} | {entry['p95_ms']:.1f} | {entry['p99_ms']:.1f} | "
            f"{entry['max_ms']:.0f} | {statuses} |"
        )
    lines += [
        "",
        "Per minute (RSS at the minute's end; *other CPU*: the most cores that processes other "
        "than the service and the load generator used in any 5 s of the minute):",
        "",
        "| minute | req/s | p50 ms | p99 ms | failed | service RSS MB | other CPU |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += _minute_rows(report)
    hit_ratio = metrics.get("hit_ratio")
    lines += [
        "",
        f"Server counters over the run: cache hit ratio {_pct(hit_ratio, 1)}, mean micro-batch "
        f"{metrics['mean_batch_size']}, model busy {metrics['model_busy']:.0%}, "
        f"{metrics['degraded_requests']:.0f} degraded requests, "
        f"{metrics['fallback_answers']:.0f} fallback answers; "
        f"{responses['distinct_users_asked_for_recommendations']:,} distinct users asked for "
        f"recommendations. Mean CPU (cores): "
        + ", ".join(f"{name.replace('_', ' ')} {value:.2f}" for name, value in cpu.items())
        + ". Server log: "
        + (
            ", ".join(f"{n} {level} line(s)" for level, n in s["logged_errors"]["counts"].items())
            or "no warnings or errors"
        )
        + ".",
    ]
    notes = report.get("notes") or []
    if notes:
        lines += ["", "Findings (`--note`):", "", *(f"- {note}" for note in notes)]
    lines += [
        "",
        "The RSS series (every 5 s) and the per-window latencies are in "
        "`benchmarks/results/soak.json`; the plot above (`docs/img/soak-memory.png`) is drawn "
        "from it by `python benchmarks/plots.py --docs docs/benchmarks.md`. Reproduce with "
        "`make bench-soak DATA_ROOT=...` (the command above); "
        "`python benchmarks/soak.py --render-only --docs docs/benchmarks.md` rewrites this "
        "section from `benchmarks/results/soak.json`.",
    ]
    return "\n".join(lines)


def _minute_rows(report: dict[str, Any]) -> list[str]:
    return [
        f"| {row['minute']} | {row['rps']:.1f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
        f"{row['failed']} | {row['rss_mb']:.0f} | "
        + ("" if row["other_cpu_cores"] is None else f"{row['other_cpu_cores']:.2f}")
        + " |"
        for row in report["minutes"]
    ]


if __name__ == "__main__":
    raise SystemExit(main())
