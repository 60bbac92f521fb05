"""The synthetic generator: deterministic, fast, and with a learnable sequential pattern."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from moerec.data import (
    DataError,
    Interactions,
    generate_interactions,
    read_interactions,
    synthetic_titles,
    write_csv,
)


@pytest.fixture(scope="module")
def log() -> Interactions:
    return generate_interactions(num_users=2000, num_items=1000, seed=0)


def test_deterministic_for_a_seed(log: Interactions) -> None:
    again = generate_interactions(num_users=2000, num_items=1000, seed=0)
    other = generate_interactions(num_users=2000, num_items=1000, seed=1)
    for column in ("users", "items", "timestamps"):
        assert np.array_equal(getattr(log, column), getattr(again, column))
    assert not np.array_equal(log.items[:100], other.items[:100])
    assert log.source.startswith("synthetic(seed=0")


def test_fast_enough() -> None:
    start = time.perf_counter()
    generate_interactions(num_users=2000, num_items=1000, mean_length=30, seed=3)
    assert time.perf_counter() - start < 2.0  # typically ~0.1 s


def test_shape_ids_lengths_and_time(log: Interactions) -> None:
    users = log.users.astype(int)
    items = log.items.astype(int)
    assert users.min() == 1
    assert users.max() == 2000
    assert items.min() >= 1
    assert items.max() <= 1000
    lengths = np.bincount(users)[1:]
    assert lengths.min() >= 5
    assert 25 <= lengths.mean() <= 40
    assert lengths.max() > 2 * lengths.mean()  # long tail of heavy users
    same_user = users[1:] == users[:-1]
    assert (np.diff(log.timestamps)[same_user] > 0).all()
    assert log.ratings is None


def test_popularity_has_a_long_tail(log: Interactions) -> None:
    counts = np.sort(np.bincount(log.items.astype(int))[1:])[::-1]
    assert counts[:100].sum() > 0.3 * counts.sum()  # top 10% of items: over 30% of events
    assert counts[0] > 20 * np.median(counts)


def test_users_rarely_repeat_items(log: Interactions) -> None:
    pairs = set(zip(log.users.tolist(), log.items.tolist(), strict=True))
    assert len(pairs) > 0.99 * len(log)


def test_strong_sequential_structure(log: Interactions) -> None:
    """The most frequent successor of an item follows it far more often than chance."""
    users, items = log.users, log.items.astype(int)
    same_user = users[1:] == users[:-1]
    followers: dict[int, Counter[int]] = {}
    for prev, nxt in zip(items[:-1][same_user], items[1:][same_user], strict=True):
        followers.setdefault(int(prev), Counter())[int(nxt)] += 1
    shares = [
        counter.most_common(1)[0][1] / sum(counter.values())
        for counter in followers.values()
        if sum(counter.values()) >= 20
    ]
    assert len(shares) > 200
    assert np.mean(shares) > 0.25  # chance would be about 1/1000 (1/100 within a cluster)


def test_titles_name_clusters_and_ranks() -> None:
    titles = synthetic_titles(1000, num_clusters=10, seed=0)
    assert len(titles) == 1000
    assert set(titles) == {str(i) for i in range(1, 1001)}
    assert len(set(titles.values())) == 1000
    genres = {title.split(" #")[0] for title in titles.values()}
    assert len(genres) == 10
    assert sum(title.endswith(" #1") for title in titles.values()) == 10
    assert synthetic_titles(1000, 10, seed=0) == titles
    assert len({t.split(" #")[0] for t in synthetic_titles(40, 20).values()}) == 20


def test_items_of_a_cluster_co_occur(log: Interactions) -> None:
    """Users mostly stay within their one or two favourite clusters."""
    cluster = {item: title.split(" #")[0] for item, title in synthetic_titles(1000).items()}
    first_user = log.users == "1"
    clusters = Counter(cluster[item] for item in log.items[first_user].tolist())
    top_two = sum(count for _, count in clusters.most_common(2))
    assert top_two >= 0.7 * first_user.sum()


def test_invalid_arguments() -> None:
    with pytest.raises(DataError):
        generate_interactions(num_users=0)
    with pytest.raises(DataError, match="num_clusters"):
        generate_interactions(num_items=5, num_clusters=10)


def test_tiny_catalogue_still_works() -> None:
    data = generate_interactions(num_users=20, num_items=3, num_clusters=3, mean_length=8)
    assert set(data.items.tolist()) <= {"1", "2", "3"}


@pytest.mark.parametrize("name", ["log.csv", "nested/log.csv.gz"])
def test_write_csv_round_trips(tmp_path: Path, name: str) -> None:
    data = generate_interactions(num_users=50, num_items=40, num_clusters=4, seed=7)
    rated = Interactions(
        users=data.users,
        items=data.items,
        timestamps=data.timestamps,
        ratings=np.linspace(1, 5, len(data)).astype(np.float32),
        source=data.source,
    )
    for original in (data, rated):
        write_csv(original, tmp_path / name)
        back = read_interactions(tmp_path / name)
        assert back.users.tolist() == original.users.tolist()
        assert back.items.tolist() == original.items.tolist()
        assert back.timestamps.tolist() == original.timestamps.tolist()
        if original.ratings is None:
            assert back.ratings is None
        else:
            assert back.ratings is not None
            assert np.array_equal(back.ratings, original.ratings)
