"""Rating filter and iterated k-core."""

from __future__ import annotations

import numpy as np
import pytest

from moerec.data import DataError, Interactions, filter_min_rating, k_core


def make(pairs: list[tuple[str, str]], ratings: list[float] | None = None) -> Interactions:
    users, items = zip(*pairs, strict=True)
    return Interactions(
        users=np.array(users),
        items=np.array(items),
        timestamps=np.arange(len(pairs), dtype=np.int64),
        ratings=None if ratings is None else np.array(ratings, dtype=np.float32),
        source="test",
    )


def as_pairs(interactions: Interactions) -> list[tuple[str, str]]:
    return list(zip(interactions.users.tolist(), interactions.items.tolist(), strict=True))


def test_k_core_iterates_until_stable() -> None:
    # Round 1 drops user D (1 item); then i4 has one user left, so it goes; then C has one
    # item left and goes; then i3 has one user left and goes. One pass would keep C and i3.
    data = make(
        [
            ("A", "i1"), ("A", "i2"), ("A", "i3"),
            ("B", "i1"), ("B", "i2"),
            ("C", "i3"), ("C", "i4"),
            ("D", "i4"),
        ]
    )  # fmt: skip
    assert as_pairs(k_core(data, min_user=2, min_item=2)) == [
        ("A", "i1"),
        ("A", "i2"),
        ("B", "i1"),
        ("B", "i2"),
    ]


def test_k_core_zero_disables_a_side() -> None:
    data = make([("A", "x"), ("A", "y"), ("B", "x")])
    assert as_pairs(k_core(data, min_user=0, min_item=2)) == [("A", "x"), ("B", "x")]
    assert as_pairs(k_core(data, min_user=2, min_item=0)) == [("A", "x"), ("A", "y")]
    assert k_core(data, 0, 0) is data


def test_k_core_can_remove_everything() -> None:
    assert len(k_core(make([("A", "x"), ("B", "y")]), 2, 2)) == 0


def test_k_core_keeps_order_and_other_columns() -> None:
    data = make([("A", "x"), ("B", "y"), ("A", "y"), ("B", "x")], ratings=[1, 2, 3, 4])
    kept = k_core(data, 2, 2)
    assert kept.timestamps.tolist() == [0, 1, 2, 3]
    assert kept.ratings is not None
    assert kept.ratings.tolist() == [1, 2, 3, 4]


def test_k_core_rejects_negative_thresholds() -> None:
    with pytest.raises(DataError):
        k_core(make([("A", "x")]), -1, 0)


def test_filter_min_rating() -> None:
    data = make([("A", "x"), ("A", "y"), ("B", "x")], ratings=[3.5, 4.0, 5.0])
    assert filter_min_rating(data, None) is data
    assert as_pairs(filter_min_rating(data, 4)) == [("A", "y"), ("B", "x")]


def test_filter_min_rating_without_ratings_is_an_error() -> None:
    with pytest.raises(DataError, match="no ratings"):
        filter_min_rating(make([("A", "x")]), 4.0)


def test_select_checks_the_mask() -> None:
    data = make([("A", "x"), ("B", "y")])
    with pytest.raises(ValueError, match="boolean mask"):
        data.select(np.array([0, 1]))
