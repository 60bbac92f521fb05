"""Bad input always gives a DataFormatError that names the file, the line and the fix."""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moerec.data import FORMATS, DataFormatError, detect_format, read_interactions

BAD_FILES = [
    pytest.param(
        "ratings.dat",
        "1::2::5::100\n1::3::4\n",
        "auto",
        ["ratings.dat:2:", "expected 4 fields separated by '::'", "found 3"],
        id="ml1m-field-count",
    ),
    pytest.param(
        "u.data",
        "1\t2\t5\t100\n\n1\t3\tx\t200\n",
        "auto",
        ["u.data:3:", "rating 'x' is not a number"],
        id="ml100k-rating",
    ),
    pytest.param(
        "u.data",
        "1\t2\t5\t100\n1\t3\t4\t20O\n",
        "movielens-100k",
        ["u.data:2:", "timestamp '20O'", "integer"],
        id="ml100k-timestamp",
    ),
    pytest.param(
        "u.data",
        "1\t2\t5\t100\n1\t3\t4\n",
        "auto",
        ["u.data:2:", "expected 4 tab-separated fields", "found 3"],
        id="ml100k-field-count",
    ),
    pytest.param(
        "ratings.csv",
        "userId,movieId,rating,timestamp\n1,2,3.5,100\n1,2,4\n",
        "auto",
        ["ratings.csv:3:", "expected 4 fields", "found 3"],
        id="latest-field-count",
    ),
    pytest.param(
        "ratings.csv",
        "userId,movieId,rating,timestamp\n1,2,3.5,100\n1,2,nan,200\n",
        "auto",
        ["ratings.csv:3:", "rating 'nan' is not a finite number"],
        id="latest-nan-rating",
    ),
    pytest.param(
        "data.csv",
        "person,thing,when\n1,2,3\n",
        "auto",
        ["data.csv:1:", "no user column", "'person', 'thing', 'when'", "user_id, userId, uid"],
        id="csv-missing-user",
    ),
    pytest.param(
        "data.csv",
        "user,thing\n1,2\n",
        "csv",
        ["data.csv:1:", "no item column", "movieId"],
        id="csv-missing-item",
    ),
    pytest.param(
        "ratings.csv",
        "userId,movieId,timestamp\n1,2,3\n",
        "movielens-latest",
        ["ratings.csv:1:", "no rating column", "score"],
        id="latest-missing-rating",
    ),
    pytest.param(
        "log.csv",
        "user,item,time\n1,2,2020-01-01\n1,3,yesterday\n",
        "auto",
        ["log.csv:3:", "timestamp 'yesterday'", "ISO-8601"],
        id="csv-bad-datetime",
    ),
    pytest.param(
        "log.csv",
        "user,item\n1,2\n,3\n",
        "auto",
        ["log.csv:3:", "user '' is empty"],
        id="csv-empty-id",
    ),
    pytest.param(
        "Video.txt",
        "1 2\n1 3 4\n",
        "pairs",
        ["Video.txt:2:", "expected 2 fields separated by spaces", "found 3"],
        id="pairs-field-count",
    ),
    pytest.param(
        "Beauty.txt",
        "1 2 3\n\n7\n",
        "sequences",
        ["Beauty.txt:3:", "at least one item id"],
        id="sequences-lonely-user",
    ),
    pytest.param(
        "ratings.dat",
        b"1::2::5::100\n1::3::4::200\n1::\xe9::4::300\n",
        "auto",
        ["ratings.dat:3:", "0xE9", "UTF-8"],
        id="latin1-bytes",
    ),
    pytest.param(
        "u.data",
        "1::2::5::100\n",
        "movielens-100k",
        ["u.data:1:", "found 1", "format='movielens-1m'"],
        id="wrong-format-hint",
    ),
    pytest.param(
        "ratings.dat",
        "\n\n  \n",
        "auto",
        ["ratings.dat", "empty"],
        id="blank-file",
    ),
    pytest.param("ratings.dat", "", "movielens-1m", ["ratings.dat", "empty"], id="empty-file"),
    pytest.param(
        "ratings.csv",
        "userId,movieId,rating,timestamp\n",
        "auto",
        ["ratings.csv", "no interactions"],
        id="header-only",
    ),
    pytest.param(
        "ratings.dat.gz",
        "1::2::5::100\n",
        "auto",
        ["ratings.dat.gz", "not gzip-compressed"],
        id="fake-gzip",
    ),
    pytest.param(
        "ratings.dat.gz",
        gzip.compress(b"1::2::5::100\n" * 100)[:30],
        "movielens-1m",
        ["ratings.dat.gz", "gzip"],
        id="truncated-gzip",
    ),
    pytest.param(
        "x.parquet",
        b"PAR1 this is not parquet",
        "auto",
        ["x.parquet", "not a readable Parquet file"],
        id="corrupt-parquet",
    ),
    pytest.param(
        "weird.bin",
        "a\nb c\n",
        "auto",
        ["weird.bin", "cannot tell the format", "movielens-100k"],
        id="undetectable",
    ),
    pytest.param(
        "u.item",
        "1|Toy Story (1995)|01-Jan-1995||http://x|0|0\n",
        "auto",
        ["u.item", "metadata"],
        id="metadata-file",
    ),
]


@pytest.mark.parametrize(("name", "content", "format", "expected"), BAD_FILES)
def test_bad_files_give_clear_errors(
    write, name: str, content: str | bytes, format: str, expected: list[str]
) -> None:
    path = write(name, content)
    with pytest.raises(DataFormatError) as caught:
        read_interactions(path, format=format)
    message = str(caught.value)
    for fragment in expected:
        assert fragment in message
    assert "Traceback" not in message


def test_bad_value_deep_in_a_large_file_is_found_at_its_line(write) -> None:
    lines = [f"{u}::{u % 97}::4::{1000 + u}" for u in range(20_000)]
    lines[15_000] = "15000::3::4::later"
    with pytest.raises(DataFormatError, match=r"ratings\.dat:15001: timestamp 'later'"):
        read_interactions(write("ratings.dat", "\n".join(lines)))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"nope\.csv: file not found"):
        read_interactions(tmp_path / "nope.csv")
    with pytest.raises(DataFormatError, match="file not found"):
        detect_format(tmp_path / "nope.csv")


def test_directory_without_ratings_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataFormatError, match=r"no ratings file.*u\.data.*notes\.txt"):
        read_interactions(tmp_path)


def test_unknown_format_lists_the_formats(write) -> None:
    with pytest.raises(DataFormatError) as caught:
        read_interactions(write("u.data", "1\t2\t3\t4\n"), format="movielens")
    for name in FORMATS:
        assert name in str(caught.value)


def test_parquet_missing_column_lists_found_columns(tmp_path: Path) -> None:
    pq.write_table(pa.table({"who": ["a"], "item": ["x"]}), tmp_path / "t.parquet")
    with pytest.raises(DataFormatError, match=r"t\.parquet: no user column; found columns 'who'"):
        read_interactions(tmp_path / "t.parquet")


def test_parquet_null_value_names_the_row(tmp_path: Path) -> None:
    pq.write_table(pa.table({"user": ["a", None], "item": ["x", "y"]}), tmp_path / "t.parquet")
    with pytest.raises(DataFormatError, match=r"t\.parquet: row 2: user is missing"):
        read_interactions(tmp_path / "t.parquet")


def test_errors_are_moerec_errors(write) -> None:
    from moerec import MoerecError

    with pytest.raises(MoerecError):
        read_interactions(write("ratings.dat", "oops\n"), format="movielens-1m")


def test_parquet_column_of_unusable_type(tmp_path: Path) -> None:
    table = pa.table({"user": ["a"], "item": ["x"], "ts": pa.array([[1]], pa.list_(pa.int64()))})
    pq.write_table(table, tmp_path / "t.parquet")
    with pytest.raises(DataFormatError, match=r"t\.parquet: timestamp column has type list"):
        read_interactions(tmp_path / "t.parquet")
