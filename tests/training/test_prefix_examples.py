"""train.examples: 'prefixes' trains on every prefix of each history, its last position only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moerec.data.batching import left_pad
from moerec.data.sequences import Sequences
from moerec.model import SequentialRecommender
from moerec.training import seed_everything, sequence_loss, train
from moerec.training.trainer import (
    batch_tensors,
    length_batches,
    loss_positions,
    training_examples,
)
from tests.helpers import small_config

# Lengths 4, 1, 2 and 6: the one-item user has nothing to predict.
HISTORIES = [[5, 6, 7, 8], [9], [10, 11], [1, 2, 3, 4, 5, 6]]


def sequences() -> Sequences:
    lengths = [len(h) for h in HISTORIES]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return Sequences(offsets, np.concatenate([np.array(h) for h in HISTORIES]))


def pairs(train: Sequences, kind: str, max_len: int) -> list[tuple[tuple[int, ...], int]]:
    """Every (visible history, next item) pair an epoch of ``kind`` puts a loss on."""
    examples = training_examples(train, kind, max_len)
    inputs, targets = batch_tensors(train, examples.rows, max_len, examples.ends)
    found = []
    for row_in, row_tg, tokens in zip(
        inputs.tolist(), targets.tolist(), examples.tokens, strict=True
    ):
        positions = [len(row_in) - 1] if examples.last_only else range(len(row_in))
        for t in positions:
            if row_in[t]:
                found.append((tuple(i for i in row_in[: t + 1] if i), row_tg[t]))
        assert sum(1 for t in positions if row_in[t]) == tokens
    return sorted(found)


def test_prefixes_put_a_loss_on_the_same_next_items_as_whole_sequences():
    train = sequences()
    assert pairs(train, "prefixes", 10) == pairs(train, "sequences", 10)
    assert len(pairs(train, "prefixes", 10)) == 3 + 1 + 5


def test_with_long_histories_both_predict_the_same_items_and_prefixes_read_further_back():
    train = sequences()
    prefixes, whole = pairs(train, "prefixes", 3), pairs(train, "sequences", 3)
    assert sorted(t for _, t in prefixes) == sorted(t for _, t in whole)
    assert ((1, 2, 3), 4) in prefixes  # the 3 items before 4
    assert ((3,), 4) in whole  # the window [3, 4, 5, 6] starts at 3
    assert len(prefixes) == 3 + 1 + 3


def test_each_prefix_ends_with_its_target_and_reads_at_most_max_len_items():
    examples = training_examples(sequences(), "prefixes", max_len=3)
    inputs, targets = batch_tensors(sequences(), examples.rows, 3, examples.ends)
    assert inputs.shape == (7, 3)
    # The longest user's last prefix: 5 inputs, of which the last 3 are read.
    assert inputs[-1].tolist() == [3, 4, 5]
    assert targets[-1, -1].item() == 6
    # Its first predicts the first target of its 4-item window, 4, from the 3 items before it.
    assert inputs[4].tolist() == [1, 2, 3]
    assert targets[4, -1].item() == 4
    # A short history's first prefix: one input, left-padded.
    assert inputs[0].tolist() == [0, 0, 5]
    assert targets[0, -1].item() == 6


def test_left_pad_cuts_rows_at_the_given_ends():
    train = sequences()
    rows = np.array([0, 3, 3])
    ends = train.offsets[rows] + np.array([2, 6, 3])
    assert left_pad(train.offsets, train.items, rows, 4, ends).tolist() == [
        [0, 0, 5, 6],
        [3, 4, 5, 6],
        [0, 1, 2, 3],
    ]


def test_the_last_only_loss_is_the_full_loss_at_the_last_position(tiny_config):
    config = tiny_config.with_num_items(50).model
    seed_everything(0)
    model = SequentialRecommender(config).eval()
    inputs = torch.tensor([[0, 4, 8, 15], [1, 2, 3, 4]])
    targets = torch.tensor([[0, 8, 15, 16], [2, 3, 4, 5]])
    last, _, _ = sequence_loss(model, inputs, targets, 0.0, last_only=True)
    out = model(inputs)
    logits = model.item_logits(out.hidden[:, -1])
    expected = torch.nn.functional.cross_entropy(logits, targets[:, -1] - 1)
    torch.testing.assert_close(last, expected)
    everything, _, _ = sequence_loss(model, inputs, targets, 0.0)
    assert not torch.allclose(last, everything)


@pytest.mark.slow
def test_training_on_prefixes_learns(tiny_dataset):
    config = small_config(epochs=2, examples="prefixes")
    losses: list[float] = []
    result = train(
        tiny_dataset, config, progress=False, on_epoch=lambda r: losses.append(r["loss"])
    )
    chance_hr10 = 10 / tiny_dataset.num_items
    assert result.test.metrics["hr@10"] > 3 * chance_hr10
    assert len(losses) == 2
    assert losses[0] > losses[1]
    examples = training_examples(tiny_dataset.split.train, "prefixes", 20)
    assert len(examples) == int(loss_positions(tiny_dataset.split.train, 20).sum())


def test_length_batches_cover_every_example_once_in_batches_of_similar_length():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 51, size=1000)
    batches = list(length_batches(lengths, 16, np.random.default_rng(1), chunk_batches=8))
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert all(len(b) <= 16 for b in batches)
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    shuffled = np.random.default_rng(2).permutation(1000)
    random_spread = np.mean([np.ptp(lengths[shuffled[i : i + 16]]) for i in range(0, 1000, 16)])
    assert spread < random_spread / 4
    # the batch order is shuffled, not shortest first
    means = [lengths[b].mean() for b in batches]
    assert means != sorted(means)
    again = list(length_batches(lengths, 16, np.random.default_rng(1), chunk_batches=8))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))


@pytest.mark.slow
def test_batching_by_length_trains_on_the_same_examples(tiny_dataset):
    config = small_config(epochs=1, examples="prefixes", batch_by_length=True)
    result = train(tiny_dataset, config, progress=False)
    assert result.test.metrics["hr@10"] > 3 * 10 / tiny_dataset.num_items


def test_an_unknown_kind_of_example_is_refused():
    with pytest.raises(ValueError, match="kind of training examples"):
        training_examples(sequences(), "windows", 10)
    with pytest.raises(Exception, match="examples"):
        small_config(examples="windows")
