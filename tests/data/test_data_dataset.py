"""End to end: file -> Dataset, with filtering, fingerprint and stats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moerec.config import DataConfig
from moerec.data import (
    DataError,
    Interactions,
    dataset_from_interactions,
    generate_interactions,
    load_dataset,
)

RATINGS = (
    "1::10::5::100\n1::20::3::101\n1::30::4::102\n1::40::5::103\n"
    "2::10::1::100\n2::30::5::101\n2::20::4::102\n"
    "3::50::5::100\n"
)


@pytest.fixture
def ratings_file(write) -> Path:
    return write("ml/ratings.dat", RATINGS)


def test_load_dataset(ratings_file: Path) -> None:
    dataset = load_dataset(ratings_file)
    assert (dataset.num_users, dataset.num_items, dataset.num_interactions) == (3, 5, 8)
    assert dataset.vocab.user_ids == ("1", "2", "3")
    assert dataset.vocab.decode_items(dataset.sequences[1]) == ["10", "30", "20"]
    assert dataset.split.test.users.tolist() == [0, 1]
    assert dataset.vocab.decode_items(dataset.split.test.targets) == ["40", "20"]
    assert dataset.split.train.lengths.tolist() == [2, 1, 1]
    assert dataset.source == str(ratings_file)


def test_load_dataset_from_directory_with_filters(ratings_file: Path) -> None:
    config = DataConfig(min_rating=4.0, min_user_interactions=2, min_item_interactions=1)
    dataset = load_dataset(ratings_file.parent, config)
    # Ratings >= 4 leave user 1 with 10, 30, 40; user 2 with 30, 20; user 3 with 50 (dropped).
    assert dataset.vocab.user_ids == ("1", "2")
    assert dataset.vocab.item_ids == ("10", "20", "30", "40")
    assert dataset.num_interactions == 5


def test_format_argument_overrides_config(write) -> None:
    path = write("data.txt", "1 2 3 4\n")
    assert load_dataset(path, DataConfig(format="pairs"), format="sequences").num_items == 3


def test_config_format_is_used(write) -> None:
    path = write("data.txt", "a b\n")
    assert load_dataset(path, DataConfig(format="sequences")).num_items == 1


def test_everything_filtered_out_is_a_clear_error(ratings_file: Path) -> None:
    with pytest.raises(DataError, match="no interactions left after filtering"):
        load_dataset(ratings_file, DataConfig(min_user_interactions=100))


def test_stats(ratings_file: Path) -> None:
    stats = load_dataset(ratings_file).stats()
    assert stats == {
        "users": 3,
        "items": 5,
        "interactions": 8,
        "density": pytest.approx(8 / 15),
        "min_length": 1,
        "median_length": 3.0,
        "mean_length": pytest.approx(8 / 3),
        "max_length": 4,
    }


def test_fingerprint_is_stable_and_tracks_the_data(write, ratings_file: Path) -> None:
    first = load_dataset(ratings_file).fingerprint
    assert first == load_dataset(ratings_file).fingerprint
    assert len(first) == 64
    # Same data under another name and format: same fingerprint.
    renamed = write("copy.csv", "user,item,rating,timestamp\n" + RATINGS.replace("::", ","))
    assert load_dataset(renamed).fingerprint == first
    # Pinned, so an accidental change of the hashing scheme is noticed.
    assert first == PINNED_FINGERPRINT
    changed = write("changed/ratings.dat", RATINGS.replace("3::50", "3::60"))
    assert load_dataset(changed).fingerprint != first
    reordered = write("reordered/ratings.dat", RATINGS.replace("::101\n", "::99\n", 1))
    assert load_dataset(reordered).fingerprint != first


PINNED_FINGERPRINT = "4aeda9aa04d23c9c343838786eb360ba9acece5e26779df2a9f8a0e0a6112b7d"


def test_dataset_from_synthetic_interactions() -> None:
    dataset = dataset_from_interactions(generate_interactions(num_users=300, num_items=200))
    assert dataset.num_users == 300
    assert len(dataset.split.test) == 300  # every synthetic user has >= 5 items
    assert dataset.split.train.items.min() >= 1
    assert dataset.split.train.items.max() <= dataset.num_items


def test_empty_interactions_are_rejected() -> None:
    empty = Interactions(
        users=np.array([], dtype=str),
        items=np.array([], dtype=str),
        timestamps=np.array([], dtype=np.int64),
        ratings=None,
        source="nothing",
    )
    with pytest.raises(DataError, match="nothing: there are no interactions"):
        dataset_from_interactions(empty)
