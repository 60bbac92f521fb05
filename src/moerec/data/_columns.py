"""Turning raw columns into typed :class:`Interactions` columns.

Every reader first produces raw columns (strings from pyarrow's fast CSV parser or from a
line-by-line Python parser; typed columns from Parquet) and then calls
:func:`build_interactions`. Sharing this step means every path accepts exactly the same values,
and a bad value is reported as a :class:`BadValue` with its row, which the reader turns into a
message naming the file and line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from moerec.data._files import ASCII_WHITESPACE
from moerec.data.interactions import Interactions

TimestampKind: TypeAlias = Literal["integer", "any"]
Column: TypeAlias = pa.Array | pa.ChunkedArray

_INTEGER = re.compile(r"[+-]?[0-9]+")
# What arrow's casts parse (anything else, e.g. "+5", goes to the Python fallback).
_INTEGER_PATTERN = r"^-?[0-9]{1,18}$"  # always fits int64
_DECIMAL_PATTERN = r"^-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?$"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_EPOCH_LIMIT = 9e18  # floats beyond this do not fit int64 epoch values
_SECONDS_PER = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


class BadValue(Exception):  # noqa: N818 - an internal signal that never leaves the readers
    """A value that cannot be converted, at 0-based ``row`` of the column being built
    (``row`` is None when the whole column has an unusable type)."""

    def __init__(self, row: int | None, column: str, value: object, problem: str) -> None:
        super().__init__(f"row {row}: {column} {value!r} {problem}")
        self.row = row
        self.column = column
        self.value = value
        self.problem = problem

    def describe(self) -> str:
        """``"timestamp 'abc' is not an integer"`` (long values shortened)."""
        if self.value is None:
            return f"{self.column} {self.problem}"
        value = str(self.value)
        shown = value if len(value) <= 40 else value[:40] + "..."
        return f"{self.column} {shown!r} {self.problem}"


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _plain(column: Column, name: str) -> pa.Array:
    """One contiguous, non-dictionary array without nulls (a null is a missing value)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()  # e.g. pandas categoricals saved to Parquet
    if array.null_count:
        raise BadValue(
            _first(pc.is_null(array).to_numpy(zero_copy_only=False)), name, None, "is missing"
        )
    return array


def _is_text(array: pa.Array) -> bool:
    return pa.types.is_string(array.type) or pa.types.is_large_string(array.type)


def _trimmed(array: pa.Array) -> pa.Array:
    return pc.utf8_trim(array, characters=ASCII_WHITESPACE)


def id_strings(column: Column, name: str) -> pa.Array:
    """Raw ids as trimmed arrow strings; an empty id is an error (it could never be looked up)."""
    array = _plain(column, name)
    if pa.types.is_integer(array.type):
        array = pc.cast(array, pa.string())
    elif not _is_text(array):
        raise BadValue(None, name, None, f"column has type {array.type}; expected text or integers")
    strings = _trimmed(array)
    empty = pc.equal(pc.utf8_length(strings), 0).to_numpy(zero_copy_only=False)
    if empty.any():
        raise BadValue(_first(empty), name, "", "is empty")
    return strings


def ids(column: Column, name: str) -> np.ndarray:
    """Raw ids as a numpy str array (see :func:`id_strings`)."""
    return np.asarray(id_strings(column, name).to_numpy(zero_copy_only=False), dtype=str)


def _vectorised(strings: pa.Array, target: pa.DataType) -> np.ndarray | None:
    """Arrow's strict parser; None when any value does not parse (then Python decides)."""
    try:
        return pc.cast(strings, target).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _parse_each(
    strings: pa.Array,
    parse: Callable[[str], float | int | None],
    name: str,
    problem: str,
    dtype: type[np.generic],
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Parse value by value (the slow path, which also finds the first bad value).

    ``rows`` are the column rows of ``strings`` when it is a subset (for the error).
    """
    values = strings.to_pylist()
    out = np.empty(len(values), dtype=dtype)
    cache: dict[str, float | int | None] = {}
    for position, text in enumerate(values):
        if text not in cache:
            cache[text] = parse(text)
        parsed = cache[text]
        if parsed is None:
            row = position if rows is None else int(rows[position])
            raise BadValue(row, name, text, problem)
        out[position] = parsed
    return out


def _parse_int(text: str) -> int | None:
    if not _INTEGER.fullmatch(text):
        return None
    value = int(text)
    return value if _INT64_MIN <= value <= _INT64_MAX else None


def _parse_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _parse_epoch(text: str, allow_datetime: bool) -> int | None:
    """An epoch number (integer, or decimal floored) or, if allowed, an ISO-8601 date/time.

    Naive date/times are taken as UTC so that the same file gives the same order everywhere.
    """
    as_int = _parse_int(text)
    if as_int is not None:
        return as_int
    as_float = _parse_float(text)
    if as_float is not None:
        return math.floor(as_float) if abs(as_float) < _EPOCH_LIMIT else None
    if not allow_datetime:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return math.floor(moment.timestamp())


def _floored(values: np.ndarray, name: str) -> np.ndarray:
    bad = ~np.isfinite(values) | (np.abs(values) >= _EPOCH_LIMIT)
    if bad.any():
        row = _first(bad)
        raise BadValue(row, name, str(values[row]), "is not a usable epoch time")
    return np.floor(values).astype(np.int64)


def _typed_timestamps(array: pa.Array, name: str) -> np.ndarray | None:
    """Epoch seconds from a numeric or temporal column (Parquet); None for text columns."""
    kind = array.type
    if pa.types.is_integer(kind):
        return pc.cast(array, pa.int64()).to_numpy()
    if pa.types.is_floating(kind):
        return _floored(pc.cast(array, pa.float64()).to_numpy(), name)
    if pa.types.is_timestamp(kind):
        return pc.cast(array, pa.int64()).to_numpy() // _SECONDS_PER[kind.unit]
    if pa.types.is_date32(kind):
        return pc.cast(array, pa.int32()).to_numpy().astype(np.int64) * 86_400
    if pa.types.is_date64(kind):
        return pc.cast(array, pa.int64()).to_numpy() // 1_000
    if _is_text(array):
        return None
    raise BadValue(None, name, None, f"column has type {kind}; expected numbers or date/times")


def _matches(strings: pa.Array, pattern: str) -> np.ndarray:
    return pc.match_substring_regex(strings, pattern).to_numpy(zero_copy_only=False)


def _fill_integers(strings: pa.Array, todo: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Rows among ``todo`` holding plain integers, written to ``out``; returns them."""
    rows = todo & _matches(strings, _INTEGER_PATTERN)
    values = _vectorised(strings.filter(pa.array(rows)), pa.int64()) if rows.any() else None
    if values is None:
        return np.zeros_like(todo)
    out[rows] = values
    return rows


def _fill_decimals(strings: pa.Array, todo: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Rows among ``todo`` holding decimal numbers, floored to whole seconds."""
    rows = todo & _matches(strings, _DECIMAL_PATTERN)
    values = _vectorised(strings.filter(pa.array(rows)), pa.float64()) if rows.any() else None
    if values is None:
        return np.zeros_like(todo)
    usable = np.abs(values) < _EPOCH_LIMIT
    rows[np.flatnonzero(rows)[~usable]] = False
    out[rows] = np.floor(values[usable]).astype(np.int64)
    return rows


def _fill_datetimes(strings: pa.Array, todo: np.ndarray, out: np.ndarray) -> np.ndarray:
    """All ``todo`` rows if arrow parses them as ISO-8601 (all naive or all zoned), else none.

    Naive values count as UTC, like the Python fallback; mixed columns go to that fallback.
    """
    subset = strings.filter(pa.array(todo))
    for kind in (pa.timestamp("ns"), pa.timestamp("ns", "UTC")):
        parsed = _vectorised(subset, kind)
        if parsed is not None:
            out[todo] = parsed.astype("datetime64[ns]").astype(np.int64) // 1_000_000_000
            return todo.copy()
    return np.zeros_like(todo)


def timestamps(column: Column, name: str, kind: TimestampKind) -> np.ndarray:
    """Epoch seconds (int64) from integers, decimals (floored) or, for ``kind="any"``,
    ISO-8601 date/times (naive ones taken as UTC).

    Vectorised passes convert what they recognise; only the rest is parsed value by value,
    so even a bad value at the end of a huge file is found quickly.
    """
    array = _plain(column, name)
    typed = _typed_timestamps(array, name)
    if typed is not None:
        return typed
    strings = _trimmed(array)
    out = np.zeros(len(strings), dtype=np.int64)
    todo = np.ones(len(strings), dtype=bool)
    allow_datetime = kind == "any"
    passes = [_fill_integers, _fill_decimals] + ([_fill_datetimes] if allow_datetime else [])
    for fill in passes:
        if todo.any():
            todo &= ~fill(strings, todo, out)
    if todo.any():
        expected = (
            "an integer, a number or an ISO-8601 date/time" if allow_datetime else "an integer"
        )
        rest = np.flatnonzero(todo)
        out[rest] = _parse_each(
            strings.filter(pa.array(todo)),
            lambda text: _parse_epoch(text, allow_datetime),
            name,
            f"is not {expected} (epoch seconds)",
            np.int64,
            rows=rest,
        )
    return out


def ratings(column: Column, name: str) -> np.ndarray:
    """A float32 column of finite numbers."""
    array = _plain(column, name)
    if pa.types.is_integer(array.type) or pa.types.is_floating(array.type):
        values = pc.cast(array, pa.float64()).to_numpy()
    elif _is_text(array):
        strings = _trimmed(array)
        fast = _vectorised(strings, pa.float64())
        values = (
            fast
            if fast is not None
            else _parse_each(strings, _parse_float, name, "is not a number", np.float64)
        )
    else:
        raise BadValue(None, name, None, f"column has type {array.type}; expected numbers")
    bad = ~np.isfinite(values) | (np.abs(values) > np.finfo(np.float32).max)
    if bad.any():
        row = _first(bad)
        raise BadValue(row, name, str(values[row]), "is not a finite number")
    return values.astype(np.float32)


def build_interactions(
    columns: dict[str, Column],
    source: str,
    timestamp_kind: TimestampKind = "integer",
) -> Interactions:
    """Typed interactions from raw columns ``user``, ``item`` and optional ``rating`` and
    ``timestamp``; without a timestamp the row position is the time, so file order is kept."""
    users = ids(columns["user"], "user")
    items = ids(columns["item"], "item")
    if "timestamp" in columns:
        times = timestamps(columns["timestamp"], "timestamp", timestamp_kind)
    else:
        times = np.arange(len(users), dtype=np.int64)
    rated = ratings(columns["rating"], "rating") if "rating" in columns else None
    return Interactions(users=users, items=items, timestamps=times, ratings=rated, source=source)
