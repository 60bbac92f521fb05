"""Small builders shared by tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moerec.config import ExperimentConfig, ModelConfig, load_config
from moerec.data.dataset import Dataset
from moerec.data.interactions import Interactions
from moerec.inference import Recommendation
from moerec.registry import save_artefact
from moerec.training import TrainResult


def small_model_config(**updates: object) -> ModelConfig:
    """A small MoE model (40 items, histories up to 10, 4 experts) with ``updates``, validated
    like a config file (``model_copy`` would skip the checks)."""
    base = {
        "num_items": 40,
        "max_len": 10,
        "hidden_size": 32,
        "num_layers": 2,
        "num_heads": 2,
        "ffn_hidden_size": 32,
        "dropout": 0.1,
        "attention_dropout": 0.1,
        "moe_num_experts": 4,
        "moe_top_k": 2,
    }
    return ModelConfig.model_validate({**base, **updates})


def small_config(**train_overrides: object) -> ExperimentConfig:
    return load_config(
        None,
        {
            "name": "tiny",
            "model": {
                "max_len": 20,
                "hidden_size": 32,
                "num_heads": 2,
                "ffn_hidden_size": 32,
                "moe_num_experts": 4,
                "moe_top_k": 2,
                "dropout": 0.1,
                "attention_dropout": 0.1,
            },
            "train": {
                "epochs": 3,
                "batch_size": 64,
                "warmup_steps": 5,
                "patience": 3,
                "seed": 3,
                **train_overrides,
            },
        },
    )


def save_trained(root: Path, trained: TrainResult, dataset: Dataset) -> Path:
    """The session's trained model saved as version v0001 of "tiny" under ``root``."""
    return save_artefact(
        root, "tiny", trained.model, trained.config, dataset.vocab, trained.metrics(),
        dataset.fingerprint,
    )  # fmt: skip


def assert_same_recommendation(actual: Recommendation, expected: Recommendation) -> None:
    """Same items and routing; scores equal up to batched-matmul rounding."""
    assert actual.items == expected.items
    assert actual.experts == expected.experts
    np.testing.assert_allclose(actual.scores, expected.scores, rtol=1e-5, atol=1e-5)


def alternating_rails(num_users: int = 300, length: int = 16, seed: int = 0) -> Interactions:
    """Two rails of 20 items: after a short gap the next item is the successor on the same
    rail, after a long gap the successor on the other rail. The items alone cannot tell
    which of the two comes next; the time of the next event can."""
    rng = np.random.default_rng(seed)
    users, items, times = [], [], []
    for user in range(num_users):
        position, rail = int(rng.integers(20)), int(rng.integers(2))
        now = 1_600_000_000 + int(rng.integers(10**7))
        for step in range(length):
            if step:
                long_gap = bool(rng.integers(2))
                now += int(rng.integers(2, 5) * 86_400) if long_gap else int(rng.integers(5, 30))
                rail ^= long_gap
                position = (position + 1) % 20
            users.append(f"u{user}")
            items.append(str(1 + position + 20 * rail))
            times.append(now)
    return Interactions(
        users=np.asarray(users),
        items=np.asarray(items),
        timestamps=np.asarray(times, dtype=np.int64),
        ratings=None,
        source="alternating rails",
    )


def rails_config(time_context: bool) -> ExperimentConfig:
    """A small model for ``alternating_rails``, with or without time context."""
    config = small_config(epochs=40, patience=40, learning_rate=0.01, batch_size=64)
    model = config.model.model_copy(update={"time_context": time_context, "dropout": 0.0})
    return config.model_copy(update={"model": model})
