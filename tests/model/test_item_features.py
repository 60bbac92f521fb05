"""Item side features in the model: the combined item table, training, artefacts, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor
from typer.testing import CliRunner

from moerec.cli import app
from moerec.config import DataConfig, ExperimentConfig, ModelConfig
from moerec.data.dataset import Dataset, dataset_from_interactions
from moerec.data.synthetic import generate_interactions, write_csv
from moerec.evaluation import evaluate
from moerec.inference import Predictor, Query
from moerec.model import SequentialRecommender
from moerec.registry import load_artefact, save_artefact
from moerec.registry.artefact import MANIFEST, MANIFEST_DIGEST, WEIGHTS, sha256_file
from moerec.training import train
from moerec.training.trainer import TrainingError, fit_config_to_data, sequence_loss
from tests.helpers import small_config

NUM_ITEMS = 15
# Attributes of items 1..15 (row 0 is the padding item): item 11 shares attribute 1 with
# item 3 and is never seen in training; items 12..15 are never seen and carry no attribute.
ATTRIBUTES = torch.tensor(
    [[0, 0]] + [[2, 0]] * 2 + [[1, 3]] + [[2, 3]] * 7 + [[1, 0]] + [[0, 0]] * 4, dtype=torch.long
)
FEATURE_FIELDS = ("item_feature_mode", "num_attributes", "max_item_attributes")


def model_config(mode: str = "sum", **changes: object) -> ModelConfig:
    fields: dict[str, object] = {
        "num_items": NUM_ITEMS,
        "max_len": 8,
        "hidden_size": 16,
        "num_layers": 1,
        "num_heads": 2,
        "ffn_hidden_size": 16,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "moe_num_experts": 2,
        "moe_top_k": 1,
        "item_feature_mode": mode,
        **({"num_attributes": 3, "max_item_attributes": 2} if mode != "none" else {}),
        **changes,
    }
    return ModelConfig.model_validate(fields)


def featured_model(seed: int = 0) -> SequentialRecommender:
    torch.manual_seed(seed)
    return SequentialRecommender(model_config(), ATTRIBUTES).eval()


def plain_model(seed: int = 0) -> SequentialRecommender:
    torch.manual_seed(seed)
    return SequentialRecommender(model_config("none")).eval()


HISTORIES = torch.tensor([[0, 0, 0, 1, 2], [4, 5, 6, 7, 3], [0, 0, 9, 9, 11]])


# --------------------------------------------------------------------------- the item table


def test_feature_off_builds_exactly_the_feature_free_model() -> None:
    model = plain_model()
    assert model.attribute_embedding is None
    assert not any("attribute" in key for key in model.state_dict())
    hidden, _ = model.encode_users(HISTORIES)
    # The head is the item embedding table itself, not a copy or a sum.
    assert model.item_table() is model.item_embedding.weight
    assert torch.equal(model.score(hidden)[:, 1:], (hidden @ model.item_embedding.weight.T)[:, 1:])


def test_same_seed_gives_the_same_shared_weights_and_zero_features_change_nothing() -> None:
    plain, featured = plain_model(), featured_model()
    shared = plain.state_dict()
    for key, tensor in shared.items():
        assert torch.equal(tensor, featured.state_dict()[key]), key
    hidden_plain, _ = plain.encode_users(HISTORIES)
    hidden, _ = featured.encode_users(HISTORIES)
    assert not torch.equal(featured.score(hidden), plain.score(hidden_plain))
    assert featured.attribute_embedding is not None
    with torch.no_grad():
        featured.attribute_embedding.weight.zero_()
    hidden, _ = featured.encode_users(HISTORIES)
    assert torch.equal(hidden, hidden_plain)
    assert torch.equal(featured.score(hidden), plain.score(hidden_plain))


def test_item_vector_is_embedding_plus_mean_of_attribute_embeddings() -> None:
    model = featured_model()
    items = model.item_embedding.weight
    assert model.attribute_embedding is not None
    attrs = model.attribute_embedding.weight
    table = model.item_table()
    expected = {
        0: items[0],  # padding stays zero
        1: items[1] + attrs[2],
        3: items[3] + (attrs[1] + attrs[3]) / 2,
        11: items[11] + attrs[1],
        12: items[12],  # no attributes: the item embedding alone
    }
    for item, vector in expected.items():
        torch.testing.assert_close(table[item], vector)
    assert torch.equal(table[0], torch.zeros_like(table[0]))
    torch.testing.assert_close(model.item_vectors(torch.tensor([[3, 11]])), table[[3, 11]][None])


def test_every_scoring_path_uses_the_combined_table() -> None:
    model = featured_model()
    hidden, _ = model.encode_users(HISTORIES)  # (B, D)
    table = model.item_table()
    full = model.score(hidden)
    torch.testing.assert_close(full[:, 1:], hidden @ table[1:].T)
    assert torch.isneginf(full[:, 0]).all()
    torch.testing.assert_close(model.item_logits(hidden), full[:, 1:])
    chunks = torch.cat([model.score_range(hidden, a, min(a + 4, 16)) for a in range(0, 16, 4)], 1)
    torch.testing.assert_close(chunks, full)
    ids = torch.tensor([11, 3, 12])
    torch.testing.assert_close(model.score_items(hidden, ids), full[:, ids])
    pairs = torch.tensor([3, 11, 12])
    torch.testing.assert_close(model.score_pairs(hidden, pairs), full[torch.arange(3), pairs])


def test_the_input_embeddings_use_the_attributes_too() -> None:
    model = featured_model()
    before, _ = model.encode_users(HISTORIES)
    assert model.attribute_embedding is not None
    with torch.no_grad():  # attribute 2 is carried by items 1, 2 and 4..10 of the histories
        model.attribute_embedding.weight[2] += 1.0
    after, _ = model.encode_users(HISTORIES)
    assert not torch.allclose(before, after)


def test_the_attribute_table_is_a_buffer_that_moves_and_saves_with_the_model() -> None:
    model = featured_model()
    assert "item_attributes" in dict(model.named_buffers())
    assert torch.equal(model.state_dict()["item_attributes"], ATTRIBUTES)
    model.double()  # a dtype change converts the weights, never the integer ids
    assert model.get_buffer("item_attributes").dtype == torch.long
    assert model.item_table().dtype == torch.float64


@pytest.mark.parametrize(
    ("config", "attributes", "message"),
    [
        (model_config(num_attributes=0), None, "num_attributes and max_item_attributes"),
        (model_config(), ATTRIBUTES[:, :1], r"shape \(16, 1\), expected \(16, 2\)"),
        (model_config(), ATTRIBUTES + 3, "ids 0..3"),
        (model_config("none"), ATTRIBUTES, "item_feature_mode is 'none'"),
    ],
)
def test_inconsistent_feature_settings_are_refused(
    config: ModelConfig, attributes: Tensor | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        SequentialRecommender(config, attributes)


def test_attributes_on_the_padding_item_are_refused() -> None:
    bad = ATTRIBUTES.clone()
    bad[0, 0] = 1
    with pytest.raises(ValueError, match="padding item"):
        SequentialRecommender(model_config(), bad)


# --------------------------------------------------------------------------- learning


def _train_steps(model: SequentialRecommender, steps: int = 150) -> None:
    """Users who go 1 -> 2 -> 3 and 4 -> 5 -> ... -> 10: items 11..15 never appear."""
    inputs = torch.tensor([[0, 0, 0, 1, 2], [4, 5, 6, 7, 8], [0, 5, 6, 7, 8], [0, 0, 7, 8, 9]])
    targets = torch.tensor([[0, 0, 1, 2, 3], [5, 6, 7, 8, 9], [0, 6, 7, 8, 9], [0, 0, 8, 9, 10]])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(steps):
        ce, aux, _ = sequence_loss(model, inputs, targets, 0.0)
        optimizer.zero_grad()
        (ce + aux).backward()
        optimizer.step()
    model.eval()


@torch.no_grad()
def _scores_after_1_2(model: SequentialRecommender) -> Tensor:
    hidden, _ = model.encode_users(torch.tensor([[1, 2]]))
    return model.score(hidden)[0]  # (V,)


def test_an_unseen_item_sharing_an_attribute_with_a_trained_one_moves_with_it() -> None:
    featured = featured_model(seed=1)
    _train_steps(featured)
    scores = _scores_after_1_2(featured)
    assert int(scores.argmax()) == 3  # it learnt the succession
    unseen_without = scores[12:16]
    # Item 11 was never a target nor an input: only its attribute, shared with item 3, can
    # have lifted it above every other unseen item.
    assert bool((scores[11] > unseen_without).all()), scores
    margin = float(scores[11] - unseen_without.max())

    plain = plain_model(seed=1)
    _train_steps(plain)
    plain_scores = _scores_after_1_2(plain)
    plain_margin = float(plain_scores[11] - plain_scores[12:16].max())
    assert margin > plain_margin + 1.0, (margin, plain_margin)


# --------------------------------------------------------------------------- training and artefacts


@pytest.fixture(scope="module")
def featured_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, Path]:
    """A synthetic log and an item2attributes file: attribute = the item id's last digit,
    plus one shared by every item with an even id; ids absent from the data are ignored."""
    folder = tmp_path_factory.mktemp("features")
    interactions = generate_interactions(num_users=120, num_items=60, seed=4)
    attributes = {str(i): [i % 10, 100] if i % 2 == 0 else [i % 10] for i in range(1, 61)}
    attributes["9999"] = [7]
    path = folder / "Synth_item2attributes.json"
    path.write_text(json.dumps(attributes), encoding="utf-8")
    write_csv(interactions, folder / "interactions.csv")
    return dataset_from_interactions(interactions, DataConfig(item_features=path)), folder


def featured_config(mode: str = "sum") -> ExperimentConfig:
    config = small_config(epochs=2)
    return config.model_copy(
        update={"model": config.model.model_copy(update={"item_feature_mode": mode})}
    )


@pytest.fixture(scope="module")
def trained_with_features(featured_data: tuple[Dataset, Path], tmp_path_factory):
    dataset, _ = featured_data
    return train(dataset, featured_config(), tmp_path_factory.mktemp("run"), progress=False)


def test_the_trained_config_carries_the_feature_table_shape(
    featured_data: tuple[Dataset, Path], trained_with_features
) -> None:
    dataset, _ = featured_data
    features = dataset.item_features
    assert features is not None
    assert features.unknown_items == 1
    model = trained_with_features.config.model
    assert (model.item_feature_mode, model.num_attributes, model.max_item_attributes) == (
        "sum",
        11,  # digits 0..9 and 100
        2,
    )
    table = trained_with_features.model.get_buffer("item_attributes")
    assert torch.equal(table, torch.from_numpy(features.table))


def test_a_saved_artefact_reproduces_the_scores_and_the_predictions(
    featured_data: tuple[Dataset, Path], trained_with_features, tmp_path: Path
) -> None:
    dataset, _ = featured_data
    result = trained_with_features
    path = save_artefact(
        tmp_path, "feat", result.model, result.config, dataset.vocab, result.metrics(),
        dataset.fingerprint,
    )  # fmt: skip
    assert "item_attributes" in load_file(str(path / WEIGHTS))
    artefact = load_artefact(path)
    assert artefact.config.model.num_attributes == 11
    seq = torch.tensor([[0, 0, 3, 7, 9], [1, 2, 3, 4, 5]])
    result.model.eval()
    expected = result.model.score(result.model.encode_users(seq)[0])
    actual = artefact.model.score(artefact.model.encode_users(seq)[0])
    assert torch.equal(expected, actual)

    whole, chunked = Predictor(artefact), Predictor(artefact, score_chunk_items=7)
    assert whole.item_table is not None  # computed once, not per request
    assert torch.equal(whole.item_table, artefact.model.item_table())
    scored = whole.run([Query(np.asarray([1, 2, 3, 4, 5]), candidates=np.asarray([7, 2]),
                              score_only=True)])[0]  # fmt: skip
    np.testing.assert_allclose(scored.scores, expected[1, [7, 2]].tolist(), rtol=1e-5)
    queries = [Query(np.asarray([3, 7, 9])), Query(np.asarray([2]), k=5, exclude_history=False)]
    for a, b in zip(whole.run(queries), chunked.run(queries), strict=True):
        assert a.items == b.items
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-5)
    top = whole.run([Query(np.asarray([1, 2, 3, 4, 5]), k=3, exclude_history=False)])[0]
    best = torch.topk(expected[1], 3)
    assert top.items == dataset.vocab.decode_items(best.indices.tolist())


def test_evaluation_matches_the_training_result(featured_data, trained_with_features) -> None:
    dataset, _ = featured_data
    result = trained_with_features
    again = evaluate(result.model, dataset.split.test, result.config.eval)
    assert again.metrics == result.test.metrics


def test_an_artefact_from_before_item_features_still_loads(
    featured_data: tuple[Dataset, Path], tmp_path: Path
) -> None:
    dataset, _ = featured_data
    result = train(dataset, featured_config("none"), progress=False)
    assert result.model.attribute_embedding is None  # features read, but switched off
    path = save_artefact(
        tmp_path, "old", result.model, result.config, dataset.vocab, {}, dataset.fingerprint
    )
    manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    for key in FEATURE_FIELDS:  # what an older moerec wrote
        del manifest["config"]["model"][key]
    del manifest["config"]["data"]["item_features"]
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    (path / MANIFEST_DIGEST).write_text(sha256_file(path / MANIFEST) + "\n")
    artefact = load_artefact(path)
    assert artefact.config.model.item_feature_mode == "none"
    assert Predictor(artefact).item_table is None
    seq = torch.tensor([[0, 1, 2, 3]])
    expected = result.model.score(result.model.encode_users(seq)[0])
    assert torch.equal(artefact.model.score(artefact.model.encode_users(seq)[0]), expected)


def test_feature_mode_without_a_feature_file_is_a_clear_error() -> None:
    dataset = dataset_from_interactions(generate_interactions(num_users=30, num_items=20, seed=1))
    with pytest.raises(TrainingError, match=r"set data\.item_features"):
        fit_config_to_data(featured_config(), dataset)


def test_cli_train_with_item_features(featured_data: tuple[Dataset, Path], tmp_path: Path) -> None:
    _, folder = featured_data
    result = CliRunner().invoke(
        app,
        [
            "train", "--data", str(folder / "interactions.csv"),
            "--item-features", str(folder / "Synth_item2attributes.json"),
            "--registry", str(tmp_path / "models"), "--name", "feat",
            "--run-dir", str(tmp_path / "run"), "--quiet",
            "--set", "model.max_len=10", "--set", "model.hidden_size=16",
            "--set", "model.ffn_hidden_size=16", "--set", "model.moe_num_experts=2",
            "--set", "train.epochs=1", "--set", "train.batch_size=64",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    artefact = load_artefact(tmp_path / "models" / "feat")
    model = artefact.config.model
    assert (model.item_feature_mode, model.num_attributes) == ("sum", 11)
    assert artefact.config.data.item_features == folder / "Synth_item2attributes.json"
    # The attribute table travels in the artefact: evaluating needs the interactions only.
    (folder / "Synth_item2attributes.json").rename(tmp_path / "moved.json")
    try:
        evaluated = CliRunner().invoke(
            app,
            ["evaluate", "--model", str(tmp_path / "models" / "feat"),
             "--data", str(folder / "interactions.csv")],
        )  # fmt: skip
    finally:
        (tmp_path / "moved.json").rename(folder / "Synth_item2attributes.json")
    assert evaluated.exit_code == 0, evaluated.output
    assert "ndcg@10" in evaluated.output.lower()


def test_cli_reports_a_bad_feature_file_in_one_line(
    featured_data: tuple[Dataset, Path], tmp_path: Path
) -> None:
    _, folder = featured_data
    bad = tmp_path / "attrs.json"
    bad.write_text('{"1": 5}', encoding="utf-8")
    result = CliRunner().invoke(
        app,
        ["train", "--data", str(folder / "interactions.csv"), "--item-features", str(bad),
         "--registry", str(tmp_path / "models"), "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "item '1' maps to 5" in result.output
    assert "Traceback" not in result.output
