"""A predictor loaded from a saved artefact of the session's small trained model."""

import pytest

from moerec.inference import Predictor
from tests.helpers import save_trained


@pytest.fixture(scope="module")
def predictor(tmp_path_factory, trained, tiny_dataset):
    path = save_trained(tmp_path_factory.mktemp("models"), trained, tiny_dataset)
    return Predictor.from_path(path)
