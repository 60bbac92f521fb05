"""benchmarks/routing.py: one trained MoE measured at several inference routings."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from moerec import MoerecError
from moerec.config import ModelConfig
from tests.docs.benchmark_scripts import load


def routing():
    return load("routing")


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("routing")
    assert routing().main(["--tiny", "--requests", "5", "--output-dir", str(out)]) == 0
    return out, json.loads((out / "routing-tiny.json").read_text(encoding="utf-8"))


def test_every_default_routing_the_model_allows_is_measured_on_the_same_weights(tiny_report):
    _, report = tiny_report
    rows = {r["label"]: r for r in report["rows"]}
    assert list(rows) == [
        "4x32 top-1", "4x32 top-2", "4x32 top-3", "4x32 top-4",
        "4x32 top-p 0.5 (1-4)", "4x32 top-p 0.7 (1-4)", "4x32 top-p 0.9 (1-4)",
        "4x32 top-2, capacity 1", "4x32 top-2, capacity 1.25",
    ]  # fmt: skip
    assert [r["trained"] for r in rows.values()] == [False, True] + [False] * 7
    assert rows["4x32 top-2"]["dropped_fraction"] == 0
    tight, loose = rows["4x32 top-2, capacity 1"], rows["4x32 top-2, capacity 1.25"]
    assert tight["dropped_fraction"] > loose["dropped_fraction"] > 0
    top_k = [rows[f"4x32 top-{k}"] for k in (1, 2, 3, 4)]
    assert [r["experts_per_token"] for r in top_k] == [1.0, 2.0, 3.0, 4.0]
    flops = [r["ffn_flops_per_request"] for r in top_k]
    assert flops == sorted(flops)
    assert len(set(flops)) == 4
    for row in report["rows"]:
        assert row["latency_ms"]["n"] == 5
        assert 0 < row["valid"]["ndcg@10"] <= 1
        assert 1.0 <= row["experts_per_token"] <= 4.0
    assert rows["4x32 top-1"]["valid"] != rows["4x32 top-2"]["valid"]  # routing took effect


def test_the_docs_section_renders_each_results_file_and_keeps_the_rest(tiny_report, tmp_path):
    out, report = tiny_report
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\nkept text\n", encoding="utf-8")
    assert routing().main(["--render-only", "--docs", str(page), "--output-dir", str(out)]) == 0
    text = page.read_text(encoding="utf-8")
    assert text.startswith("# Benchmarks\n\nkept text\n")
    assert "## Routing at inference" in text
    assert "| 4x32 top-2 (as trained) | 2.00 |" in text
    best = max(report["rows"], key=lambda r: r["valid"]["ndcg@10"])
    assert f"Best on validation: {best['feed_forward']}" in text
    routing().main(["--render-only", "--docs", str(page), "--output-dir", str(out)])
    assert page.read_text(encoding="utf-8") == text  # rerendering changes nothing


def test_the_section_goes_after_the_quality_section(tiny_report, tmp_path):
    out, _ = tiny_report
    page = tmp_path / "benchmarks.md"
    page.write_text(
        "# B\n\n<!-- quality:begin x -->\nq\n<!-- quality:end -->\n\n<!-- serving:begin -->\n",
        encoding="utf-8",
    )
    routing().main(["--render-only", "--docs", str(page), "--output-dir", str(out)])
    text = page.read_text(encoding="utf-8")
    assert text.index("<!-- quality:end -->") < text.index("## Routing at inference")
    assert text.index("<!-- routing:end -->") < text.index("<!-- serving:begin -->")


def test_a_routing_outside_the_inference_fields_is_refused():
    trained = SimpleNamespace(config=SimpleNamespace(model=ModelConfig()))
    with pytest.raises(MoerecError, match="can only change how it routes"):
        routing().absolute_routing(trained, "model.hidden_size=32")
    changes = routing().absolute_routing(trained, "model.moe_top_k=3")
    assert changes["moe_top_k"] == 3
    assert changes["moe_router"] == "topk"  # unset keys keep the trained model's value


def test_the_command_line_asks_for_a_model_and_its_data():
    with pytest.raises(SystemExit):
        routing().parse_args([])
    with pytest.raises(SystemExit):
        routing().parse_args(["--tiny", "--docs", "docs/benchmarks.md"])
