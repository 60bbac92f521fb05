"""Small builders shared by tests."""

from __future__ import annotations

from moerec.config import ExperimentConfig, load_config


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
