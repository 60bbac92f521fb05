"""Smoke tests on the real public data sets (skipped when they are not available)."""

from __future__ import annotations

from pathlib import Path

from moerec.data import detect_format, load_dataset, read_interactions, read_item_titles


def test_beauty_sequences(shared_data: Path) -> None:
    path = shared_data / "amazon-beauty" / "Beauty.txt"
    assert detect_format(path) == "sequences"
    dataset = load_dataset(path)
    assert (dataset.num_users, dataset.num_items, dataset.num_interactions) == (
        22_363,
        12_101,
        198_502,
    )
    assert dataset.stats()["min_length"] == 5
    assert len(dataset.split.test) == 22_363


def test_movielens_100k(shared_data: Path) -> None:
    dataset = load_dataset(shared_data / "ml-100k" / "u.data")
    assert (dataset.num_users, dataset.num_items, dataset.num_interactions) == (943, 1682, 100_000)
    assert load_dataset(shared_data / "ml-100k").fingerprint == dataset.fingerprint


def test_movielens_100k_titles(shared_data: Path) -> None:
    titles = read_item_titles(shared_data / "ml-100k" / "u.data")
    assert titles["1"] == "Toy Story (1995)"
    assert len(titles) == 1682
    assert any("Misérables" in title for title in titles.values())  # Latin-1 decoded


def test_movielens_1m_gzip_prefix_and_titles(shared_data: Path) -> None:
    path = shared_data / "ml-1m" / "ratings_users_1-2999.dat.gz"
    assert detect_format(path) == "movielens-1m"
    data = read_interactions(path)
    assert len(data) == 487_650
    assert len(set(data.users.tolist())) == 2999
    titles = read_item_titles(path)
    assert titles["1"] == "Toy Story (1995)"
    assert len(titles) == 3883


def test_video_games_pairs(shared_data: Path) -> None:
    path = shared_data / "amazon-video-games" / "Video.txt"
    assert detect_format(path) == "pairs"
    dataset = load_dataset(path)
    assert (dataset.num_users, dataset.num_items, dataset.num_interactions) == (
        31_013,
        23_715,
        287_107,
    )
