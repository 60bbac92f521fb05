"""Shared fixtures: a small synthetic data set and a model trained on it once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from moerec.config import ExperimentConfig
from moerec.data.dataset import Dataset, dataset_from_interactions
from moerec.data.synthetic import generate_interactions
from moerec.training import TrainResult, train
from tests.helpers import alternating_rails, rails_config, small_config

# The public data sets (MovieLens, Amazon, …) are never part of the repository: tests that
# read them look in $MOEREC_DATA_ROOT, else in a shared/data folder beside the checkout.
SHARED_DATA = Path(
    os.environ.get("MOEREC_DATA_ROOT") or Path(__file__).resolve().parents[2] / "shared" / "data"
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder holding the public data sets; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("public data sets not available (set MOEREC_DATA_ROOT)")
    return SHARED_DATA.resolve()


@pytest.fixture(scope="session")
def tiny_dataset() -> Dataset:
    return dataset_from_interactions(generate_interactions(num_users=300, num_items=120, seed=5))


@pytest.fixture(scope="session")
def rails() -> Dataset:
    """Two item rails that only the time of the next event tells apart (see helpers)."""
    return dataset_from_interactions(alternating_rails())


@pytest.fixture(scope="session")
def rails_timed(rails: Dataset) -> TrainResult:
    """A model with time context trained on ``rails``: it learns which rail comes next."""
    return train(rails, rails_config(True), progress=False)


@pytest.fixture(scope="session")
def tiny_config() -> ExperimentConfig:
    return small_config()


@pytest.fixture(scope="session")
def trained(tiny_dataset: Dataset, tiny_config: ExperimentConfig, tmp_path_factory) -> TrainResult:
    run_dir = tmp_path_factory.mktemp("run")
    return train(tiny_dataset, tiny_config, run_dir=run_dir, progress=False)


@pytest.fixture(autouse=True, scope="session")
def _quiet_threads() -> None:
    # Parallel test workers: one torch thread each avoids oversubscribing the cores.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


# Real PostgreSQL and Redis (fail under CI when they are down).
from tests.services import postgres_url, redis_url  # noqa: E402, F401
