"""Reading interaction logs in the common public formats, with errors a user can act on.

:func:`read_interactions` is the single entry point: it takes a file (optionally gzip) or a
MovieLens directory, detects the format unless told, and returns :class:`Interactions`.
Whatever is wrong with the input, the caller gets a :class:`DataFormatError` naming the file
(and line), never a raw ``ValueError`` or pyarrow error.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from moerec.data._files import ASCII_WHITESPACE, preview, read_bytes, split_fields, split_lines
from moerec.data._tables import (
    header_names,
    match_roles,
    normalise_name,
    read_csv,
    read_movielens_latest,
    read_parquet,
    sniff_delimiter,
)
from moerec.data._text_formats import (
    ML_1M,
    ML_100K,
    PAIRS,
    Layout,
    read_layout,
    read_sequences,
)
from moerec.data.errors import DataFormatError
from moerec.data.interactions import Interactions
from moerec.data.streaming import chunk_rows_for, stream_interactions

__all__ = ["FORMATS", "DataFormatError", "detect_format", "read_interactions"]

FORMATS: tuple[str, ...] = (
    "movielens-100k",
    "movielens-1m",
    "movielens-latest",
    "sequences",
    "pairs",
    "csv",
    "parquet",
)
AUTO = "auto"

# Files a MovieLens directory may hold, in the order they are looked for.
_DIRECTORY_FILES = ("u.data", "ratings.dat", "ratings.dat.gz", "ratings.csv", "ratings.csv.gz")
# MovieLens metadata that people point at by mistake: it describes items/users, not events.
_METADATA_FILES = frozenset(
    {"u.item", "u.user", "u.genre", "u.info", "u.occupation", "movies.dat", "users.dat"}
    | {"movies.csv", "links.csv", "tags.csv", "genome-tags.csv", "genome-scores.csv"}
)
_ML_100K_NAME = re.compile(r"u(\d|a|b)?\.(data|base|test)")
_LATEST_HEADER = ["userid", "movieid", "rating", "timestamp"]
_SNIFF_BYTES = 64 * 1024
_SNIFF_LINES = 20
_NUMBER = re.compile(r"[+-]?[0-9]+(\.[0-9]*)?")


def _bare_name(path: Path) -> str:
    return path.name.lower().removesuffix(".gz")


def _resolve(path: Path | str) -> Path:
    """The file to read: ``path`` itself, or the ratings file inside a MovieLens directory."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataFormatError(f"{path}: file not found; check the path (and the working directory)")
    if not path.is_dir():
        return path
    for name in _DIRECTORY_FILES:
        if (path / name).is_file():
            return path / name
    found = sorted(child.name for child in path.iterdir())[:10]
    raise DataFormatError(
        f"{path}: directory has no ratings file (looked for {', '.join(_DIRECTORY_FILES)}; "
        f"found {', '.join(found) or 'nothing'}); pass the interactions file itself"
    )


def _check_format(name: str) -> str:
    chosen = str(name).strip().lower()
    if chosen != AUTO and chosen not in FORMATS:
        raise DataFormatError(
            f"unknown data format {name!r}; use one of: {AUTO}, {', '.join(FORMATS)}"
        )
    return chosen


def _head_lines(path: Path) -> list[str]:
    """The first non-blank lines of the file (decoded leniently: this is only a guess)."""
    head = read_bytes(path, limit=_SNIFF_BYTES)
    lines = split_lines(head.decode("utf-8", "replace"))
    if len(head) == _SNIFF_BYTES and len(lines) > 1:
        lines = lines[:-1]  # the last line may be cut off
    return [line for line in lines if line.strip(ASCII_WHITESPACE)][:_SNIFF_LINES]


def _header_format(line: str, path: str) -> str | None:
    """``csv`` or ``movielens-latest`` if ``line`` is a header naming user and item columns."""
    names = header_names(line, sniff_delimiter(line, path))
    roles = match_roles(names)
    if "user" not in roles or "item" not in roles:
        return None
    normalised = [normalise_name(name) for name in names]
    return "movielens-latest" if normalised == _LATEST_HEADER else "csv"


def _looks_like_100k(lines: list[str]) -> bool:
    rows = [line.strip(ASCII_WHITESPACE).split("\t") for line in lines]
    return all(
        len(row) == 4 and all(_NUMBER.fullmatch(field.strip()) for field in row[2:]) for row in rows
    )


def sniff(lines: list[str], path: str) -> str | None:
    """The format the given first lines look like, or None."""
    if not lines:
        return None
    if "::" in lines[0]:
        return ML_1M.name
    from_header = _header_format(lines[0], path)
    if from_header is not None:
        return from_header
    if path.lower().removesuffix(".gz").endswith((".csv", ".tsv")):
        return "csv"
    if _looks_like_100k(lines):
        return ML_100K.name
    widths = [len(split_fields(line)) for line in lines]
    if all(width == 2 for width in widths):
        return PAIRS.name
    if all(width >= 2 for width in widths):
        return "sequences"
    return None


def detect_format(path: Path | str) -> str:
    """The format of a file (or MovieLens directory), from its name and first lines.

    Names decide when they are unambiguous (``u.data``, ``*.parquet``); otherwise the first
    lines are sniffed: ``::`` means MovieLens 1M, a header with user/item columns means CSV,
    four tab-separated numeric fields mean MovieLens 100K, two tokens per line mean pairs and
    longer lines mean per-user sequences.
    """
    path = _resolve(path)
    name = _bare_name(path)
    if name in _METADATA_FILES:
        raise DataFormatError(
            f"{path}: this is MovieLens metadata, not interactions; pass the ratings file "
            "(u.data, ratings.dat or ratings.csv) or its directory"
        )
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if read_bytes(path, limit=4) == b"PAR1":
        return "parquet"
    if _ML_100K_NAME.fullmatch(name):
        return ML_100K.name
    lines = _head_lines(path)
    if not lines:
        raise DataFormatError(f"{path}: the file is empty; it should hold one interaction per line")
    guess = sniff(lines, str(path))
    if guess is None:
        raise DataFormatError(
            f"{path}: cannot tell the format from the name or the first lines "
            f"(line 1: {preview(lines[0])}); pass the format explicitly, one of: "
            f"{', '.join(FORMATS)}"
        )
    return guess


def _shape_hint(raw: bytes, chosen: str, path: str) -> str:
    """For a first line of the wrong shape: which format it does look like, if any."""
    lines = split_lines(raw[:_SNIFF_BYTES].decode("utf-8", "replace"))
    first = [line for line in lines if line.strip(ASCII_WHITESPACE)][:1]
    guess = sniff(first, path)
    if guess is None or guess == chosen:
        return ""
    return f" (it looks like the {guess!r} format: pass format={guess!r} if that is what it is)"


def _layout_reader(layout: Layout) -> Callable[[str, bytes], Interactions]:
    def read(path: str, raw: bytes) -> Interactions:
        return read_layout(path, raw, layout, _shape_hint(raw, layout.name, path))

    return read


_READERS: dict[str, Callable[[str, bytes], Interactions]] = {
    ML_100K.name: _layout_reader(ML_100K),
    ML_1M.name: _layout_reader(ML_1M),
    "movielens-latest": read_movielens_latest,
    "sequences": read_sequences,
    PAIRS.name: _layout_reader(PAIRS),
    "csv": read_csv,
    "parquet": read_parquet,
}


def read_interactions(
    path: Path | str, format: str = AUTO, chunk_rows: int | None = None
) -> Interactions:
    """Read an interactions file (gzip is handled transparently) or a MovieLens directory.

    ``format`` is one of :data:`FORMATS` or ``"auto"``. Ids are kept as the strings in the
    file; files without timestamps get their position in the file as the time.

    CSV/TSV and Parquet files can be read ``chunk_rows`` rows at a time, so that memory holds
    compact columns plus one chunk instead of several copies of the file (see
    :mod:`moerec.data.streaming`); the result is the same. 0 reads every file whole; None
    streams files of :data:`~moerec.data.streaming.AUTO_STREAM_BYTES` or more.
    """
    chosen = _check_format(format)
    path = _resolve(path)
    if chosen == AUTO:
        chosen = detect_format(path)
    rows = chunk_rows_for(path, chosen, chunk_rows)
    interactions = stream_interactions(path, chosen, rows) if rows else None
    if interactions is None:
        interactions = _read_whole(path, chosen)
    if len(interactions) == 0:
        raise DataFormatError(f"{path}: no interactions found (only a header or blank lines)")
    return interactions


def _read_whole(path: Path, chosen: str) -> Interactions:
    raw = read_bytes(path)
    if chosen != "parquet" and not raw.strip():
        raise DataFormatError(f"{path}: the file is empty; it should hold one interaction per line")
    return _READERS[chosen](str(path), raw)
