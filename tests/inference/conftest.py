"""A predictor loaded from a saved artefact of the session's small trained model."""

import pytest

from moerec.inference import Predictor
from moerec.registry import save_artefact


@pytest.fixture(scope="module")
def predictor(tmp_path_factory, trained, tiny_dataset):
    path = save_artefact(
        tmp_path_factory.mktemp("models"),
        "tiny",
        trained.model,
        trained.config,
        tiny_dataset.vocab,
        trained.metrics(),
        tiny_dataset.fingerprint,
    )
    return Predictor.from_path(path)
