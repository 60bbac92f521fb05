"""benchmarks/plots.py draws valid, deterministic PNGs from the committed results, and the
benchmarks page shows exactly those figures, from files that exist."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

from tests.docs import benchmark_scripts

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "plots.py"
DOCS = ROOT / "docs" / "benchmarks.md"
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


def plots_module() -> ModuleType:
    return benchmark_scripts.load("plots")


def section(text: str, plots: ModuleType) -> str:
    begin, end = text.find(plots.DOCS_BEGIN), text.find(plots.DOCS_END)
    assert begin != -1, "no plots section"
    assert end > begin, "the plots section is not closed"
    return text[begin : end + len(plots.DOCS_END)]


def run(output_dir: Path, *extra: str) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--output-dir", str(output_dir), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """plots.py run on the committed results, with a copy of the page next to its img/."""
    root = tmp_path_factory.mktemp("plots")
    (root / "benchmarks.md").write_text(DOCS.read_text(encoding="utf-8"), encoding="utf-8")
    run(root / "img", "--docs", str(root / "benchmarks.md"))
    return root


def test_every_figure_is_a_valid_png(rendered):
    pngs = sorted((rendered / "img").glob("*.png"))
    names = {png.name for png in pngs}
    assert {"serving-throughput.png", "serving-latency.png", "soak-memory.png"} <= names
    assert {"quality.png", "expert-load.png", "top-p-curve.png"} <= names
    for png in pngs:
        with Image.open(png) as image:
            image.verify()
        with Image.open(png) as image:
            assert image.format == "PNG"
            width, height = image.size
            assert 600 <= width <= 800, f"{png.name} is {width} px wide"
            assert 200 <= height <= 800, f"{png.name} is {height} px high"
            assert "Software" not in image.info, "the PNG names the software (not reproducible)"


def test_the_figures_are_byte_for_byte_reproducible(rendered, tmp_path):
    run(tmp_path)
    first = {png.name: png.read_bytes() for png in (rendered / "img").glob("*.png")}
    again = {png.name: png.read_bytes() for png in tmp_path.glob("*.png")}
    assert first == again


def test_the_committed_page_shows_the_current_figures(rendered):
    plots = plots_module()
    committed = DOCS.read_text(encoding="utf-8")
    regenerated = (rendered / "benchmarks.md").read_text(encoding="utf-8")
    assert regenerated == committed, (
        "docs/benchmarks.md is stale: run python benchmarks/plots.py --docs docs/benchmarks.md"
    )
    images = IMAGE.findall(section(committed, plots))
    assert images, "the plots section shows no figure"
    for image in images:
        assert (DOCS.parent / image).is_file(), f"docs/benchmarks.md shows a missing {image}"
        assert (rendered / image).is_file(), f"plots.py no longer draws {image}"
    drawn = {png.name for png in (rendered / "img").glob("*.png")}
    assert {Path(image).name for image in images} == drawn


def test_the_section_goes_under_the_first_heading_and_nothing_else_changes():
    plots = plots_module()
    page = (
        "# Benchmarks\n\nIntro.\n\n```bash\n# not a heading\n```\n\n## beauty\n\nTable.\n\n"
        "<!-- serving:begin -->\nserving\n<!-- serving:end -->\n"
    )
    once = plots.splice_section(page, "## Plots\n\nfirst")
    assert once.startswith("# Benchmarks\n\nIntro.\n\n```bash\n# not a heading\n```\n\n")
    assert once.index(plots.DOCS_END) < once.index("## beauty")
    twice = plots.splice_section(once, "## Plots\n\nsecond")
    assert "first" not in twice
    assert "second" in twice
    assert twice.replace("second", "first") == once
    begin, end = twice.find(plots.DOCS_BEGIN), twice.find(plots.DOCS_END) + len(plots.DOCS_END)
    assert twice[:begin] + twice[end:].removeprefix("\n\n") == page


def test_a_results_file_moved_aside_is_marked_and_left_out_of_the_current_ones(tmp_path):
    plots = plots_module()
    row = {"variant": "moe", "test": {"ndcg@10": 0.06}, "routing": {}}
    config = {"model": {"hidden_size": 64}, "train": {"seed": 42}}
    for name in ("quality-toys.json", "quality-toys-until-2026-12-05.json"):
        report = {"dataset": "toys", "config": config, "rows": [row]}
        (tmp_path / name).write_text(json.dumps(report), encoding="utf-8")

    reports = plots.load_results(tmp_path)["quality"]
    assert sorted(str(r.get("retired_until")) for r in reports) == ["2026-12-05", "None"]
    assert [r.get("retired_until") for r in plots.current(reports)] == [None]


TOYS_TOP_P_SWEEP = {
    "dataset": "toys",
    "config": {"model": {"hidden_size": 64, "moe_top_k": 2}, "train": {"seed": 42}},
    "rows": [
        {"variant": "moe-topp", "top_p": p, "test": {"ndcg@10": 0.05 + p / 100},
         "routing": {"experts_per_token": 2 + 2 * p}}
        for p in (0.4, 0.8)
    ],
}  # fmt: skip


def test_the_top_p_curve_drops_a_retired_sweep_once_the_current_config_has_one(tmp_path):
    plots = plots_module()
    sweep = json.dumps(TOYS_TOP_P_SWEEP)
    (tmp_path / "quality-toys-topp-until-2026-12-05.json").write_text(sweep)

    figure, _ = plots.top_p_curve(plots.load_results(tmp_path))
    assert [ax.get_title() for ax in figure.axes] == [
        "toys: quality against experts used\n(frozen config until 2026-12-05)"
    ]

    (tmp_path / "quality-toys-topp.json").write_text(sweep)
    figure, _ = plots.top_p_curve(plots.load_results(tmp_path))
    assert [ax.get_title() for ax in figure.axes] == ["toys: quality against experts used"]


def test_the_top_p_curve_adds_one_model_routed_at_inference_when_measured(tmp_path):
    plots = plots_module()
    (tmp_path / "quality-toys-topp.json").write_text(json.dumps(TOYS_TOP_P_SWEEP))
    figure, plot = plots.top_p_curve(plots.load_results(tmp_path))
    assert len(figure.axes[0].get_lines()) == 1
    assert "routing-" not in plot.source

    rerouted = [{"experts_per_token": k, "test": {"ndcg@10": 0.05 + k / 1000}} for k in (3, 1, 2)]
    capacity = {"model.moe_capacity_factor_eval": 1.0}  # drops slots: not on the curve
    rerouted.append({"experts_per_token": 2, "test": {"ndcg@10": 0.04}, "routing": capacity})
    (tmp_path / "routing-toys.json").write_text(
        json.dumps({"name": "toys", "model": {"feed_forward": "8x128 top-2"}, "rows": rerouted})
    )
    figure, plot = plots.top_p_curve(plots.load_results(tmp_path))
    line = next(
        line for line in figure.axes[0].get_lines() if "routed at inference" in line.get_label()
    )
    assert line.get_label() == "one 8x128 top-2 model, routed at inference"
    assert list(line.get_xdata()) == [1, 2, 3]  # ordered by experts per token
    assert list(line.get_ydata()) == pytest.approx([0.051, 0.052, 0.053])
    assert "routing-*.json" in plot.source


def test_a_model_routed_at_inference_is_drawn_beside_the_newest_sweep_only(tmp_path):
    plots = plots_module()
    sweep = json.dumps(TOYS_TOP_P_SWEEP)
    for until in ("2026-12-05", "2026-12-07"):  # both retired: no current sweep yet
        (tmp_path / f"quality-toys-topp-until-{until}.json").write_text(sweep)
    rerouted = [{"experts_per_token": k, "test": {"ndcg@10": 0.05}} for k in (1, 2)]
    (tmp_path / "routing-toys.json").write_text(
        json.dumps({"name": "toys", "model": {"feed_forward": "8x128 top-2"}, "rows": rerouted})
    )
    figure, _ = plots.top_p_curve(plots.load_results(tmp_path))
    routed = {
        ax.get_title().split("until ")[1].rstrip(")"): any(
            "routed at inference" in line.get_label() for line in ax.get_lines()
        )
        for ax in figure.axes
    }
    assert routed == {"2026-12-05": False, "2026-12-07": True}
