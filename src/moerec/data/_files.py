"""Low-level file access shared by the readers and the title lookup.

Centralises the three things every reader needs and gets wrong easily: transparent gzip,
a clear message for a missing or unreadable file, and UTF-8 decoding whose error points at
the offending line instead of a byte offset.
"""

from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path

from moerec.data.errors import DataFormatError

GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
# Only ASCII whitespace separates and pads fields; Unicode spaces stay part of an id.
ASCII_WHITESPACE = " \t\r\n\v\f"
_FIELD_SPACE = re.compile(r"[ \t\v\f]+")


def read_bytes(path: Path, limit: int | None = None) -> bytes:
    """The file's bytes (at most ``limit``), gunzipped if it is gzip, without a UTF-8 BOM."""
    if not path.exists():
        raise DataFormatError(f"{path}: file not found; check the path (and the working directory)")
    if path.is_dir():
        raise DataFormatError(f"{path}: is a directory, expected a file")
    compressed = False
    try:
        with path.open("rb") as handle:
            compressed = handle.read(2) == GZIP_MAGIC
            handle.seek(0)
            if compressed:
                with gzip.GzipFile(fileobj=handle) as unzipped:
                    data = unzipped.read() if limit is None else unzipped.read(limit)
            else:
                data = handle.read() if limit is None else handle.read(limit)
    except (OSError, EOFError, zlib.error) as exc:
        what = "gzip data that cannot be decompressed" if compressed else "cannot be read"
        raise DataFormatError(f"{path}: {what} ({exc}); check or re-create the file") from None
    if not compressed and path.name.endswith(".gz") and data:
        raise DataFormatError(
            f"{path}: the name ends in .gz but the file is not gzip-compressed; "
            "rename it without .gz or compress it with gzip"
        )
    return data.removeprefix(UTF8_BOM)


def split_lines(text: str) -> list[str]:
    """Lines split on \\n, \\r\\n or \\r only (unlike str.splitlines, which also splits on
    form feeds and Unicode separators and would make line numbers disagree with editors)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def split_fields(line: str) -> list[str]:
    """Whitespace-separated tokens of a line (ASCII whitespace, as in the S3-Rec/SASRec files)."""
    stripped = line.strip(ASCII_WHITESPACE)
    return _FIELD_SPACE.split(stripped) if stripped else []


INTERACTIONS_UTF8 = (
    "interaction files must be ASCII or UTF-8 (only MovieLens metadata such as u.item or "
    "movies.dat is Latin-1, and it is not an interactions file)"
)


def decode_utf8(path: Path | str, data: bytes, why: str = INTERACTIONS_UTF8) -> str:
    """Decode a text file, naming the line of the first undecodable byte; ``why`` says why the
    file must be UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = len(split_lines(data[: exc.start].decode("utf-8")))
        raise DataFormatError(
            f"{path}:{line}: byte 0x{data[exc.start]:02X} is not valid UTF-8; {why} - re-save "
            "the file as UTF-8"
        ) from None


def decode_lenient(data: bytes) -> str:
    """Decode metadata: UTF-8 when valid, else Latin-1 (the MovieLens metadata encoding).

    Latin-1 text with accents is almost never valid UTF-8, so trying UTF-8 first picks the
    right encoding for both the original files and re-encoded mirrors.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def preview(line: str, width: int = 60) -> str:
    """A short, quoted rendering of a line for error messages."""
    return repr(line if len(line) <= width else line[:width] + "...")
