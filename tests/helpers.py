"""Small builders shared by tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moerec.config import ExperimentConfig, load_config
from moerec.data.dataset import Dataset
from moerec.inference import Recommendation
from moerec.registry import save_artefact
from moerec.training import TrainResult


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
