"""Vocabulary, chronological sequences and the leave-one-out split."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moerec.data import (
    DataError,
    Interactions,
    Sequences,
    UnknownIdError,
    Vocabulary,
    build_sequences,
    leave_one_out,
)


def make(rows: list[tuple[str, str, int]]) -> Interactions:
    users, items, times = zip(*rows, strict=True)
    return Interactions(
        users=np.array(users),
        items=np.array(items),
        timestamps=np.array(times, dtype=np.int64),
        ratings=None,
        source="test",
    )


def test_vocabulary_orders_numeric_ids_numerically() -> None:
    vocab = Vocabulary.build(make([("10", "10", 0), ("2", "2", 0), ("1", "010", 0), ("2", "9", 0)]))
    assert vocab.item_ids == ("2", "9", "010", "10")  # equal numbers: string order
    assert vocab.user_ids == ("1", "2", "10")
    assert vocab.num_items == 4
    assert vocab.num_users == 3


def test_vocabulary_orders_other_ids_lexicographically() -> None:
    vocab = Vocabulary.build(make([("b", "x10", 0), ("a", "x9", 0), ("c", "7", 0)]))
    assert vocab.item_ids == ("7", "x10", "x9")
    assert vocab.user_ids == ("a", "b", "c")


def test_vocabulary_encode_decode() -> None:
    vocab = Vocabulary(item_ids=("a", "b", "c"), user_ids=("u", "v"))
    assert vocab.encode_items(np.array(["c", "a"])).tolist() == [3, 1]
    assert vocab.encode_items(["b"]).dtype == np.int64
    assert vocab.encode_users(["v", "u"]).tolist() == [1, 0]
    assert vocab.decode_items(np.array([3, 1])) == ["c", "a"]
    assert vocab.item_index("b") == 2
    assert vocab.item_index("zzz") is None
    assert vocab.user_index("v") == 1
    assert vocab.user_index("w") is None


def test_vocabulary_unknown_ids_are_listed() -> None:
    vocab = Vocabulary(item_ids=("a",), user_ids=("u",))
    with pytest.raises(UnknownIdError, match=r"2 unknown item id\(s\).*'x', 'y'") as caught:
        vocab.encode_items(["a", "x", "y", "x"])
    assert isinstance(caught.value, KeyError)
    with pytest.raises(UnknownIdError, match=r"out of range 1\.\.1: 0"):
        vocab.decode_items([0])
    with pytest.raises(UnknownIdError, match="unknown user"):
        vocab.encode_users(["nobody"])


def test_vocabulary_round_trips_through_json() -> None:
    vocab = Vocabulary(item_ids=("10", "2", "é", ""), user_ids=("a b", "7"))
    restored = Vocabulary.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert restored == vocab
    assert restored.item_ids == vocab.item_ids
    assert restored.encode_items(["é"]).tolist() == [3]


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"version": 1, "item_ids": ["a"], "user_ids": "u"},
        {"version": 1, "item_ids": ["a", "a"], "user_ids": []},
        {"version": 1, "item_ids": [1], "user_ids": []},
    ],
)
def test_vocabulary_from_dict_rejects_corrupt_input(bad: dict) -> None:
    with pytest.raises(DataError):
        Vocabulary.from_dict(bad)


def test_sequences_are_chronological_and_ties_keep_file_order() -> None:
    data = make(
        [
            ("u1", "c", 5),
            ("u2", "z", 1),
            ("u1", "a", 5),
            ("u1", "late", 9),
            ("u1", "early", 1),
            ("u1", "b", 5),
        ]
    )
    vocab = Vocabulary.build(data)
    sequences = build_sequences(data, vocab)
    assert len(sequences) == 2
    assert vocab.decode_items(sequences[0]) == ["early", "c", "a", "b", "late"]
    assert vocab.decode_items(sequences[1]) == ["z"]
    assert sequences.lengths.tolist() == [5, 1]


def test_sequences_container() -> None:
    sequences = Sequences.from_lists([[1, 2], [], [3]])
    assert len(sequences) == 3
    assert sequences.offsets.tolist() == [0, 2, 2, 3]
    assert sequences[1].tolist() == []
    assert sequences[-1].tolist() == [3]
    assert sequences.to_lists() == [[1, 2], [], [3]]
    with pytest.raises(IndexError):
        sequences[3]
    with pytest.raises(ValueError, match="offsets"):
        Sequences(np.array([0, 3]), np.array([1, 2]))


def test_leave_one_out_on_a_hand_example() -> None:
    sequences = Sequences.from_lists([[1, 2, 3, 4], [5, 6], [7, 8, 9], [], [10]])
    split = leave_one_out(sequences)
    assert split.train.to_lists() == [[1, 2], [5, 6], [7], [], [10]]
    assert split.valid.users.tolist() == [0, 2]
    assert split.valid.histories.to_lists() == [[1, 2], [7]]
    assert split.valid.targets.tolist() == [3, 8]
    assert split.test.users.tolist() == [0, 2]
    assert split.test.histories.to_lists() == [[1, 2, 3], [7, 8]]
    assert split.test.targets.tolist() == [4, 9]
    assert split.valid.users.dtype == split.test.targets.dtype == np.int64
    assert len(split.test) == 2


def test_leave_one_out_with_nobody_to_evaluate() -> None:
    split = leave_one_out(Sequences.from_lists([[1], [2, 3]]))
    assert split.train.to_lists() == [[1], [2, 3]]
    assert len(split.valid) == len(split.test) == 0
    assert split.test.histories.to_lists() == []
