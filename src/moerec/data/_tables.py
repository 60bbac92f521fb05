"""Files with named columns: generic CSV/TSV, MovieLens "latest" ratings.csv and Parquet.

Columns are found by name through a list of common aliases, matched case-insensitively and
ignoring ``_``/``-``/spaces, so ``userId``, ``user_id`` and ``USER ID`` all work. A missing
column is reported with the columns that were found and the names that would be accepted.
"""

from __future__ import annotations

import csv
import io
import re

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from moerec.data._columns import BadValue, Column, TimestampKind, build_interactions
from moerec.data._files import ASCII_WHITESPACE, decode_utf8, preview, split_lines
from moerec.data._text_formats import build_at_lines
from moerec.data.errors import DataFormatError
from moerec.data.interactions import Interactions

ROLE_ALIASES: dict[str, tuple[str, ...]] = {
    "user": ("user", "user_id", "userId", "uid"),
    "item": ("item", "item_id", "itemId", "movieId", "iid"),
    "timestamp": ("timestamp", "ts", "time", "datetime"),
    "rating": ("rating", "score"),
}
_DELIMITERS = (",", "\t", ";", "|")
_IGNORED_IN_NAMES = re.compile(r"[\s_\-]")


def normalise_name(name: str) -> str:
    """Column name in comparable form: lower case, without spaces, '_' or '-'."""
    return _IGNORED_IN_NAMES.sub("", name).lower()


def match_roles(names: list[str]) -> dict[str, int]:
    """Column index of each role found in ``names`` (earlier aliases win)."""
    normalised = [normalise_name(name) for name in names]
    roles: dict[str, int] = {}
    for role, aliases in ROLE_ALIASES.items():
        for alias in aliases:
            if normalise_name(alias) in normalised:
                roles[role] = normalised.index(normalise_name(alias))
                break
    return roles


def require_roles(
    where: str, names: list[str], roles: dict[str, int], required: tuple[str, ...]
) -> None:
    """Raise a DataFormatError naming the accepted aliases if a ``required`` role is missing."""
    for role in required:
        if role not in roles:
            found = ", ".join(repr(name) for name in names) or "none"
            accepted = ", ".join(ROLE_ALIASES[role])
            article = "an" if role[0] in "aeiou" else "a"
            raise DataFormatError(
                f"{where}: no {role} column; found columns {found}; {article} {role} column may be "
                f"called {accepted} (case-insensitive, '_' optional) - rename the column"
            )


def sniff_delimiter(header: str, path: str) -> str:
    """The delimiter that splits the header into the most columns (tab for .tsv files)."""
    if path.lower().removesuffix(".gz").endswith(".tsv"):
        return "\t"
    return max(_DELIMITERS, key=lambda delimiter: (len(header.split(delimiter)), delimiter == ","))


def header_names(header: str, delimiter: str) -> list[str]:
    """Column names of a header line (quotes removed, whitespace trimmed)."""
    try:
        row = next(csv.reader([header], delimiter=delimiter), [])
    except csv.Error:
        row = header.split(delimiter)
    return [name.strip(ASCII_WHITESPACE) for name in row]


def first_line(text: str) -> tuple[int, str]:
    """The 1-based number and text of the first non-blank line; ``(0, "")`` if there is none."""
    for number, line in enumerate(split_lines(text), start=1):
        if line.strip(ASCII_WHITESPACE):
            return number, line
    return 0, ""


def _fast_csv(
    raw: bytes, header: str, delimiter: str, width: int, roles: dict[str, int]
) -> dict[str, Column] | None:
    """Columns parsed by pyarrow when the header is the first line; None if it cannot."""
    end = raw.find(b"\n")
    if end < 0 or raw[:end].decode("utf-8", "replace").rstrip("\r") != header:
        return None
    names = [f"c{index}" for index in range(width)]
    try:
        table = pa_csv.read_csv(
            io.BytesIO(raw[end + 1 :]),
            read_options=pa_csv.ReadOptions(column_names=names),
            parse_options=pa_csv.ParseOptions(delimiter=delimiter),
            convert_options=pa_csv.ConvertOptions(
                include_columns=[names[index] for index in roles.values()],
                column_types={names[index]: pa.string() for index in roles.values()},
            ),
        )
    except (pa.ArrowException, ValueError, OSError):
        return None
    return {role: table.column(names[index]) for role, index in roles.items()}


def _exact_csv(
    path: str, text: str, delimiter: str, names: list[str], roles: dict[str, int]
) -> tuple[dict[str, Column], list[int]]:
    """Parse with the csv module (exact line numbers, quoted newlines)."""
    values: dict[str, list[str]] = {role: [] for role in roles}
    lines: list[int] = []
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    seen_header = False
    try:
        for row in reader:
            if not any(field.strip(ASCII_WHITESPACE) for field in row):
                continue
            if not seen_header:
                seen_header = True
                continue
            if len(row) != len(names):
                raise DataFormatError(
                    f"{path}:{reader.line_num}: expected {len(names)} fields separated by "
                    f"{delimiter!r} like the header ({', '.join(names)}), found {len(row)}: "
                    f"{preview(delimiter.join(row))}; fix or delete this line"
                )
            for role, index in roles.items():
                values[role].append(row[index])
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise DataFormatError(
            f"{path}:{reader.line_num + 1}: cannot parse this CSV line ({exc}); check its quotes"
        ) from None
    columns = {role: pa.array(column, type=pa.string()) for role, column in values.items()}
    return columns, lines


def read_csv(
    path: str,
    raw: bytes,
    required: tuple[str, ...] = ("user", "item"),
    kind: TimestampKind = "any",
) -> Interactions:
    """A CSV/TSV file with a header naming at least the ``required`` roles."""
    text = decode_utf8(path, raw)
    number, header = first_line(text)
    delimiter = sniff_delimiter(header, path)
    names = header_names(header, delimiter)
    roles = match_roles(names)
    require_roles(f"{path}:{number}", names, roles, required)
    fast = _fast_csv(raw, header, delimiter, len(names), roles)
    if fast is not None:
        try:
            return build_interactions(fast, path, kind)
        except BadValue:
            pass  # the exact parser below finds the line and reports it
    columns, lines = _exact_csv(path, text, delimiter, names, roles)
    return build_at_lines(path, columns, lines, kind)


def read_movielens_latest(path: str, raw: bytes) -> Interactions:
    """MovieLens "latest"/20M/25M ``ratings.csv``: ``userId,movieId,rating,timestamp``."""
    return read_csv(path, raw, required=("user", "item", "rating", "timestamp"), kind="integer")


def read_parquet(path: str, raw: bytes) -> Interactions:
    """A Parquet table with the same column names as the generic CSV format.

    A damaged file can fail anywhere inside pyarrow (footer, schema, pages), with several
    exception types; all of them become one "not a readable Parquet file" error.
    """
    try:
        table = pq.read_table(pa.BufferReader(raw))
        names = list(table.column_names)
        roles = match_roles(names)
        require_roles(path, names, roles, ("user", "item"))
        columns = {role: table.column(index) for role, index in roles.items()}
        return build_interactions(columns, path, "any")
    except BadValue as bad:
        where = f"{path}: " if bad.row is None else f"{path}: row {bad.row + 1}: "
        raise DataFormatError(f"{where}{bad.describe()}") from None
    except (pa.ArrowException, OSError, ValueError, TypeError, IndexError) as exc:
        raise DataFormatError(
            f"{path}: not a readable Parquet file ({exc}); check the file or pass the right format"
        ) from None
