"""docs/configuration.md is generated from moerec.config and must never drift from it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from moerec.config import ServiceSettings

DOCS = Path(__file__).resolve().parents[2] / "docs"


def generator():
    spec = importlib.util.spec_from_file_location(
        "gen_config_reference", DOCS / "gen_config_reference.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_reference_equals_the_generated_one():
    committed = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert committed == generator().render(), (
        "docs/configuration.md is stale: run python docs/gen_config_reference.py"
    )


def test_every_service_setting_has_a_row_and_a_description():
    text = generator().render()
    for name, field in ServiceSettings.model_fields.items():
        assert f"`MOEREC_{name.upper()}`" in text
        assert field.description, f"ServiceSettings.{name} needs a description for the docs"
