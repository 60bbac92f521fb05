"""Streaming CSV/Parquet reads: the same interactions as the whole-file reader, in less memory."""

from __future__ import annotations

import gzip
import json
import string
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from moerec.cli import app
from moerec.config import DataConfig
from moerec.data import (
    DataError,
    DataFormatError,
    Interactions,
    load_dataset,
    read_interactions,
    readers,
    streaming,
)
from moerec.data.streaming import chunk_rows_for, stream_interactions


def assert_same(streamed: Interactions | None, whole: Interactions) -> None:
    assert streamed is not None, "the file was not streamed"
    assert streamed.source == whole.source
    for name in ("users", "items", "timestamps"):
        got, expected = getattr(streamed, name), getattr(whole, name)
        assert got.dtype == expected.dtype, name
        np.testing.assert_array_equal(got, expected, err_msg=name)
    if whole.ratings is None:
        assert streamed.ratings is None
    else:
        assert streamed.ratings is not None
        assert streamed.ratings.dtype == whole.ratings.dtype
        np.testing.assert_array_equal(streamed.ratings, whole.ratings)


def whole(path: Path, format: str = "auto") -> Interactions:
    return read_interactions(path, format, chunk_rows=0)


def rows_text(count: int, header: str = "user_id,item_id,rating,timestamp") -> str:
    """A CSV body with repeated users/items, tied timestamps and ids of varying length."""
    lines = [header]
    for row in range(count):
        user, item = f"u{row % 7}" + "x" * (row % 3), f"item-{(row * 5) % 11}"
        lines.append(f"{user},{item},{(row % 5) + 0.5},{1_000 + row // 3}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("chunk_rows", [1, 4, 29, 1_000])
def test_streamed_csv_equals_the_whole_file(tmp_path: Path, chunk_rows: int):
    path = tmp_path / "log.csv"
    path.write_text(rows_text(60))
    assert_same(stream_interactions(path, "csv", chunk_rows), whole(path))


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("tabs.tsv", rows_text(40).replace(",", "\t")),
        ("bom.csv", "\ufeff" + rows_text(40)),
        ("crlf.csv", rows_text(40).replace("\n", "\r\n")),
        ("no_time.csv", "user,item\n" + "".join(f"u{r % 4},i{r % 9}\n" for r in range(40))),
        (
            "iso.csv",
            "user,item,time\n"
            + "".join(f"u{r % 3},i{r},2024-05-0{1 + r % 9}T10:00\n" for r in range(30)),
        ),
        ("quoted.csv", "user,item,title\n" + "".join(f'u{r % 3},i{r},"a, b"\n' for r in range(30))),
    ],
)
def test_streamed_csv_variants_equal_the_whole_file(tmp_path: Path, name: str, content: str):
    path = tmp_path / name
    path.write_text(content, newline="")
    assert_same(stream_interactions(path, "csv", 3), whole(path))


def test_streamed_gzip_csv_equals_the_whole_file(tmp_path: Path):
    path = tmp_path / "log.csv.gz"
    path.write_bytes(gzip.compress(rows_text(50).encode()))
    assert_same(stream_interactions(path, "csv", 6), whole(path))


def test_streamed_movielens_latest_keeps_integer_timestamps(tmp_path: Path):
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,1260759179\n")
    assert readers.detect_format(path) == "movielens-latest"
    streamed = stream_interactions(path, "movielens-latest", 1)
    assert_same(streamed, whole(path))
    assert streamed is not None
    assert streamed.timestamps.tolist() == [1260759144, 1260759179]


def parquet_table(count: int) -> pa.Table:
    """Integer users, dictionary-encoded items, timestamp type: the typed Parquet paths."""
    return pa.table(
        {
            "userId": pa.array([row % 6 for row in range(count)], pa.int64()),
            "movie_id": pa.array(
                [f"m{(row * 3) % 13}" for row in range(count)]
            ).dictionary_encode(),
            "rating": pa.array([float(row % 5) for row in range(count)], pa.float64()),
            "ts": pa.array(
                [1_700_000_000_000 + 1_000 * (row // 2) for row in range(count)], pa.timestamp("ms")
            ),
            "ignored": pa.array(["x" * (row % 4) for row in range(count)]),
        }
    )


@pytest.mark.parametrize("chunk_rows", [1, 5, 64])
def test_streamed_parquet_equals_the_whole_file(tmp_path: Path, chunk_rows: int):
    path = tmp_path / "log.parquet"
    pq.write_table(parquet_table(50), path, row_group_size=8)
    assert_same(stream_interactions(path, "parquet", chunk_rows), whole(path))


def test_a_bad_parquet_value_is_reported_at_its_row_as_without_streaming(tmp_path: Path):
    users = [f"u{row}" for row in range(40)]
    users[32] = "  "
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"user": users, "item": ["i"] * 40}), path, row_group_size=10)
    with pytest.raises(DataFormatError) as expected:
        whole(path)
    with pytest.raises(DataFormatError) as streamed:
        read_interactions(path, chunk_rows=4)
    assert "row 33:" in str(expected.value)
    assert str(streamed.value) == str(expected.value)


def test_a_bad_csv_value_late_in_the_file_names_its_line_as_without_streaming(tmp_path: Path):
    text = rows_text(80).splitlines()
    text[70] = "u1,i1,4.0,soon"
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(text) + "\n")
    assert stream_interactions(path, "csv", 5) is None  # handed to the exact parser
    with pytest.raises(DataFormatError) as expected:
        whole(path)
    with pytest.raises(DataFormatError) as streamed:
        read_interactions(path, chunk_rows=5)
    assert f"{path}:71:" in str(expected.value)
    assert str(streamed.value) == str(expected.value)


def test_csv_pyarrow_cannot_parse_is_read_whole_with_the_same_result(tmp_path: Path):
    path = tmp_path / "spaces.csv"
    path.write_text("user,item\nu1,i1\n   \nu2,i2\nu1,i3\n")  # the exact parser skips "   "
    assert stream_interactions(path, "csv", 1) is None
    assert_same(read_interactions(path, chunk_rows=1), whole(path))
    assert whole(path).items.tolist() == ["i1", "i2", "i3"]


@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 50])
def test_quoted_values_spanning_lines_give_the_same_result(tmp_path: Path, chunk_rows: int):
    path = tmp_path / "multiline.csv"
    rows = "".join(f'u{row % 3},i{row},"line one\nline {row}"\n' for row in range(12))
    path.write_text("user,item,note\n" + rows)
    assert_same(read_interactions(path, chunk_rows=chunk_rows), whole(path))
    assert len(whole(path)) == 12


def test_a_missing_column_is_reported_as_without_streaming(tmp_path: Path):
    path = tmp_path / "no_item.csv"
    path.write_text("user,product\nu1,p1\n")
    with pytest.raises(DataFormatError) as expected:
        whole(path)
    with pytest.raises(DataFormatError) as streamed:
        read_interactions(path, chunk_rows=10)
    assert "no item column" in str(expected.value)
    assert str(streamed.value) == str(expected.value)


def test_a_header_only_file_has_no_interactions_either_way(tmp_path: Path):
    path = tmp_path / "empty.csv"
    path.write_text("user,item\n")
    with pytest.raises(DataFormatError, match="no interactions found"):
        read_interactions(path, chunk_rows=10)


def test_chunk_rows_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "small.csv"
    path.write_text(rows_text(5))
    assert chunk_rows_for(path, "csv", None) == 0  # small files are read whole
    assert chunk_rows_for(path, "csv", 0) == 0
    assert chunk_rows_for(path, "csv", 7) == 7
    assert chunk_rows_for(path, "movielens-1m", 7) == 0  # text formats are always read whole
    monkeypatch.setattr(streaming, "AUTO_STREAM_BYTES", path.stat().st_size)
    assert chunk_rows_for(path, "parquet", None) == streaming.DEFAULT_CHUNK_ROWS
    with pytest.raises(DataError, match="chunk_rows must be >= 0"):
        chunk_rows_for(path, "csv", -1)


def test_large_files_stream_automatically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "log.csv"
    path.write_text(rows_text(30))
    calls: list[int] = []

    def spy(path: Path, format: str, chunk_rows: int) -> Interactions | None:
        calls.append(chunk_rows)
        return stream_interactions(path, format, chunk_rows)

    monkeypatch.setattr(readers, "stream_interactions", spy)
    monkeypatch.setattr(streaming, "AUTO_STREAM_BYTES", path.stat().st_size)
    monkeypatch.setattr(streaming, "DEFAULT_CHUNK_ROWS", 4)
    assert_same(read_interactions(path), whole(path))
    assert calls == [4]


def test_data_config_chunk_rows_gives_the_same_dataset(tmp_path: Path):
    path = tmp_path / "log.csv"
    path.write_text(rows_text(90))
    streamed = load_dataset(path, DataConfig(chunk_rows=7))
    assert streamed.fingerprint == load_dataset(path, DataConfig(chunk_rows=0)).fingerprint


def test_cli_chunk_rows_option(tmp_path: Path):
    path = tmp_path / "log.csv"
    path.write_text(rows_text(90))
    runner = CliRunner()
    plain = runner.invoke(app, ["data", "stats", "--data", str(path)])
    chunked = runner.invoke(app, ["data", "stats", "--data", str(path), "--chunk-rows", "4"])
    assert chunked.exit_code == 0, chunked.output
    assert chunked.output == plain.output
    negative = runner.invoke(app, ["data", "stats", "--data", str(path), "--chunk-rows", "-1"])
    assert negative.exit_code == 2


token = st.text(alphabet=string.ascii_letters + string.digits + "-_.", min_size=1, max_size=8)
events = st.lists(
    st.tuples(token, token, st.integers(-(2**40), 2**40), st.sampled_from([0.5, 1.0, 4.5])),
    min_size=1,
    max_size=40,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=events, chunk_rows=st.integers(1, 45))
def test_chunk_size_never_changes_the_result(rows: list[tuple[str, str, int, float]], chunk_rows):
    users, items, times, scores = (list(column) for column in zip(*rows, strict=True))
    table = pa.table({"user": users, "item": items, "timestamp": times, "rating": scores})
    with tempfile.TemporaryDirectory() as folder:
        csv_path, parquet_path = Path(folder) / "log.csv", Path(folder) / "log.parquet"
        pa_csv.write_csv(table, csv_path)
        pq.write_table(table, parquet_path, row_group_size=7)
        for path, format in ((csv_path, "csv"), (parquet_path, "parquet")):
            assert_same(stream_interactions(path, format, chunk_rows), whole(path, format))


# ----------------------------------------------------------------------------- memory

ROWS = 1_000_000
CHUNK_ROWS = 10_000
# Measured in a fresh interpreter (VmHWM starts again at exec; tracemalloc would miss pyarrow's
# own allocator): the growth of peak resident memory while reading, the size of the result,
# and a digest of the result.
_MEASURE = """
import hashlib, json, sys
from moerec.data.readers import read_interactions

def peak_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

before = peak_kib()
got = read_interactions(sys.argv[1], chunk_rows=int(sys.argv[2]))
grown = peak_kib() - before
digest = hashlib.sha256()
for column in (got.users, got.items, got.timestamps, got.ratings):
    digest.update(str(column.dtype).encode() + column.tobytes())
result = sum(column.nbytes for column in (got.users, got.items, got.timestamps, got.ratings))
print(json.dumps({"peak": grown, "result": result // 1024, "digest": digest.hexdigest()}))
"""


def _measure(path: Path, chunk_rows: int) -> dict[str, int | str]:
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path), str(chunk_rows)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@pytest.fixture(scope="module")
def large_table() -> pa.Table:
    """A million events with realistic ids: 50k users, 20k items, epoch seconds, ratings."""
    rng = np.random.default_rng(0)
    users = rng.integers(0, 50_000, ROWS)
    items = rng.integers(0, 20_000, ROWS)
    return pa.table(
        {
            "user_id": pa.array(np.char.add("user-", users.astype(str))),
            "item_id": pa.array(np.char.add("sku-", items.astype(str))),
            "rating": pa.array(rng.integers(1, 11, ROWS) / 2),
            "timestamp": pa.array(1_500_000_000 + np.sort(rng.integers(0, 10**8, ROWS))),
        }
    )


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_streaming_peaks_well_below_the_whole_file_reader(
    tmp_path: Path, large_table: pa.Table, suffix: str
):
    path = tmp_path / f"large.{suffix}"
    if suffix == "csv":
        pa_csv.write_csv(large_table, path)
    else:
        pq.write_table(large_table, path)
    whole_file = _measure(path, 0)
    streamed = _measure(path, CHUNK_ROWS)
    assert streamed["digest"] == whole_file["digest"]
    assert streamed["result"] == whole_file["result"]
    # Both hold the same result (about 80 MiB of fixed-width id strings) at the end. On top of
    # it streaming needs compact codes and one chunk, the whole-file reader the file's bytes,
    # an arrow table and a Python string per id: it is the part beyond the result that shrinks.
    extra_streamed = int(streamed["peak"]) - int(streamed["result"])
    extra_whole = int(whole_file["peak"]) - int(whole_file["result"])
    assert extra_streamed < 0.5 * extra_whole, (streamed, whole_file)
    assert int(streamed["peak"]) < 0.75 * int(whole_file["peak"]), (streamed, whole_file)
