"""The record of a training run: one JSON line per epoch, and PNG plots drawn from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: training runs on servers without a display
import matplotlib.pyplot as plt

LOG_NAME = "log.jsonl"


class RunLog:
    """Appends records to ``run_dir/log.jsonl`` and keeps them for plotting."""

    def __init__(self, run_dir: Path, append: bool = False) -> None:
        self.run_dir = run_dir
        self.path = run_dir / LOG_NAME
        run_dir.mkdir(parents=True, exist_ok=True)
        if append and self.path.exists():
            self.records: list[dict[str, Any]] = read_log(self.path)
        else:
            self.path.write_text("", encoding="utf-8")
            self.records = []

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def plot_run(records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Loss, validation NDCG@10 and per-layer expert load; returns the files written."""
    epochs = [r for r in records if r.get("event") == "epoch"]
    if not epochs:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [_plot_loss(epochs, out_dir / "loss.png")]
    validated = [r for r in epochs if "valid" in r]
    if validated:
        written.append(_plot_valid(validated, out_dir / "valid_ndcg.png"))
    routed = [r for r in epochs if r.get("routing", {}).get("layers")]
    if routed:
        written.append(_plot_expert_load(routed, out_dir / "expert_load.png"))
    return written


def _plot_loss(epochs: list[dict[str, Any]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = [r["epoch"] for r in epochs]
    ax.plot(x, [r["loss"] for r in epochs], label="cross-entropy")
    if any(r.get("aux_loss") for r in epochs):
        ax2 = ax.twinx()
        ax2.plot(x, [r.get("aux_loss", 0.0) for r in epochs], color="tab:orange", label="aux")
        ax2.set_ylabel("router aux loss")
        ax2.legend(loc="upper center")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.legend(loc="upper right")
    ax.set_title("Training loss")
    return _save(fig, path)


def _plot_valid(epochs: list[dict[str, Any]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = [r["epoch"] for r in epochs]
    for key in ("ndcg@10", "hr@10"):
        ax.plot(x, [r["valid"][key] for r in epochs], marker=".", label=f"valid {key}")
    ax.set_xlabel("epoch")
    ax.legend()
    ax.set_title("Validation (full ranking)")
    return _save(fig, path)


def _plot_expert_load(epochs: list[dict[str, Any]], path: Path) -> Path:
    layers = epochs[-1]["routing"]["layers"]
    fig, axes = plt.subplots(1, len(layers), figsize=(4 * len(layers), 3.2), squeeze=False)
    for i, ax in enumerate(axes[0]):
        load = [r["routing"]["layers"][i]["load"] for r in epochs]  # (epochs, E)
        image = ax.imshow(list(zip(*load, strict=True)), aspect="auto", cmap="viridis")
        ax.set_title(f"layer {i}: expert load")
        ax.set_xlabel("epoch index")
        ax.set_ylabel("expert")
        fig.colorbar(image, ax=ax, fraction=0.046)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
