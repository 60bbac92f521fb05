"""Reading large CSV/TSV and Parquet files in chunks: memory holds compact columns plus a chunk.

The whole-file readers hold the file's bytes, a decoded copy, an arrow table and one Python
string object per id at the same time: several times the size of the file. Here each chunk (a
Parquet record batch, or a block of CSV lines) is validated by the same column builders as the
whole-file readers, its ids are interned into a growing vocabulary, and only compact columns
grow: an int32 code per id, an int64 time and a float32 rating per row. The codes are expanded
back to id strings once, at the end, so the result equals what the whole-file reader returns.

A CSV file that pyarrow cannot parse as-is (a line of spaces, a bad value, a blank first line, a
row longer than a block...) gives None: the caller then reads it whole, whose line-by-line
parser either accepts the file or names the offending line, exactly as without streaming.
"""

from __future__ import annotations

import gzip
import io
import zlib
from array import array
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from moerec.data._columns import BadValue, Column, TimestampKind, id_strings, ratings, timestamps
from moerec.data._files import ASCII_WHITESPACE, GZIP_MAGIC, read_bytes
from moerec.data._tables import header_names, match_roles, require_roles, sniff_delimiter
from moerec.data.errors import DataError, DataFormatError
from moerec.data.interactions import Interactions

__all__ = [
    "AUTO_STREAM_BYTES",
    "DEFAULT_CHUNK_ROWS",
    "STREAMABLE_FORMATS",
    "chunk_rows_for",
    "stream_interactions",
]

STREAMABLE_FORMATS = frozenset({"csv", "movielens-latest", "parquet"})
DEFAULT_CHUNK_ROWS = 100_000
# Below this the whole-file reader's peak (a few times the file) is harmless on any machine.
AUTO_STREAM_BYTES = 256 * 2**20
_HEAD_BYTES = 64 * 1024
_CSV_FAILURES = (pa.ArrowException, ValueError, OSError, EOFError, zlib.error, BadValue)


def chunk_rows_for(path: Path, format: str, chunk_rows: int | None) -> int:
    """Rows per chunk for reading ``path`` in ``format``; 0 means read the file whole.

    ``chunk_rows`` None is automatic: stream files of at least :data:`AUTO_STREAM_BYTES` on
    disk in chunks of :data:`DEFAULT_CHUNK_ROWS`. The header-less text formats (MovieLens
    ``u.data``/``ratings.dat``, S3-Rec and SASRec ``.txt``) are always read whole: their
    line-by-line fallback works on the whole text to name the exact line of an error.
    """
    if chunk_rows is not None and chunk_rows < 0:
        raise DataError(
            f"chunk_rows must be >= 0 (got {chunk_rows}); use 0 to read files whole, or leave it "
            "unset to stream large CSV/Parquet files automatically"
        )
    if format not in STREAMABLE_FORMATS or chunk_rows == 0:
        return 0
    if chunk_rows is not None:
        return chunk_rows
    try:
        large = path.stat().st_size >= AUTO_STREAM_BYTES
    except OSError:
        large = False  # the whole-file reader reports why the file cannot be read
    return DEFAULT_CHUNK_ROWS if large else 0


class _Interner:
    """The growing vocabulary of one id column: raw id -> dense code, in first-seen order."""

    def __init__(self) -> None:
        self._codes: dict[str, int] = {}

    def encode(self, strings: pa.Array) -> np.ndarray:
        """int32 codes of a chunk; only its distinct ids touch the Python dictionary."""
        encoded = pc.dictionary_encode(strings)
        known = self._codes
        distinct = encoded.dictionary.to_pylist()
        local = np.fromiter(
            (known.setdefault(raw, len(known)) for raw in distinct), np.int32, len(distinct)
        )
        return local[encoded.indices.to_numpy(zero_copy_only=False)]

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """The raw ids of ``codes`` as the numpy str array the whole-file readers return."""
        return np.asarray(list(self._codes), dtype=str)[codes]


class _CompactColumns:
    """The rows read so far: two id codes, a time and (if the file has them) a rating each."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.rows = 0
        self._users = _Interner()
        self._items = _Interner()
        self._user_codes = array("i")
        self._item_codes = array("i")
        self._times = array("q")
        self._ratings: array[float] | None = None

    def add(self, columns: dict[str, Column], kind: TimestampKind) -> None:
        """Validate and append one chunk; a :class:`BadValue` row counts from the chunk start."""
        users = id_strings(columns["user"], "user")
        items = id_strings(columns["item"], "item")
        size = len(users)
        if "timestamp" in columns:
            times = timestamps(columns["timestamp"], "timestamp", kind)
        else:  # the row position is the time, as in the whole-file readers
            times = np.arange(self.rows, self.rows + size, dtype=np.int64)
        rated = ratings(columns["rating"], "rating") if "rating" in columns else None
        self._user_codes.frombytes(self._users.encode(users).astype(np.intc).tobytes())
        self._item_codes.frombytes(self._items.encode(items).astype(np.intc).tobytes())
        self._times.frombytes(times.astype(np.int64).tobytes())
        if rated is not None:
            if self._ratings is None:
                self._ratings = array("f")
            self._ratings.frombytes(rated.astype(np.float32).tobytes())
        self.rows += size

    def build(self) -> Interactions:
        return Interactions(
            users=self._users.decode(np.frombuffer(self._user_codes, dtype=np.intc)),
            items=self._items.decode(np.frombuffer(self._item_codes, dtype=np.intc)),
            timestamps=np.frombuffer(self._times, dtype=np.int64),
            ratings=None if self._ratings is None else np.frombuffer(self._ratings, np.float32),
            source=self.source,
        )


def _is_gzip(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(2) == GZIP_MAGIC
    except OSError:
        return False


def _open(path: Path) -> gzip.GzipFile | io.BufferedReader:
    return gzip.open(path, "rb") if _is_gzip(path) else path.open("rb")


def stream_parquet(path: Path, chunk_rows: int) -> Interactions | None:
    """A Parquet file read ``chunk_rows`` rows at a time (pyarrow still reads the compressed
    pages of the selected columns one row group at a time).

    None for files the whole-file reader handles better: gzip-compressed ones (not seekable)
    and ones with duplicate column names (columns cannot be selected by name).
    """
    if _is_gzip(path):
        return None
    columns = _CompactColumns(str(path))
    try:
        with pq.ParquetFile(path) as parquet:
            names = list(parquet.schema_arrow.names)
            if len(set(names)) != len(names):
                return None
            roles = match_roles(names)
            require_roles(str(path), names, roles, ("user", "item"))
            wanted = {role: names[index] for role, index in roles.items()}
            batches = parquet.iter_batches(batch_size=chunk_rows, columns=list(wanted.values()))
            for batch in batches:
                columns.add({role: batch.column(name) for role, name in wanted.items()}, "any")
    except BadValue as bad:
        row = "" if bad.row is None else f"row {columns.rows + bad.row + 1}: "
        raise DataFormatError(f"{path}: {row}{bad.describe()}") from None
    except (pa.ArrowException, OSError, ValueError, TypeError, IndexError) as exc:
        raise DataFormatError(
            f"{path}: not a readable Parquet file ({exc}); check the file or pass the right format"
        ) from None
    return columns.build()


def _header(head: bytes) -> str | None:
    """The first line if it is a usable header; None sends the file to the whole-file reader,
    which looks for the header further down and reports undecodable bytes by line."""
    end = head.find(b"\n")
    if end < 0:
        return None
    try:
        line = head[:end].decode("utf-8").removesuffix("\r")
    except UnicodeDecodeError:
        return None
    if "\r" in line or not line.strip(ASCII_WHITESPACE):
        return None
    return line


def _block_bytes(head: bytes, chunk_rows: int) -> int:
    """pyarrow's CSV block size (it reads bytes, not rows) for about ``chunk_rows`` rows.

    At least twice the longest sampled line, so that each block ends inside the data rather
    than splitting a row (which pyarrow refuses).
    """
    lines = head.split(b"\n")[1:-1]  # without the header and the possibly cut last line
    if not lines:
        return max(len(head), 1) * 2
    mean = sum(len(line) + 1 for line in lines) / len(lines)
    longest = max(len(line) + 1 for line in lines)
    return max(int(chunk_rows * mean), 2 * longest)


def stream_csv(
    path: Path,
    chunk_rows: int,
    required: tuple[str, ...] = ("user", "item"),
    kind: TimestampKind = "any",
) -> Interactions | None:
    """A CSV/TSV file (header on the first line) read about ``chunk_rows`` rows at a time.

    None when pyarrow cannot read the file as-is (see the module docstring). A missing
    required column is reported here, as the whole-file reader would.
    """
    head = read_bytes(path, limit=_HEAD_BYTES)
    header = _header(head)
    if header is None:
        return None
    delimiter = sniff_delimiter(header, str(path))
    names = header_names(header, delimiter)
    roles = match_roles(names)
    require_roles(f"{path}:1", names, roles, required)
    # Positional names: header names may repeat or be empty, which pyarrow rejects.
    positional = [f"c{index}" for index in range(len(names))]
    wanted = {role: positional[index] for role, index in roles.items()}
    columns = _CompactColumns(str(path))
    try:
        with _open(path) as handle:
            handle.readline()  # the header, parsed above
            reader = pa_csv.open_csv(
                handle,
                read_options=pa_csv.ReadOptions(
                    column_names=positional, block_size=_block_bytes(head, chunk_rows)
                ),
                parse_options=pa_csv.ParseOptions(delimiter=delimiter),
                convert_options=pa_csv.ConvertOptions(
                    include_columns=list(wanted.values()),
                    column_types={name: pa.string() for name in wanted.values()},
                ),
            )
            for batch in reader:
                columns.add({role: batch.column(name) for role, name in wanted.items()}, kind)
    except _CSV_FAILURES:
        return None
    return columns.build()


def stream_interactions(path: Path, format: str, chunk_rows: int) -> Interactions | None:
    """``path`` in ``format`` (one of :data:`STREAMABLE_FORMATS`) read in chunks, or None when
    it has to be read whole (see :func:`stream_csv` and :func:`stream_parquet`)."""
    if chunk_rows < 1:
        raise DataError(f"chunk_rows must be >= 1 to stream a file (got {chunk_rows})")
    if format == "parquet":
        return stream_parquet(path, chunk_rows)
    if format == "movielens-latest":
        return stream_csv(path, chunk_rows, ("user", "item", "rating", "timestamp"), "integer")
    if format == "csv":
        return stream_csv(path, chunk_rows)
    streamable = ", ".join(sorted(STREAMABLE_FORMATS))
    raise DataError(f"{format!r} files cannot be streamed; streaming reads {streamable}")
