"""Time context: bucket ids, what the model reads, and that it learns what only time can tell."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from moerec.data.dataset import dataset_from_interactions
from moerec.data.sequences import Sequences
from moerec.data.time_context import GAP_BUCKETS, context_ids, gap_ids, hour_ids
from moerec.inference import Predictor, Query
from moerec.model import SequentialRecommender
from moerec.training.trainer import TrainingError, train
from tests.helpers import alternating_rails, rails_config, save_trained, small_config


def test_gap_ids_are_log2_buckets():
    seconds = np.asarray([-5, 0, 1, 2, 3, 4, 59, 60, 86_400, 10**12])
    assert gap_ids(seconds).tolist() == [1, 1, 2, 3, 3, 4, 7, 7, 18, GAP_BUCKETS - 1]


def test_hour_ids_are_the_utc_hour_plus_one():
    midnight = 1_700_006_400  # 2023-11-15 00:00:00 UTC
    times = np.asarray([midnight, midnight + 3599, midnight + 3600, midnight - 1])
    assert hour_ids(times).tolist() == [1, 1, 2, 24]


def test_context_ids_leave_padding_and_first_events_unknown():
    times = np.asarray([[0, 0, 1_700_006_400, 1_700_006_460]])
    present = np.asarray([[False, False, True, True]])
    ids = context_ids(times, present)
    assert ids[0, :, 0].tolist() == [0, 0, 0, 7]  # no gap before the first event; 60 s
    assert ids[0, :, 1].tolist() == [0, 0, 1, 1]


@pytest.fixture(scope="module")
def trained_pair(rails, rails_timed):
    return {False: train(rails, rails_config(False), progress=False), True: rails_timed}


def test_the_model_learns_what_only_the_next_events_time_tells(trained_pair):
    # Without time the next item is a coin toss between two: MRR@10 ≤ (1 + 1/2) / 2 = 0.75.
    blind = trained_pair[False].test.metrics["mrr@10"]
    timed = trained_pair[True].test.metrics["mrr@10"]
    print(f"mrr@10 without time {blind:.3f}, with {timed:.3f}")
    assert blind < 0.8
    assert timed > 0.95


def test_the_predictor_reads_times_and_the_request_time(trained_pair, rails, tmp_path):
    predictor = Predictor.from_path(save_trained(tmp_path, trained_pair[True], rails))
    assert predictor.time_context
    history, _ = predictor.encode(["1", "2", "3"])  # rail A, positions 0, 1, 2
    times = np.asarray([1_600_000_000, 1_600_000_010, 1_600_000_020])
    soon = predictor.run([Query(history, k=1, times=times, now=times[-1] + 10)])[0]
    later = predictor.run([Query(history, k=1, times=times, now=times[-1] + 3 * 86_400)])[0]
    assert soon.items == ["4"]  # the same rail
    assert later.items == ["24"]  # the other rail
    # Without times the model still answers, from the items alone.
    assert len(predictor.run([Query(history, k=1)])[0].items) == 1
    with pytest.raises(Exception, match="2 times for 3 history items"):
        predictor.run([Query(history, k=1, times=times[:2], now=0.0)])


def test_time_context_needs_data_with_times(rails):
    untimed = dataclasses.replace(
        rails, sequences=Sequences(rails.sequences.offsets, rails.sequences.items)
    )
    with pytest.raises(TrainingError, match="has no timestamps"):
        train(untimed, rails_config(True), progress=False)


def test_time_context_refuses_millisecond_timestamps(rails):
    sequences = rails.sequences
    in_ms = Sequences(sequences.offsets, sequences.items, sequences.times * 1000)
    with pytest.raises(TrainingError, match="milliseconds"):
        train(dataclasses.replace(rails, sequences=in_ms), rails_config(True), progress=False)


def test_files_without_times_give_sequences_without_times():
    timed = alternating_rails(num_users=5)
    ordered = dataclasses.replace(timed, timestamps=np.arange(len(timed), dtype=np.int64))
    assert dataset_from_interactions(timed).sequences.times is not None
    dataset = dataset_from_interactions(ordered)
    assert dataset.sequences.times is None
    assert dataset.split.test.target_times is None


def test_the_split_carries_each_targets_time(rails):
    sequences, test = rails.sequences, rails.split.test
    last = sequences.offsets[test.users + 1] - 1
    assert test.target_times is not None
    assert (test.target_times == sequences.times[last]).all()
    assert (test.histories.times[test.histories.offsets[1:] - 1] == sequences.times[last - 1]).all()


def test_time_embeddings_do_not_change_the_other_weights():
    plain = small_config().model.model_copy(update={"num_items": 30})
    torch.manual_seed(0)
    without = SequentialRecommender(plain)
    torch.manual_seed(0)
    with_time = SequentialRecommender(plain.model_copy(update={"time_context": True}))
    shared = without.state_dict()
    for name, tensor in with_time.state_dict().items():
        if name.startswith("time_embeddings"):
            continue
        assert torch.equal(tensor, shared[name]), name


def test_unknown_context_is_no_context():
    config = small_config().model.model_copy(update={"num_items": 30, "time_context": True})
    model = SequentialRecommender(config).eval()
    items = torch.tensor([[0, 3, 4, 5]])
    zeros = torch.zeros((1, 5, 2), dtype=torch.long)
    with torch.no_grad():
        plain = model(items).hidden
        unknown = model(items, context=zeros).hidden
        ids = torch.tensor([[[0, 0], [0, 3], [7, 3], [7, 3], [9, 4]]])
        known = model(items, context=ids).hidden
    assert torch.allclose(plain, unknown)
    assert not torch.allclose(plain, known)
    with pytest.raises(ValueError, match="expected"):
        model(items, context=zeros[:, :4])
