"""A training run as one report: its metrics, routing statistics and plots in a single file.

Reads what :mod:`moerec.training.runlog` wrote into the run folder (``log.jsonl`` and
``plots/*.png``). HTML embeds the plots as base64 PNG, so the one file can be mailed or
attached to a review; markdown links to the PNG files instead. A run that stopped before its
end (no plots yet) gets its plots drawn from the log first, exactly as the trainer would.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from moerec import MoerecError
from moerec.training.runlog import LOG_NAME, plot_run

PLOTS_DIR = "plots"
PLOT_ORDER = ("loss.png", "valid_ndcg.png", "expert_load.png")
PLOT_TITLES = {
    "loss.png": "Training loss (cross-entropy and router auxiliary loss)",
    "valid_ndcg.png": "Validation NDCG@10 and HR@10 (full ranking)",
    "expert_load.png": "Expert load per layer and epoch (share of routed slots)",
}
ReportFormat = Literal["html", "markdown"]
FORMATS: tuple[ReportFormat, ...] = ("html", "markdown")


class RunDirError(MoerecError):
    """The path is not a training run folder, or its log cannot be read."""


@dataclass
class Run:
    """What one run folder holds."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    end: dict[str, Any] | None = None
    plots: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.path.name)

    @property
    def variant(self) -> str:
        return str(self.config.get("variant", "?"))

    @property
    def finished(self) -> bool:
        return self.end is not None


def load_run(run_dir: Path) -> Run:
    """Read a run folder; raises :class:`RunDirError` with what to pass instead."""
    hint = (
        "pass the folder given to `moerec train --run-dir` (default runs/NAME-DATE-TIME), "
        "or .moerec-demo/run after `moerec demo`"
    )
    if not run_dir.exists():
        raise RunDirError(f"{run_dir} does not exist; {hint}")
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is a file, not a training run folder; {hint}")
    log_path = run_dir / LOG_NAME
    if not log_path.is_file():
        raise RunDirError(f"{run_dir} is not a training run folder (no {LOG_NAME} in it); {hint}")
    records = _read_records(log_path)
    run = Run(path=run_dir)
    for record in records:
        event = record.get("event")
        if event == "start":
            run.config = record.get("config", {})
            run.data = record.get("data", {})
        elif event == "epoch":
            run.epochs.append(record)
        elif event == "end":
            run.end = record
    if not run.epochs and run.end is None:
        raise RunDirError(f"{log_path} holds no finished epoch yet; report on the run later")
    run.plots = _plots(run_dir / PLOTS_DIR, records)
    return run


def _read_records(log_path: Path) -> list[dict[str, Any]]:
    """Like ``runlog.read_log``, but a broken line is named (a log cut off by a crash)."""
    records = []
    for number, line in enumerate(log_path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise RunDirError(f"{log_path}: line {number} is not JSON ({exc.msg})") from None
    return records


def _plots(plots_dir: Path, records: list[dict[str, Any]]) -> list[Path]:
    """The run's PNGs, known ones first; drawn from the log when the run has none yet."""
    found = sorted(plots_dir.glob("*.png")) if plots_dir.is_dir() else []
    if not found:
        found = plot_run(records, plots_dir)
    rank = {name: i for i, name in enumerate(PLOT_ORDER)}
    return sorted(found, key=lambda p: (rank.get(p.name, len(rank)), p.name))


# --------------------------------------------------------------------------- tables


def _number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.1f}"
    return str(value)


def summary_rows(run: Run) -> list[tuple[str, str]]:
    rows = [("run folder", str(run.path)), ("model", f"{run.name} ({run.variant})")]
    model = run.config.get("model", {})
    if model:
        rows.append(
            (
                "shape",
                f"{model.get('num_layers')} layers, D={model.get('hidden_size')}, "
                f"{model.get('moe_num_experts')} experts, router {model.get('moe_router')} "
                f"(k={model.get('moe_top_k')})",
            )
        )
    rows += [(f"data: {key}", _number(value)) for key, value in run.data.items()]
    if run.end is not None:
        rows += [
            ("status", "finished"),
            ("best epoch", f"{run.end.get('best_epoch')} of {run.end.get('epochs_run')}"),
            ("training time", f"{run.end.get('train_seconds', 0):.1f} s"),
        ]
    else:
        last = run.epochs[-1]
        rows += [
            ("status", "not finished (no end record): interrupted, or still running"),
            ("epochs logged", str(last.get("epoch"))),
            ("training time", f"{last.get('train_seconds', 0):.1f} s"),
        ]
    return rows


def metric_rows(run: Run) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per metric, valid and test columns (end of run)."""
    if run.end is None:
        validated = [r for r in run.epochs if "valid" in r]
        if not validated:
            return [], []
        best = max(validated, key=lambda r: r["valid"].get("ndcg@10", 0.0))
        header = ["metric", f"valid (epoch {best['epoch']}, best so far)"]
        return header, [[key, _number(v)] for key, v in best["valid"].items()]
    valid, test = run.end.get("valid", {}), run.end.get("test", {})
    keys = list(dict.fromkeys([*valid, *test]))
    return ["metric", "valid", "test"], [
        [key, _number(valid.get(key, "")), _number(test.get(key, ""))] for key in keys
    ]


def routing_rows(run: Run) -> tuple[list[str], list[list[str]]]:
    """Per-layer routing on the test split (or the last epoch of an unfinished run)."""
    source = run.end if run.end is not None else run.epochs[-1]
    layers = source.get("routing", {}).get("layers", [])
    if not layers:
        return [], []
    header = ["layer", "experts per token", "imbalance (max/mean)", "entropy / max", "load"]
    rows = []
    for i, layer in enumerate(layers):
        entropy = f"{layer.get('entropy', 0):.3f} / {layer.get('max_entropy', 0):.3f}"
        load = " ".join(f"{x:.2f}" for x in layer.get("load", []))
        rows.append(
            [str(i), f"{layer.get('experts_per_token', 0):.2f}",
             f"{layer.get('imbalance', 0):.2f}", entropy, load]
        )  # fmt: skip
    return header, rows


def epoch_rows(run: Run) -> tuple[list[str], list[list[str]]]:
    header = ["epoch", "loss", "aux loss", "lr", "valid ndcg@10", "valid hr@10", "time (s)"]
    rows = []
    for r in run.epochs:
        valid = r.get("valid", {})
        rows.append(
            [
                str(r.get("epoch")),
                f"{r.get('loss', 0):.4f}",
                f"{r.get('aux_loss', 0):.4f}",
                f"{r.get('lr', 0):.2e}",
                f"{valid['ndcg@10']:.4f}" if "ndcg@10" in valid else "",
                f"{valid['hr@10']:.4f}" if "hr@10" in valid else "",
                f"{r.get('train_seconds', 0):.1f}",
            ]
        )
    return header, rows


def _config_yaml(run: Run) -> str:
    return yaml.safe_dump(run.config, sort_keys=False) if run.config else "(not logged)\n"


# --------------------------------------------------------------------------- HTML

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1000px;
       padding: 0 16px; color: #18181b; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border-bottom: 1px solid #e4e4e7; padding: 3px 12px 3px 0; text-align: left;
         font-variant-numeric: tabular-nums; }
figure { margin: 12px 0; } img { max-width: 100%; border: 1px solid #e4e4e7; }
figcaption { color: #52525b; font-size: 12px; }
pre { background: #f4f4f5; padding: 8px; overflow-x: auto; }
"""


def _html_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(run: Run) -> str:
    """One self-contained HTML page: no external file, the plots embedded as base64 PNG."""
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(run.name)}: training report</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Training report: {html.escape(run.name)} ({html.escape(run.variant)})</h1>",
        _html_table(["", ""], summary_rows(run)),
    ]
    header, rows = metric_rows(run)
    if rows:
        parts += ["<h2>Ranking metrics (full ranking, history excluded)</h2>"]
        parts += [_html_table(header, rows)]
    header, rows = routing_rows(run)
    if rows:
        parts += ["<h2>Expert routing</h2>", _html_table(header, rows)]
    if run.plots:
        parts.append("<h2>Plots</h2>")
    for plot in run.plots:
        data = base64.b64encode(plot.read_bytes()).decode("ascii")
        caption = html.escape(PLOT_TITLES.get(plot.name, plot.name))
        parts.append(
            f'<figure><img alt="{caption}" src="data:image/png;base64,{data}">'
            f"<figcaption>{caption} ({html.escape(plot.name)})</figcaption></figure>"
        )
    parts += ["<h2>Epochs</h2>", _html_table(*epoch_rows(run))]
    parts += ["<h2>Configuration</h2>", f"<pre>{html.escape(_config_yaml(run))}</pre>"]
    parts.append("</body></html>\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------- markdown


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |"]
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(run: Run, output_dir: Path) -> str:
    """Markdown with the plots linked relative to ``output_dir`` (where the file is written)."""
    parts = [
        f"# Training report: {run.name} ({run.variant})",
        _md_table(["", ""], summary_rows(run)),
    ]
    header, rows = metric_rows(run)
    if rows:
        parts += ["## Ranking metrics (full ranking, history excluded)", _md_table(header, rows)]
    header, rows = routing_rows(run)
    if rows:
        parts += ["## Expert routing", _md_table(header, rows)]
    if run.plots:
        parts.append("## Plots")
    for plot in run.plots:
        link = Path(os.path.relpath(plot.resolve(), output_dir.resolve())).as_posix()
        parts.append(f"![{PLOT_TITLES.get(plot.name, plot.name)}]({link})")
    parts += ["## Epochs", _md_table(*epoch_rows(run))]
    parts += ["## Configuration", f"```yaml\n{_config_yaml(run)}```"]
    return "\n\n".join(parts) + "\n"


def write_report(run_dir: Path, output: Path | None = None, fmt: ReportFormat = "html") -> Path:
    """Render the run folder's report to ``output`` (default ``RUN_DIR/report.html|.md``)."""
    if fmt not in FORMATS:
        raise MoerecError(f"the report format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    run = load_run(run_dir)
    output = output or run_dir / ("report.html" if fmt == "html" else "report.md")
    output.parent.mkdir(parents=True, exist_ok=True)
    text = render_html(run) if fmt == "html" else render_markdown(run, output.parent)
    output.write_text(text, encoding="utf-8")
    return output
