"""Readers and format detection on small hand-written files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moerec.data import FORMATS, detect_format, read_interactions

ML_100K = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n"
ML_1M = "1::1193::5::978300760\n1::661::3::978302109\n2::1357::5::978298709\n"
LATEST = "userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,1260759179\n"
SEQUENCES = "1 1 2 3 4 5\n2 6 7 8 9 10 4 11\n3 4 12\n"
PAIRS = "1 6393\n1 13504\n1 14087\n2 12\n2 6393\n"


def rows(interactions) -> list[tuple[str, str, int]]:
    return list(
        zip(
            interactions.users.tolist(),
            interactions.items.tolist(),
            interactions.timestamps.tolist(),
            strict=True,
        )
    )


def test_movielens_100k(write) -> None:
    data = read_interactions(write("u.data", ML_100K))
    assert rows(data)[0] == ("196", "242", 881250949)
    assert data.ratings is not None
    assert data.ratings.dtype == np.float32
    assert data.ratings.tolist() == [3.0, 3.0, 1.0]
    assert data.timestamps.dtype == np.int64
    assert data.source.endswith("u.data")


@pytest.mark.parametrize("name", ["ratings.dat", "ratings.dat.gz", "anything.gz"])
def test_movielens_1m_plain_and_gzip(write, name: str) -> None:
    content = ML_1M.encode() if not name.endswith(".gz") else gzip.compress(ML_1M.encode())
    data = read_interactions(write(name, content))
    assert len(data) == 3
    assert rows(data)[2] == ("2", "1357", 978298709)
    assert data.ratings is not None
    assert data.ratings.tolist() == [5.0, 3.0, 5.0]


def test_movielens_latest(write) -> None:
    path = write("ratings.csv", LATEST)
    assert detect_format(path) == "movielens-latest"
    data = read_interactions(path)
    assert rows(data) == [("1", "31", 1260759144), ("1", "1029", 1260759179)]
    assert data.ratings is not None
    assert data.ratings.tolist() == [2.5, 3.0]


def test_sequences_use_running_position_as_time(write) -> None:
    data = read_interactions(write("Beauty.txt", SEQUENCES), format="sequences")
    assert len(data) == 14
    assert data.users.tolist()[:5] == ["1"] * 5
    assert data.items.tolist()[5:12] == ["6", "7", "8", "9", "10", "4", "11"]
    assert data.timestamps.tolist() == list(range(14))
    assert data.ratings is None


def test_pairs_use_line_position_as_time(write) -> None:
    data = read_interactions(write("Video.txt", PAIRS))
    assert rows(data) == [
        ("1", "6393", 0),
        ("1", "13504", 1),
        ("1", "14087", 2),
        ("2", "12", 3),
        ("2", "6393", 4),
    ]


def test_pairs_tolerate_extra_whitespace_crlf_blank_lines_and_bom(write) -> None:
    content = b"\xef\xbb\xbf1  10\r\n\r\n1\t11 \r\n   \n2 12"
    data = read_interactions(write("pairs.txt", content), format="pairs")
    assert rows(data) == [("1", "10", 0), ("1", "11", 1), ("2", "12", 2)]


def test_csv_aliases_iso_datetimes_and_quotes(write) -> None:
    content = (
        'uid;iid;datetime;score\n"u,1";a;2020-01-01T00:00:10Z;4\n'
        "u2;b;2020-01-01 00:00:05;2.5\nu2;c;2020-01-01;1\n"
    )
    data = read_interactions(write("log.csv", content))
    assert data.users.tolist() == ["u,1", "u2", "u2"]
    assert data.timestamps.tolist() == [1577836810, 1577836805, 1577836800]
    assert data.ratings is not None
    assert data.ratings.tolist() == [4.0, 2.5, 1.0]


def test_csv_without_timestamp_keeps_file_order(write) -> None:
    data = read_interactions(write("log.tsv", "user_id\titem_id\textra\nb\tx\t1\na\ty\t2\n"))
    assert rows(data) == [("b", "x", 0), ("a", "y", 1)]
    assert data.ratings is None


def test_csv_header_names_are_case_and_underscore_insensitive(write) -> None:
    data = read_interactions(write("x.csv", "USER_ID,Item-Id,TS\n1,2,3\n"), format="csv")
    assert rows(data) == [("1", "2", 3)]


def test_csv_quoted_newline_falls_back_to_exact_parser(write) -> None:
    data = read_interactions(write("x.csv", 'user,item,time\n"a\nb",i,5\nc,j,6\n'))
    assert rows(data) == [("a\nb", "i", 5), ("c", "j", 6)]


def test_parquet_with_typed_columns(tmp_path: Path) -> None:
    table = pa.table(
        {
            "userID": pa.array([1, 1, 2], pa.int64()),
            "movieID": pa.array(["10", "11", "10"]),
            "time": pa.array([10_000, 20_500, 30_000], pa.timestamp("ms")),
            "rating": pa.array([1, 2, 3], pa.int8()),
        }
    )
    pq.write_table(table, tmp_path / "log.parquet")
    data = read_interactions(tmp_path / "log.parquet")
    assert rows(data) == [("1", "10", 10), ("1", "11", 20), ("2", "10", 30)]
    assert data.ratings is not None
    assert data.ratings.tolist() == [1.0, 2.0, 3.0]


def test_parquet_without_time_and_unusual_name_is_sniffed(tmp_path: Path) -> None:
    pq.write_table(pa.table({"user": ["a", "b"], "item": ["x", "y"]}), tmp_path / "data.bin")
    assert detect_format(tmp_path / "data.bin") == "parquet"
    assert rows(read_interactions(tmp_path / "data.bin")) == [("a", "x", 0), ("b", "y", 1)]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("u.data", ML_100K),
        ("ratings.dat.gz", gzip.compress(ML_1M.encode())),
        ("ratings.csv", LATEST),
    ],
)
def test_directory_finds_the_ratings_file(tmp_path: Path, name: str, content: str | bytes) -> None:
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    (folder / "README").write_text("not data")
    data = read_interactions(folder)
    assert data.source == str(folder / name)
    assert len(data) in (2, 3)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("u.data", ML_100K, "movielens-100k"),
        ("u1.base", ML_100K, "movielens-100k"),
        ("ratings.tsv.txt", ML_100K, "movielens-100k"),
        ("ratings.dat", ML_1M, "movielens-1m"),
        ("whatever.txt", ML_1M, "movielens-1m"),
        ("ratings.csv", LATEST, "movielens-latest"),
        ("Beauty.txt", SEQUENCES, "sequences"),
        ("Video.txt", PAIRS, "pairs"),
        ("interactions", "user,item,timestamp\n1,2,3\n", "csv"),
        ("export.csv", "who,what\n1,2\n", "csv"),
        ("x.parquet", b"not really parquet", "parquet"),
    ],
)
def test_detect_format(write, name: str, content: str | bytes, expected: str) -> None:
    assert detect_format(write(name, content)) == expected


def test_detect_format_of_gzip_uses_the_inner_name_and_content(write) -> None:
    assert detect_format(write("u.data.gz", gzip.compress(ML_100K.encode()))) == "movielens-100k"
    assert detect_format(write("Video.txt.gz", gzip.compress(PAIRS.encode()))) == "pairs"


def test_explicit_format_overrides_detection(write) -> None:
    path = write("ratings.txt", "1 2\n3 4\n")
    assert len(read_interactions(path, format="sequences")) == 2
    assert len(read_interactions(path, format=" Pairs ")) == 2


def test_formats_constant() -> None:
    assert FORMATS == (
        "movielens-100k",
        "movielens-1m",
        "movielens-latest",
        "sequences",
        "pairs",
        "csv",
        "parquet",
    )


def test_parquet_categorical_columns(tmp_path: Path) -> None:
    users = pa.array(["b", "a", "b"]).dictionary_encode()
    pq.write_table(pa.table({"user_id": users, "item_id": ["x", "y", "z"]}), tmp_path / "c.pq")
    assert rows(read_interactions(tmp_path / "c.pq")) == [
        ("b", "x", 0),
        ("a", "y", 1),
        ("b", "z", 2),
    ]
