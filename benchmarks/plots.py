"""Figures for docs/benchmarks.md, drawn from the committed results in benchmarks/results/.

Reads serving.json, soak.json and quality-*.json (whichever are present) and writes one PNG per
figure the data supports; a figure whose data is missing is left out, never made up. The
output is deterministic: the same JSON gives the same bytes (fixed style, no timestamp).

    python benchmarks/plots.py                                # PNGs into docs/img/
    python benchmarks/plots.py --docs docs/benchmarks.md      # ... and rewrite its plots section
    python benchmarks/plots.py --output-dir DIR              # elsewhere (what CI runs)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.style
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, LogLocator, NullLocator, ScalarFormatter

import docs_section
from quality_reports import (
    config_order,
    feature_mode,
    is_sweep,
    retired_until,
    seed_runs,
    variants_run,
)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DOCS_BEGIN = "<!-- plots:begin (written by benchmarks/plots.py; do not edit) -->"
DOCS_END = "<!-- plots:end -->"
COMMAND = "python benchmarks/plots.py"
WIDTH_IN = 7.0
DPI = 100
# Everything that decides a pixel, from matplotlib's defaults (no matplotlibrc is read).
STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "svg.hashsalt": "moerec-benchmarks",
    "path.simplify": True,
}
VARIANTS = ("moe", "dense-active", "dense-params")
COLORS = {
    "uncached": "tab:blue",
    "cached": "tab:green",
    "ceiling": "tab:grey",
    "moe": "tab:blue",
    "dense-active": "tab:orange",
    "dense-params": "tab:purple",
}


@dataclass(frozen=True)
class Plot:
    """One figure: its file name, the JSON it is drawn from and its caption in the docs."""

    name: str
    source: str
    alt: str
    caption: str


Results = dict[str, Any]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = load_results(args.results_dir)
    written = write_plots(results, args.output_dir)
    for plot in written:
        print(f"wrote {args.output_dir / plot.name}", file=sys.stderr)
    if args.docs is not None:
        image_dir = Path(os.path.relpath(args.output_dir, args.docs.resolve().parent))
        text = args.docs.read_text(encoding="utf-8") if args.docs.is_file() else ""
        args.docs.write_text(
            splice_section(text, render_section(written, image_dir)), encoding="utf-8"
        )
        print(f"wrote {args.docs}", file=sys.stderr)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--results-dir", type=Path, default=RESULTS, help="Where the JSON files are.")
    p.add_argument("--output-dir", type=Path, default=REPO / "docs" / "img", help="PNGs go here.")
    p.add_argument(
        "--docs",
        type=Path,
        default=None,
        help="Markdown file whose plots section (between its markers) is rewritten.",
    )
    return p.parse_args(argv)


def load_results(results_dir: Path) -> Results:
    """``{"serving": ..., "soak": ..., "quality": [...]}`` for the files that exist."""
    results: Results = {"quality": []}
    for key in ("serving", "soak"):
        path = results_dir / f"{key}.json"
        if path.is_file():
            results[key] = json.loads(path.read_text(encoding="utf-8"))
    results["routing"] = [
        json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(results_dir.glob("routing-*.json"))
    ]
    for path in sorted(results_dir.glob("quality-*.json")):
        report = json.loads(path.read_text(encoding="utf-8"))
        until = retired_until(path)
        # kept beside the current files, so that an older sweep still finds its own variants run
        results["quality"].append({**report, "retired_until": until} if until else report)
    return results


def current(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The reports of the frozen configs as they are: files moved aside left out."""
    return [report for report in reports if not report.get("retired_until")]


def write_plots(results: Results, output_dir: Path) -> list[Plot]:
    """Every figure the results support, as PNGs in ``output_dir``; the ones written."""
    makers: list[Callable[[Results], tuple[Figure, Plot] | None]] = [
        serving_throughput,
        serving_latency,
        soak_memory,
        quality_ndcg,
        expert_load,
        top_p_curve,
    ]
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with matplotlib.style.context(["default", STYLE]):
        for make in makers:
            made = make(results)
            if made is None:
                continue
            figure, plot = made
            figure.savefig(output_dir / plot.name, dpi=DPI, metadata={"Software": None})
            written.append(plot)
    return written


# --------------------------------------------------------------------------- figures


def _figure(height_in: float, rows: int = 1, cols: int = 1, **kwargs: Any) -> tuple[Figure, Any]:
    figure = Figure(figsize=(WIDTH_IN, height_in), dpi=DPI, layout="constrained")
    return figure, figure.subplots(rows, cols, squeeze=False, **kwargs)


def _connections_axis(ax: Axes, concurrencies: list[int]) -> None:
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(concurrencies))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("keep-alive connections (log scale)")


def _log_y(ax: Axes) -> None:
    """A log y axis labelled 1, 2, 5, 10, 20, ... in plain numbers."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_locator(NullLocator())


def _serving_runs(report: dict[str, Any], key: str) -> list[dict[str, Any]]:
    runs = report.get(key, {}).get("runs", [])
    return sorted(runs, key=lambda run: run["concurrency"])


def serving_throughput(results: Results) -> tuple[Figure, Plot] | None:
    report = results.get("serving")
    if report is None:
        return None
    figure, axes = _figure(3.6)
    ax: Axes = axes[0][0]
    series = [
        ("uncached", "uncached (every request a cache miss)"),
        ("cached", "cached (every request a cache hit)"),
        ("ceiling", "in-process ceiling (MicroBatcher, no HTTP)"),
    ]
    concurrencies: set[int] = set()
    for key, label in series:
        runs = _serving_runs(report, key)
        if not runs:
            continue
        x = [run["concurrency"] for run in runs]
        y = [run["rps"] for run in runs]
        spread = [run.get("spread", {}).get("rps") for run in runs]
        if all(s is not None for s in spread):
            low = [v - s[0] for v, s in zip(y, spread, strict=True)]
            high = [s[1] - v for v, s in zip(y, spread, strict=True)]
            ax.errorbar(
                x, y, yerr=[low, high], marker="o", capsize=3, label=label, color=COLORS[key]
            )
        else:
            ax.plot(x, y, marker="o", label=label, color=COLORS[key])
        concurrencies.update(x)
    target = report.get("targets", {}).get("ceiling_fraction_target")
    ceiling = _serving_runs(report, "ceiling")
    if target is not None and ceiling:
        ax.plot(
            [run["concurrency"] for run in ceiling],
            [run["rps"] * target for run in ceiling],
            linestyle=":",
            color=COLORS["ceiling"],
            label=f"{target:.0%} of the ceiling (uncached target)",
        )
    _connections_axis(ax, sorted(concurrencies))
    ax.set_ylabel("requests/s (median of runs; bars: min–max)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"moerec serve, GET …/recommendations?k=10, {_machine(report)}")
    ax.legend(loc="upper left")
    return figure, Plot(
        "serving-throughput.png",
        "serving.json",
        "Requests per second against connections: uncached, cached and the in-process ceiling",
        "Throughput of `moerec serve` against the number of keep-alive connections (closed "
        "loop, wrk): cache misses, cache hits and the in-process ceiling for misses.",
    )


def serving_latency(results: Results) -> tuple[Figure, Plot] | None:
    report = results.get("serving")
    runs = _serving_runs(report, "uncached") if report else []
    if not runs:
        return None
    assert report is not None
    figure, axes = _figure(3.6)
    ax: Axes = axes[0][0]
    x = [run["concurrency"] for run in runs]
    for key, marker in (("p50_ms", "o"), ("p95_ms", "s"), ("p99_ms", "^")):
        ax.plot(x, [run[key] for run in runs], marker=marker, label=key.removesuffix("_ms"))
    target = report.get("targets", {}).get("p95_target_ms")
    if target is not None:
        ax.axhline(
            target, color="tab:red", linestyle="--", linewidth=1, label=f"p95 target {target:g} ms"
        )
    _connections_axis(ax, x)
    _log_y(ax)
    ax.set_ylabel("latency, ms (log scale)")
    ax.set_title(f"uncached requests (cache misses), {_machine(report)}")
    ax.legend(loc="upper left")
    return figure, Plot(
        "serving-latency.png",
        "serving.json",
        "p50, p95 and p99 latency of uncached requests against connections, with the 29 ms target",
        "Latency of cache misses (median of runs) against the number of connections, with the "
        "p95 target.",
    )


def soak_memory(results: Results) -> tuple[Figure, Plot] | None:
    report = results.get("soak")
    series = report.get("memory", {}).get("series", []) if report else []
    if not series:
        return None
    assert report is not None
    windows = report.get("windows", [])
    rows = 2 if windows else 1
    figure, axes = _figure(5.2 if windows else 3.2, rows, 1, sharex=True)
    top: Axes = axes[0][0]
    t = [s["t"] for s in series]
    lines = [
        ("rss_mb", "service (server + model process)"),
        ("server_rss_mb", "server process"),
        ("model_process_rss_mb", "model process"),
    ]
    for key, label in lines:
        if all(key in s for s in series):
            top.plot(t, [s[key] for s in series], label=label)
    warm_up = report.get("load", {}).get("warm_up_s", report["memory"].get("warm_sample_t"))
    if warm_up is not None:
        top.axvline(
            warm_up,
            color="black",
            linestyle=":",
            linewidth=1,
            label=f"end of warm-up ({warm_up:g} s)",
        )
    warm = report["memory"].get("warm")
    target = report.get("targets", {}).get("memory_growth_target")
    if warm is not None and target is not None:
        top.axhline(
            warm * (1 + target),
            color="tab:red",
            linestyle="--",
            linewidth=1,
            label=f"warm-up RSS + {target:.0%} (growth target)",
        )
    top.set_ylabel("RSS, MB")
    top.set_ylim(bottom=0)
    top.legend(loc="lower right", ncols=2)
    growth = report.get("memory_growth")
    top.set_title(
        f"soak: {report.get('requests', 0):,} requests over {_minutes(report)}"
        + (f", memory growth after warm-up {growth:+.1%}" if growth is not None else "")
    )
    bottom: Axes = axes[-1][0]
    if windows:
        width = float(report.get("window_seconds", 0.0))
        mids = [w["start_s"] + width / 2 for w in windows]
        bottom.plot(mids, [w["p99_ms"] for w in windows], marker="o", label="p99")
        bottom.plot(mids, [w["p50_ms"] for w in windows], marker=".", label="p50")
        _log_y(bottom)
        bottom.set_ylabel(f"ms per {width:g} s window (log)")
        if warm_up is not None:
            bottom.axvline(warm_up, color="black", linestyle=":", linewidth=1)
        if all(w.get("other_cpu_cores") is not None for w in windows):
            others = bottom.twinx()
            others.grid(False)
            others.fill_between(
                mids,
                [w["other_cpu_cores"] for w in windows],
                step="mid",
                color="grey",
                alpha=0.2,
                label="cores used by other processes",
            )
            others.set_ylim(0, max(2.0, *(w["other_cpu_cores"] for w in windows)))
            others.set_ylabel("other processes, cores")
            others.spines["right"].set_visible(True)
            bottom.set_zorder(others.get_zorder() + 1)  # the lines above the shading
            bottom.patch.set_visible(False)
            handles, labels = bottom.get_legend_handles_labels()
            more, more_labels = others.get_legend_handles_labels()
            handles, labels = handles + more, labels + more_labels
        else:
            handles, labels = bottom.get_legend_handles_labels()
        bottom.legend(
            handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=3, frameon=False
        )
    bottom.set_xlabel("seconds since the traffic started")
    return figure, Plot(
        "soak-memory.png",
        "soak.json",
        "Service RSS over the soak run with the end of warm-up marked, and p50/p99 per window",
        "Memory of the service over the soak run (sampled every "
        f"{report.get('load', {}).get('sample_s', 5):g} s) with the end of warm-up marked"
        + (
            "; below, p50 and p99 per window and the CPU other processes on the machine used."
            if windows
            else "."
        ),
    )


def quality_ndcg(results: Results) -> tuple[Figure, Plot] | None:
    reports = [
        r
        for r in current(results["quality"])
        if not is_sweep(r) and any(row["variant"] in VARIANTS for row in r["rows"])
    ]
    if not reports:
        return None
    figure, axes = _figure(3.4)
    ax: Axes = axes[0][0]
    width = 0.8 / len(VARIANTS)
    for i, variant in enumerate(VARIANTS):
        xs, ys = [], []
        for j, report in enumerate(reports):
            row = next((r for r in report["rows"] if r["variant"] == variant), None)
            if row is not None:
                xs.append(j + (i - (len(VARIANTS) - 1) / 2) * width)
                ys.append(row["test"]["ndcg@10"])
        if xs:
            bars = ax.bar(xs, ys, width, label=variant, color=COLORS[variant])
            # upright labels overlap once a group's three bars are narrower than "0.0000"
            ax.bar_label(bars, fmt="%.4f", fontsize=7, padding=2, rotation=90)
    ax.set_xticks(range(len(reports)), [_dataset_label(r) for r in reports])
    ax.xaxis.grid(False)
    ax.set_ylabel("test NDCG@10 (full ranking)")
    ax.margins(y=0.3)
    ax.set_title("MoE against dense baselines with the same active FLOPs / the same parameters")
    ax.legend(loc="upper left")
    return figure, Plot(
        "quality.png",
        "quality-*.json",
        "Test NDCG@10 per data set for the moe, dense-active and dense-params variants",
        "Test NDCG@10 at the epoch with the best validation NDCG@10, per data set: the MoE model, "
        "a dense model with its active FLOPs (dense-active) and one with its parameters "
        "(dense-params).",
    )


def _dataset_label(report: dict[str, Any]) -> str:
    """The data set's name, and what the model read besides items when that was more."""
    features, _, time = feature_mode(report).partition("+")
    extras = ("+ attributes " if features != "none" else "") + ("+ time" if time else "")
    return report["dataset"] + ("\n" + extras.strip() if extras else "")


def expert_load(results: Results) -> tuple[Figure, Plot] | None:
    """One panel per data set (three to a row, so the figure stays small as data sets are
    added), each MoE layer's load as its own bars."""
    by_dataset: dict[str, list[dict[str, Any]]] = {}
    # the items-only run of each data set, when there is one
    for report in sorted(current(results["quality"]), key=lambda r: feature_mode(r) != "none"):
        if is_sweep(report):
            continue
        for row in report["rows"]:
            if row["variant"] != "moe":
                continue
            layers = [x for x in (row.get("routing") or {}).get("layers", []) if x.get("load")]
            if layers and report["dataset"] not in by_dataset:
                by_dataset[report["dataset"]] = layers
    if not by_dataset:
        return None
    cols = min(3, len(by_dataset))
    rows = -(-len(by_dataset) // cols)
    figure, axes = _figure(0.6 + 2.4 * rows, rows, cols, sharey=True)
    for ax in axes.flat[len(by_dataset) :]:
        ax.set_visible(False)
    shades = ["tab:blue", "tab:cyan", "tab:olive", "tab:brown"]
    for index, (name, layers) in enumerate(by_dataset.items()):
        ax = axes.flat[index]
        width = 0.8 / len(layers)
        for number, layer in enumerate(layers, 1):
            load = layer["load"]
            offset = (number - 1 - (len(layers) - 1) / 2) * width
            ax.bar(
                [e + offset for e in range(len(load))],
                load,
                width=width,
                color=shades[(number - 1) % len(shades)],
                label=f"layer {number}",
            )
        experts = range(len(layers[0]["load"]))
        ax.axhline(1 / len(experts), color="tab:red", linestyle="--", linewidth=1, label="uniform")
        ax.set_xticks(experts, [str(e) for e in experts])
        ax.xaxis.grid(False)
        imbalance = [x["imbalance"] for x in layers if x.get("imbalance") is not None]
        detail = f"max/mean {max(imbalance):.2f}" if imbalance else ""
        ax.set_title(f"{name}\n{detail}".strip())
        if index % cols == 0:
            ax.set_ylabel("share of routed slots")
        if index >= len(by_dataset) - cols:
            ax.set_xlabel("expert")
    axes.flat[0].legend(loc="upper right", fontsize="small")
    return figure, Plot(
        "expert-load.png",
        "quality-*.json",
        "Share of routed slots per expert in each MoE layer, per data set",
        "Share of the routed token slots each expert received on the test set, per MoE layer "
        "(the `routing` of the moe rows, one bar colour per layer), against a uniform load; the "
        "title gives the worst layer's max/mean load.",
    )


def top_p_curve(results: Results) -> tuple[Figure, Plot] | None:
    """Test NDCG@10 against experts per token, one point per trained top-p mass, beside the
    same data set's top-k MoE and its dense-active baseline (from its quality-<name>.json)."""
    sweeps = [r for r in results["quality"] if any("top_p" in row for row in r["rows"])]
    # A retired config's curve is drawn only until the current config has one of its own.
    current = {(r["dataset"], feature_mode(r)) for r in sweeps if not r.get("retired_until")}
    sweeps = [
        r
        for r in sweeps
        if not r.get("retired_until") or (r["dataset"], feature_mode(r)) not in current
    ]
    if not sweeps:
        return None
    # routing.py reroutes a model of the data set's config as it was when it ran: the newest
    # sweep shown (the current one, else the last retired) is the one it belongs beside.
    by_age = sorted(sweeps, key=lambda sweep: config_order(sweep.get("retired_until")))
    newest = {sweep["dataset"]: sweep for sweep in by_age}  # the last of each data set wins
    figure, axes = _figure(4.4, 1, len(sweeps))
    for ax, sweep in zip(axes[0], sweeps, strict=True):
        points = sorted(
            (row["routing"]["experts_per_token"], row["test"]["ndcg@10"], row["top_p"])
            for row in sweep["rows"]
            if "top_p" in row
        )
        ax.plot(
            [x for x, _, _ in points],
            [y for _, y, _ in points],
            marker="o",
            color=COLORS["moe"],
            label="moe, top-p routing",
        )
        for x, y, p in points:
            ax.annotate(f"p={p:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        rerouted = next(
            (r for r in results.get("routing", []) if r["name"] == sweep["dataset"]), None
        )
        if rerouted is not None and newest[sweep["dataset"]] is sweep:
            at_inference = sorted(
                (row["experts_per_token"], row["test"]["ndcg@10"])
                for row in rerouted["rows"]
                # capacity rows drop slots at the same experts per token: not on this curve
                if not row.get("routing", {}).get("model.moe_capacity_factor_eval")
            )
            ax.plot(
                [x for x, _ in at_inference],
                [y for _, y in at_inference],
                marker="x",
                linestyle=":",
                color="tab:gray",
                label=f"one {rerouted['model']['feed_forward']} model, routed at inference",
            )
        plain = variants_run(results["quality"], sweep)
        rows = {row["variant"]: row for row in plain["rows"]} if plain else {}
        if "moe" in rows:
            moe = rows["moe"]
            ax.plot(
                [moe["routing"]["experts_per_token"]],
                [moe["test"]["ndcg@10"]],
                marker="s",
                linestyle="none",
                color="tab:red",
                label=f"moe, top-{plain['config']['model']['moe_top_k']}",
            )
        spread = [row["test"]["ndcg@10"] for row in seed_runs(results["quality"], sweep, "moe")]
        if "moe" in rows and len(spread) > 1:
            x = rows["moe"]["routing"]["experts_per_token"]
            ax.vlines(x, min(spread), max(spread), color="tab:red", linewidth=1)
            ax.annotate(
                f"{len(spread)} seeds",
                (x, max(spread)),
                textcoords="offset points",
                xytext=(4, 0),
                fontsize=7,
            )
        if "dense-active" in rows:
            ax.axhline(
                rows["dense-active"]["test"]["ndcg@10"],
                color=COLORS["dense-active"],
                linestyle="--",
                linewidth=1,
                label="dense-active (top-k FLOPs)",
            )
        ax.set_xlabel("routed experts per token\n(test set, mean over MoE layers)")
        ax.set_ylabel("test NDCG@10")
        until = sweep.get("retired_until")
        ax.set_title(
            f"{sweep['dataset']}: quality against experts used"
            + (f"\n(frozen config until {until})" if until else "")
        )
        ax.margins(x=0.15, y=0.2)
        # below the axes: inside, it would cover the curves that cross the panel
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=7)
    return figure, Plot(
        "top-p-curve.png",
        "quality-*-topp.json` and `routing-*.json"
        if results.get("routing")
        else "quality-*-topp.json",
        "Test NDCG@10 against routed experts per token for MoE models trained with top-p routing",
        "One MoE model trained per probability mass p with top-p routing (the smallest expert set "
        "whose router probability reaches p, clamped to 2..4): its test NDCG@10 against the mean "
        "number of routed experts per token it used on the test set. The square is the top-k "
        "MoE of the same data set, with a vertical line from its lowest to its highest result "
        "over seeds where a seed sweep exists; the dashed line its dense-active baseline. Where "
        "benchmarks/routing.py has measured it, the dotted grey line is one top-k model trained "
        "once and served with other routings (top-1..4, top-p over 1..4 experts).",
    )


def _machine(report: dict[str, Any]) -> str:
    machine = report.get("machine", {})
    return f"{machine['cpus']} CPU cores" if "cpus" in machine else "one machine"


def _minutes(report: dict[str, Any]) -> str:
    seconds = float(report.get("duration_seconds", 0.0))
    return f"{seconds / 60:g} min"


# --------------------------------------------------------------------------- docs


def render_section(plots: list[Plot], image_dir: Path) -> str:
    """The docs section showing ``plots`` (image paths relative to the Markdown file)."""
    lines = [
        "## Plots (`benchmarks/plots.py`)",
        "",
        "Drawn from the JSON files in `benchmarks/results/` that the tables on this page come "
        f"from; `{COMMAND} --docs docs/benchmarks.md` redraws them and rewrites this section.",
        "",
    ]
    if not plots:
        lines.append("No results to draw.")
    for plot in plots:
        lines += [
            f"![{plot.alt}]({(image_dir / plot.name).as_posix()})",
            "",
            f"*{plot.caption} From `benchmarks/results/{plot.source}`; made by `{COMMAND}`.*",
            "",
        ]
    return "\n".join(lines)


def splice_section(text: str, section: str) -> str:
    """``text`` with the marked plots section replaced by ``section``.

    Without the markers the section goes after the first heading and the text under it (just
    before the next heading), so the page's introduction stays first; with no heading at all,
    at the top. Text outside the markers is never changed.
    """
    return docs_section.splice_section(text, section, DOCS_BEGIN, DOCS_END, _after_intro)


def _after_intro(text: str, block: str) -> str:
    lines = text.splitlines(keepends=True)
    headings = [i for i, line in enumerate(lines) if line.startswith("#")]
    if not headings:
        return block + ("\n" + text if text else "")
    # before the next heading or the next section another script owns, whichever comes first
    later = [
        i
        for i, line in enumerate(lines)
        if i > headings[0] and not _in_code(lines, i) and line.startswith(("#", "<!-- "))
    ]
    at = later[0] if later else len(lines)
    head = "".join(lines[:at])
    if head and not head.endswith("\n"):
        head += "\n"
    if head and not head.endswith("\n\n"):
        head += "\n"
    tail = "".join(lines[at:])
    return head + block + ("\n" + tail if tail else "")


def _in_code(lines: list[str], index: int) -> bool:
    """Whether line ``index`` is inside a fenced code block (a ``#`` comment, not a heading)."""
    return sum(line.startswith("```") for line in lines[:index]) % 2 == 1


if __name__ == "__main__":
    raise SystemExit(main())
