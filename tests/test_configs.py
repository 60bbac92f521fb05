"""Every frozen config in configs/ is valid, and so are its dense baselines: a typo in a field
name or a value out of range fails here, not an hour into a benchmark."""

from __future__ import annotations

from pathlib import Path

import pytest

from moerec.config import VARIANTS, ModelConfig, load_config, resolve_variant

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_there_are_frozen_configs():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_the_config_and_its_dense_baselines_are_valid(path: Path):
    config = load_config(path)
    assert config.model.hidden_size == 64, "headline configs stay at hidden size 64"
    widths = {}
    for variant in VARIANTS:
        model = resolve_variant(config, variant).model
        # resolve_variant copies without validating: validate the result as a config file is
        ModelConfig.model_validate(model.model_dump())
        widths[variant] = model.ffn_hidden_size
    moe = config.model
    assert widths["dense-active"] == moe.ffn_hidden_size * moe.active_experts
    assert widths["dense-params"] == moe.ffn_hidden_size * (
        moe.moe_num_experts + moe.moe_num_shared_experts
    )


def test_the_feed_forward_label_names_experts_routing_and_width():
    moe = ModelConfig(moe_num_experts=8, moe_top_k=2, ffn_hidden_size=128)
    assert moe.feed_forward == "8x128 top-2"
    top_p = moe.model_copy(update={"moe_router": "topp", "moe_top_p": 0.4})
    assert top_p.feed_forward == "8x128 top-p 0.4 (2-4)"
    shared = moe.model_copy(update={"moe_num_shared_experts": 1, "moe_top_k": 1})
    assert shared.feed_forward == "8x128 top-1 +1 shared"
    dense = resolve_variant(load_config(None).model_copy(update={"model": moe}), "dense-active")
    assert dense.model.feed_forward == "256"
