import json

import pytest
import torch

from moerec.data.synthetic import generate_interactions, write_csv
from moerec.registry import ArtefactError, list_versions, load_artefact, save_artefact
from moerec.registry.artefact import MANIFEST, MANIFEST_DIGEST, WEIGHTS, sha256_file
from tests.helpers import save_trained


@pytest.fixture
def saved(tmp_path, trained, tiny_dataset):
    return save_trained(tmp_path, trained, tiny_dataset)


def test_artefact_loads_back_bit_identically(saved, trained, tiny_dataset):
    artefact = load_artefact(saved)
    original = trained.model.state_dict()
    loaded = artefact.model.state_dict()
    assert original.keys() == loaded.keys()
    for key, tensor in original.items():
        assert torch.equal(tensor, loaded[key]), key
    assert artefact.config == trained.config
    assert artefact.vocab == tiny_dataset.vocab
    assert artefact.manifest["data_fingerprint"] == tiny_dataset.fingerprint
    assert artefact.manifest["metrics"]["test"]["ndcg@10"] == trained.test.metrics["ndcg@10"]


def test_loaded_model_scores_exactly_like_the_trained_one(saved, trained):
    artefact = load_artefact(saved)
    trained.model.eval()
    seq = torch.tensor([[0, 0, 3, 7, 9], [1, 2, 3, 4, 5]])
    expected = trained.model.score(trained.model.encode_users(seq)[0])
    actual = artefact.model.score(artefact.model.encode_users(seq)[0])
    assert torch.equal(expected, actual)


def test_versions_increase_and_a_model_folder_resolves_to_the_newest(saved, trained, tiny_dataset):
    second = save_artefact(
        saved.parent.parent, "tiny", trained.model, trained.config, tiny_dataset.vocab, {}, "x"
    )
    assert [p.name for p in list_versions(saved.parent)] == ["v0001", "v0002"]
    assert load_artefact(saved.parent).path == second


def test_a_flipped_byte_in_the_weights_is_refused(saved):
    weights = saved / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtefactError, match="checksum mismatch"):
        load_artefact(saved)


def edit_manifest(saved, change, rehash: bool) -> None:
    manifest = json.loads((saved / MANIFEST).read_text())
    change(manifest)
    (saved / MANIFEST).write_text(json.dumps(manifest))
    if rehash:
        (saved / MANIFEST_DIGEST).write_text(sha256_file(saved / MANIFEST))


def test_an_edited_manifest_is_refused_even_when_shapes_still_fit(saved):
    edit_manifest(saved, lambda m: m["config"]["model"].update(moe_top_k=1), rehash=False)
    with pytest.raises(ArtefactError, match="manifest was modified"):
        load_artefact(saved)


def test_a_manifest_that_stops_listing_the_weights_is_refused(saved):
    edit_manifest(saved, lambda m: m.update(files={}), rehash=True)
    with pytest.raises(ArtefactError, match="expected"):
        load_artefact(saved)


def test_a_manifest_pointing_outside_the_artefact_is_refused(saved):
    edit_manifest(saved, lambda m: m["files"].update({"../escape": "0" * 64}), rehash=True)
    with pytest.raises(ArtefactError, match="expected"):
        load_artefact(saved)


def test_a_config_whose_weights_no_longer_fit_is_refused(saved):
    edit_manifest(saved, lambda m: m["config"]["model"].update(hidden_size=64), rehash=True)
    with pytest.raises(ArtefactError, match="cannot rebuild"):
        load_artefact(saved)


def test_missing_weights_and_empty_folders_give_clear_errors(saved, tmp_path):
    (saved / WEIGHTS).unlink()
    with pytest.raises(ArtefactError, match="missing"):
        load_artefact(saved)
    with pytest.raises(ArtefactError, match="no model artefact"):
        load_artefact(tmp_path / "nothing-here")


def test_bad_model_names_are_refused(tmp_path, trained, tiny_dataset):
    with pytest.raises(ArtefactError, match="model name"):
        save_artefact(
            tmp_path, "../escape", trained.model, trained.config, tiny_dataset.vocab, {}, ""
        )


def test_load_data_reads_the_training_data_and_refuses_another_catalogue(saved, tmp_path):
    artefact = load_artefact(saved)
    write_csv(generate_interactions(num_users=300, num_items=120, seed=5), tmp_path / "same.csv")
    assert (
        artefact.load_data(tmp_path / "same.csv").fingerprint
        == (artefact.manifest["data_fingerprint"])
    )
    write_csv(generate_interactions(num_users=300, num_items=90, seed=5), tmp_path / "other.csv")
    with pytest.raises(ArtefactError, match="item catalogue differs"):
        artefact.load_data(tmp_path / "other.csv")
