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
