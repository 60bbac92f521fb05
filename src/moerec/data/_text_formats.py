"""Header-less text formats: MovieLens 100K/1M ratings, SASRec pairs and S3-Rec sequences.

Clean files go through pyarrow's CSV parser (a 1M-line file in well under a second). Anything
it rejects - and any bad value - is re-read by a line-by-line parser that is the authority:
it either accepts the file or names the exact line and what was wrong with it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.csv as pa_csv

from moerec.data._columns import BadValue, Column, TimestampKind, build_interactions
from moerec.data._files import ASCII_WHITESPACE, decode_utf8, preview, split_fields, split_lines
from moerec.data.errors import DataFormatError
from moerec.data.interactions import Interactions

_UNIT_SEPARATOR = "\x1f"  # stands in for '::' so pyarrow can split MovieLens 1M lines


@dataclass(frozen=True)
class Layout:
    """A header-less file with the same fields on every line."""

    name: str
    fields: tuple[str, ...]
    separator: str | None  # None: runs of spaces/tabs, as in the SASRec files
    shape: str  # how one line looks, for messages

    def split(self, line: str) -> list[str]:
        """The fields of one (non-blank) line."""
        return split_fields(line) if self.separator is None else line.split(self.separator)

    def expected(self) -> str:
        count = len(self.fields)
        if self.separator is None:
            return f"{count} fields separated by spaces ({self.shape})"
        if self.separator == "\t":
            return f"{count} tab-separated fields ({self.shape})"
        return f"{count} fields separated by {self.separator!r} ({self.shape})"


ML_100K = Layout(
    "movielens-100k",
    ("user", "item", "rating", "timestamp"),
    "\t",
    "user<TAB>item<TAB>rating<TAB>timestamp",
)
ML_1M = Layout(
    "movielens-1m", ("user", "item", "rating", "timestamp"), "::", "user::item::rating::timestamp"
)
PAIRS = Layout("pairs", ("user", "item"), None, "user item")


def _fast_columns(raw: bytes, layout: Layout) -> dict[str, Column] | None:
    """String columns parsed by pyarrow, or None if pyarrow cannot parse the file as-is."""
    if layout.separator == "::":
        if _UNIT_SEPARATOR.encode() in raw:
            return None
        raw = raw.replace(b"::", _UNIT_SEPARATOR.encode())
        delimiter = _UNIT_SEPARATOR
    else:
        delimiter = layout.separator or " "
    try:
        table = pa_csv.read_csv(
            io.BytesIO(raw),
            read_options=pa_csv.ReadOptions(column_names=list(layout.fields)),
            parse_options=pa_csv.ParseOptions(delimiter=delimiter, quote_char=False),
            convert_options=pa_csv.ConvertOptions(
                column_types={field: pa.string() for field in layout.fields}
            ),
        )
    except (pa.ArrowException, ValueError, OSError):
        return None
    return {field: table.column(field) for field in layout.fields}


def _exact_columns(
    path: str, text: str, layout: Layout, hint: str
) -> tuple[dict[str, Column], list[int]]:
    """Line-by-line parse; returns the columns and the 1-based line of every row."""
    values: list[list[str]] = [[] for _ in layout.fields]
    lines: list[int] = []
    for number, line in enumerate(split_lines(text), start=1):
        if not line.strip(ASCII_WHITESPACE):
            continue
        fields = layout.split(line)
        if len(fields) != len(layout.fields):
            extra = hint if not lines else ""
            raise DataFormatError(
                f"{path}:{number}: expected {layout.expected()}, found {len(fields)}: "
                f"{preview(line)}; fix or delete this line{extra}"
            )
        for column, field in zip(values, fields, strict=True):
            column.append(field)
        lines.append(number)
    columns = {
        field: pa.array(column, type=pa.string())
        for field, column in zip(layout.fields, values, strict=True)
    }
    return columns, lines


def build_at_lines(
    path: str, columns: dict[str, Column], lines: list[int], kind: TimestampKind = "integer"
) -> Interactions:
    """Build interactions, reporting a bad value at its line in the file."""
    try:
        return build_interactions(columns, path, kind)
    except BadValue as bad:
        line = "" if bad.row is None else f"{lines[bad.row]}:"
        raise DataFormatError(f"{path}:{line} {bad.describe()}; fix or delete this line") from None


def read_layout(path: str, raw: bytes, layout: Layout, hint: str = "") -> Interactions:
    """Read a fixed-field file; ``hint`` is appended when the first line has the wrong shape
    (e.g. "this looks like movielens-1m")."""
    fast = _fast_columns(raw, layout)
    if fast is not None:
        try:
            return build_interactions(fast, path)
        except BadValue:
            pass  # the exact parser below finds the line and reports it
    columns, lines = _exact_columns(path, decode_utf8(path, raw), layout, hint)
    return build_at_lines(path, columns, lines)


def read_sequences(path: str, raw: bytes) -> Interactions:
    """S3-Rec files: one line per user, ``user item item ...``; position in the file is time."""
    users: list[str] = []
    items: list[str] = []
    lines: list[int] = []
    for number, line in enumerate(split_lines(decode_utf8(path, raw)), start=1):
        tokens = split_fields(line)
        if not tokens:
            continue
        if len(tokens) < 2:
            raise DataFormatError(
                f"{path}:{number}: expected a user id followed by at least one item id, "
                f"separated by spaces (user item item ...), found 1 field: {preview(line)}; "
                "fix or delete this line"
            )
        users.extend([tokens[0]] * (len(tokens) - 1))
        items.extend(tokens[1:])
        lines.extend([number] * (len(tokens) - 1))
    columns: dict[str, Column] = {
        "user": pa.array(users, type=pa.string()),
        "item": pa.array(items, type=pa.string()),
    }
    return build_at_lines(path, columns, lines)
