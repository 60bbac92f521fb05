"""Human-readable item titles from the MovieLens metadata next to a ratings file.

Titles only decorate recommendations, so nothing here raises: a missing, unreadable or
partly malformed metadata file gives fewer (or no) titles, with a logged warning.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from pathlib import Path

from moerec.data._files import ASCII_WHITESPACE, decode_lenient, read_bytes, split_lines
from moerec.data.errors import DataFormatError

logger = logging.getLogger(__name__)

Parser = Callable[[str], dict[str, str]]


def _split_lines_on(separator: str) -> Parser:
    """A parser for ``id<sep>title<sep>...`` lines (u.item uses '|', movies.dat '::')."""

    def parse(text: str) -> dict[str, str]:
        titles: dict[str, str] = {}
        for line in split_lines(text):
            fields = line.split(separator)
            if len(fields) >= 2 and fields[0].strip(ASCII_WHITESPACE):
                titles[fields[0].strip(ASCII_WHITESPACE)] = fields[1].strip(ASCII_WHITESPACE)
        return titles

    return parse


def _parse_movies_csv(text: str) -> dict[str, str]:
    """``movieId,title,genres`` with a header; titles with commas are quoted."""
    titles: dict[str, str] = {}
    try:
        for row in csv.reader(split_lines(text)):
            if len(row) >= 2 and row[0].strip() and row[0].strip().lower() != "movieid":
                titles[row[0].strip()] = row[1].strip()
    except csv.Error as exc:
        logger.warning("stopped reading titles at a malformed line: %s", exc)
    return titles


_METADATA: dict[str, Parser] = {
    "u.item": _split_lines_on("|"),
    "movies.dat": _split_lines_on("::"),
    "movies.csv": _parse_movies_csv,
}
# Which metadata belongs to which ratings file, so a directory holding several is not mixed up.
_PREFERRED = {"u.data": "u.item", "ratings.dat": "movies.dat", "ratings.csv": "movies.csv"}


def _candidates(path: Path) -> list[Path]:
    folder = path if path.is_dir() else path.parent
    names = list(_METADATA)
    preferred = _PREFERRED.get(path.name.lower().removesuffix(".gz"))
    if preferred is not None:
        names.remove(preferred)
        names.insert(0, preferred)
    return [folder / f"{name}{suffix}" for name in names for suffix in ("", ".gz")]


def read_item_titles(path: Path | str) -> dict[str, str]:
    """Raw item id -> title from ``u.item``, ``movies.dat`` or ``movies.csv`` beside ``path``
    (or inside it, for a directory); ``{}`` when there is no such file."""
    path = Path(path).expanduser()
    for candidate in _candidates(path):
        if not candidate.is_file():
            continue
        try:
            text = decode_lenient(read_bytes(candidate))
        except (DataFormatError, OSError) as exc:
            logger.warning("cannot read item titles from %s: %s", candidate, exc)
            continue
        titles = _METADATA[candidate.name.lower().removesuffix(".gz")](text)
        if titles:
            return titles
        logger.warning("no titles found in %s", candidate)
    return {}
