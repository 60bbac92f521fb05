"""A run's identity (what must match to resume) leaves out settings added later while they are
off, so that checkpoints written before those settings existed still resume."""

from moerec.config import ExperimentConfig
from moerec.training.trainer import _run_identity


class _Data:
    fingerprint = "f"
    item_features = None


def test_settings_added_later_stay_out_of_the_identity_while_off():
    model = _run_identity(ExperimentConfig(), _Data())["model"]  # type: ignore[arg-type]
    for later in ("moe_num_shared_experts", "moe_balance", "moe_bias_update_rate",
                  "item_feature_mode", "num_attributes", "max_item_attributes"):  # fmt: skip
        assert later not in model
    assert model["moe_num_experts"] == 8


def test_settings_added_later_are_part_of_the_identity_when_on():
    config = ExperimentConfig.model_validate(
        {"model": {"moe_num_shared_experts": 1, "moe_balance": "bias"}}
    )
    model = _run_identity(config, _Data())["model"]  # type: ignore[arg-type]
    assert model["moe_num_shared_experts"] == 1
    assert model["moe_balance"] == "bias"
    assert model["moe_bias_update_rate"] == 0.001
