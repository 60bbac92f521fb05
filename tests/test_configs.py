"""Every frozen config in configs/ is valid, and so are its dense baselines: a typo in a field
name or a value out of range fails here, not an hour into a benchmark."""

from __future__ import annotations

from pathlib import Path

import pytest

from moerec.config import VARIANTS, load_config, resolve_variant

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_there_are_frozen_configs():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_the_config_and_its_variants_load(path: Path):
    config = load_config(path)
    assert config.model.hidden_size == 64, "headline configs stay at hidden size 64"
    for variant in VARIANTS:
        resolved = resolve_variant(config, variant)
        assert resolved.model.hidden_size == config.model.hidden_size
