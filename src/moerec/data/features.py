"""Item side features: which attributes (genres, brands, categories, …) each item carries.

Three file formats are read, chosen by the file name and, failing that, by the content:

* ``item2attributes`` JSON (the S3-Rec files, ``Beauty_item2attributes.json``): one object
  mapping each item id to a list of attribute ids, ``{"4": [1, 2, 3], …}``;
* MovieLens ``u.item`` (100K): ``id|title|date|video date|url|`` then 19 genre flags, each 0
  or 1; the genres set to 1 are the item's attributes (the file is Latin-1);
* a long CSV/TSV table, ``item_id,attribute``, one row per (item, attribute) pair, with an
  optional header.

:func:`load_item_features` maps the raw item ids through a data set's vocabulary and gives
the attributes a vocabulary of their own (index 0 is padding). Items of the data set that
the file does not mention get no attribute; ids in the file that the data set does not hold
(filtered out, or from another catalogue) are ignored, counted and logged.

This module is torch-free, like the rest of the data layer: the model receives the padded
attribute table as an array.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moerec.data._files import (
    ASCII_WHITESPACE,
    decode_lenient,
    decode_utf8,
    preview,
    read_bytes,
    split_lines,
)
from moerec.data._tables import normalise_name
from moerec.data.errors import DataError, DataFormatError
from moerec.data.vocab import Vocabulary, natural_order

logger = logging.getLogger(__name__)

__all__ = [
    "FEATURE_FORMATS",
    "ItemFeatures",
    "detect_feature_format",
    "encode_item_features",
    "load_item_features",
    "read_item_attributes",
]

FEATURE_FORMATS: tuple[str, ...] = ("item2attributes", "movielens-genres", "csv")
AUTO = "auto"

# The genre columns of MovieLens 100K's u.item, in file order (the names in its u.genre).
ML_100K_GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
_ML_100K_FIELDS = 5 + len(ML_100K_GENRES)
# Header names accepted for the item column of a long CSV table (compared normalised).
_ITEM_HEADERS = frozenset(
    normalise_name(name) for name in ("item", "item_id", "itemId", "movieId", "iid", "asin")
)
_SHOWN = 5
_FINGERPRINT_VERSION = b"moerec-item-features-v1"

RawAttributes = dict[str, list[str]]  # raw item id -> raw attribute ids, file order, distinct


@dataclass(frozen=True, eq=False)
class ItemFeatures:
    """The attributes of every item of a vocabulary, as a padded index table.

    ``table[i]`` lists the attribute indices of item ``i`` (1..num_items; row 0 is the
    padding item), left-aligned and padded with 0; attribute index ``j`` (1-based) is the raw
    attribute ``attribute_ids[j - 1]``. Every row holds distinct attributes.
    """

    attribute_ids: tuple[str, ...]
    table: np.ndarray  # (num_items + 1, max_attributes) int64
    source: str
    unknown_items: int = 0  # item ids in the file that the vocabulary does not hold

    @property
    def num_items(self) -> int:
        return self.table.shape[0] - 1

    @property
    def num_attributes(self) -> int:
        return len(self.attribute_ids)

    @property
    def max_attributes(self) -> int:
        return self.table.shape[1]

    @property
    def items_with_attributes(self) -> int:
        return int((self.table[1:] != 0).any(axis=1).sum())

    def attributes_of(self, item: int) -> list[str]:
        """The raw attribute ids of encoded item ``item``."""
        return [self.attribute_ids[j - 1] for j in self.table[item] if j]

    def fingerprint(self) -> str:
        """SHA-256 of the attribute vocabulary and table: the same features, the same string."""
        digest = hashlib.sha256(_FINGERPRINT_VERSION)
        digest.update(json.dumps(list(self.attribute_ids), ensure_ascii=False).encode("utf-8"))
        digest.update(np.asarray(self.table.shape, dtype="<i8").tobytes())
        digest.update(np.ascontiguousarray(self.table, dtype="<i8").tobytes())
        return digest.hexdigest()

    def stats(self) -> dict[str, int | float]:
        counts = (self.table[1:] != 0).sum(axis=1)
        return {
            "attributes": self.num_attributes,
            "items_with_attributes": self.items_with_attributes,
            "items_without_attributes": self.num_items - self.items_with_attributes,
            "max_attributes_per_item": self.max_attributes,
            "mean_attributes_per_item": float(counts.mean()) if counts.size else 0.0,
            "unknown_items_ignored": self.unknown_items,
        }


def _shown(values: Sequence[str]) -> str:
    listed = ", ".join(repr(value) for value in values[:_SHOWN])
    return listed + (", ..." if len(values) > _SHOWN else "")


def _add(raw: RawAttributes, item: str, attributes: Sequence[str]) -> None:
    """Merge ``attributes`` into ``item``'s list, keeping the first occurrence of each."""
    known = raw.setdefault(item, [])
    for attribute in attributes:
        if attribute not in known:
            known.append(attribute)


# --------------------------------------------------------------------------- formats


def _decode_utf8(path: Path, data: bytes) -> str:
    return decode_utf8(path, data, "the item ids must be spelt as in the interactions file")


def _attribute_id(value: Any) -> str | None:
    """An attribute id as a string; None for anything but a string or an integer."""
    if isinstance(value, bool):  # a bool is an int to Python, but never a meaningful id
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip(ASCII_WHITESPACE):
        return value.strip(ASCII_WHITESPACE)
    return None


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs: unlike a dict, it keeps repeated keys."""


def _json_kind(value: Any) -> str:
    if isinstance(value, _Pairs):
        return "an object"
    shown = json.dumps(value, ensure_ascii=False)
    return shown if len(shown) <= 60 else shown[:60] + "..."


def _parse_item2attributes(path: Path, data: bytes) -> RawAttributes:
    text = _decode_utf8(path, data)
    try:
        loaded = json.loads(text, object_pairs_hook=_Pairs)
    except json.JSONDecodeError as exc:
        raise DataFormatError(
            f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg}); an item2attributes "
            'file is one JSON object mapping item ids to attribute lists, e.g. {"4": [1, 2]}'
        ) from None
    if not isinstance(loaded, _Pairs):
        found = "a list" if isinstance(loaded, list) else _json_kind(loaded)
        raise DataFormatError(
            f"{path}: expected one JSON object mapping item ids to attribute lists "
            f'(e.g. {{"4": [1, 2]}}), found {found}'
        )
    raw: RawAttributes = {}
    for key, value in loaded:
        item = key.strip(ASCII_WHITESPACE)
        if not item:
            raise DataFormatError(
                f"{path}: an empty item id maps to {_json_kind(value)}; every key must be an "
                "item id of the interactions file"
            )
        if not isinstance(value, list) or isinstance(value, _Pairs):
            raise DataFormatError(
                f"{path}: item {item!r} maps to {_json_kind(value)}; every item must map to a "
                "list of attribute ids (integers or strings), e.g. [1, 2]"
            )
        attributes = [_attribute_id(v) for v in value]
        bad = [v for v, a in zip(value, attributes, strict=True) if a is None]
        if bad:
            raise DataFormatError(
                f"{path}: item {item!r} has the attribute {_json_kind(bad[0])}; attribute ids "
                "must be integers or non-empty strings"
            )
        _add(raw, item, [a for a in attributes if a is not None])
    return raw


def _parse_movielens_genres(path: Path, data: bytes) -> RawAttributes:
    raw: RawAttributes = {}
    for number, line in enumerate(split_lines(decode_lenient(data)), start=1):
        if not line.strip(ASCII_WHITESPACE):
            continue
        fields = line.rstrip("\r\n").split("|")
        if len(fields) < _ML_100K_FIELDS:
            raise DataFormatError(
                f"{path}:{number}: expected {_ML_100K_FIELDS} '|'-separated fields (id, title, "
                f"dates, url, then {len(ML_100K_GENRES)} genre flags), found {len(fields)}: "
                f"{preview(line)}"
            )
        item = fields[0].strip(ASCII_WHITESPACE)
        flags = [flag.strip(ASCII_WHITESPACE) for flag in fields[-len(ML_100K_GENRES) :]]
        if not item or any(flag not in ("0", "1") for flag in flags):
            raise DataFormatError(
                f"{path}:{number}: expected an item id and {len(ML_100K_GENRES)} genre flags "
                f"(0 or 1) at the end of the line: {preview(line)}"
            )
        _add(raw, item, [g for g, flag in zip(ML_100K_GENRES, flags, strict=True) if flag == "1"])
    return raw


def _parse_long_csv(path: Path, data: bytes) -> RawAttributes:
    lines = split_lines(_decode_utf8(path, data))
    first = next((line for line in lines if line.strip(ASCII_WHITESPACE)), "")
    tab = path.name.lower().removesuffix(".gz").endswith(".tsv") or (
        "\t" in first and "," not in first
    )
    raw: RawAttributes = {}
    try:
        rows = list(csv.reader(lines, delimiter="\t" if tab else ","))
    except csv.Error as exc:
        raise DataFormatError(f"{path}: not a readable CSV file ({exc})") from None
    header_seen = False
    for number, row in enumerate(rows, start=1):
        fields = [field.strip(ASCII_WHITESPACE) for field in row]
        if not any(fields):
            continue
        if not header_seen:
            header_seen = True
            if fields and normalise_name(fields[0]) in _ITEM_HEADERS:
                continue
        if len(fields) != 2 or not fields[0] or not fields[1]:
            raise DataFormatError(
                f"{path}:{number}: expected 2 fields, item_id and attribute, found "
                f"{preview(lines[number - 1])}; write one (item, attribute) pair per line"
            )
        _add(raw, fields[0], [fields[1]])
    return raw


_PARSERS = {
    "item2attributes": _parse_item2attributes,
    "movielens-genres": _parse_movielens_genres,
    "csv": _parse_long_csv,
}


def detect_feature_format(path: Path | str, head: bytes | None = None) -> str:
    """The format of an item-features file: from its name, else from its first line."""
    path = Path(path)
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".json"):
        return "item2attributes"
    if name == "u.item":
        return "movielens-genres"
    if name.endswith((".csv", ".tsv")):
        return "csv"
    text = decode_lenient(read_bytes(path, limit=64 * 1024) if head is None else head)
    stripped = text.lstrip(ASCII_WHITESPACE)
    if stripped.startswith("{"):
        return "item2attributes"
    line = next((line for line in split_lines(stripped) if line.strip()), "")
    if len(line.split("|")) >= _ML_100K_FIELDS:
        return "movielens-genres"
    if len(line.split(",")) == 2 or len(line.split("\t")) == 2:
        return "csv"
    raise DataFormatError(
        f"{path}: cannot tell the item-features format from the name or the first line "
        f"({preview(line)}); use an item2attributes .json file, MovieLens u.item, or a .csv "
        "file of item_id,attribute rows"
    )


def read_item_attributes(path: Path | str, format: str = AUTO) -> RawAttributes:
    """Raw item id -> its distinct raw attribute ids (file order), from any supported format.

    Attribute ids are strings (``7`` in a JSON file becomes ``"7"``); an item listed several
    times gets the union of its lists.
    """
    path = Path(path).expanduser()
    chosen = str(format).strip().lower()
    if chosen != AUTO and chosen not in FEATURE_FORMATS:
        raise DataFormatError(
            f"unknown item-features format {format!r}; use one of: {AUTO}, "
            f"{', '.join(FEATURE_FORMATS)}"
        )
    data = read_bytes(path)
    if not data.strip():
        raise DataFormatError(
            f"{path}: the item-features file is empty; it should list the attributes of items"
        )
    if chosen == AUTO:
        chosen = detect_feature_format(path, data[: 64 * 1024])
    return _PARSERS[chosen](path, data)


def encode_item_features(raw: RawAttributes, vocab: Vocabulary, source: str) -> ItemFeatures:
    """Map raw item ids through ``vocab`` and build the attribute vocabulary and table.

    Only attributes of items in ``vocab`` enter the attribute vocabulary (an attribute no
    known item carries would be an embedding that nothing trains), in natural id order, so
    the same file and data always give the same indices.
    """
    known: dict[int, list[str]] = {}
    unknown: list[str] = []
    for item, attributes in raw.items():
        index = vocab.item_index(item)
        if index is None:
            unknown.append(item)
        elif attributes:
            known[index] = attributes
    if not known:
        listed = f" (e.g. {_shown(unknown)})" if unknown else ""
        raise DataError(
            f"{source}: no item of the data set has an attribute in this file: none of its "
            f"{len(raw):,} item ids{listed} is an item id of the interactions (e.g. "
            f"{_shown(vocab.item_ids)}); the file must use the same item ids as the data"
        )
    if unknown:
        logger.warning(
            "%s: ignored %d item id(s) that are not in the data set (e.g. %s)",
            source,
            len(unknown),
            _shown(unknown),
        )
    attribute_ids = natural_order([a for attributes in known.values() for a in attributes])
    attribute_index = {raw_id: j for j, raw_id in enumerate(attribute_ids, start=1)}
    width = max(len(attributes) for attributes in known.values())
    table = np.zeros((vocab.num_items + 1, width), dtype=np.int64)
    for index, attributes in known.items():
        table[index, : len(attributes)] = [attribute_index[a] for a in attributes]
    features = ItemFeatures(
        attribute_ids=attribute_ids, table=table, source=source, unknown_items=len(unknown)
    )
    logger.info("item features from %s: %s", source, features.stats())
    return features


def load_item_features(path: Path | str, vocab: Vocabulary, format: str = AUTO) -> ItemFeatures:
    """Read an item-features file and encode it for the data set of ``vocab``."""
    return encode_item_features(read_item_attributes(path, format), vocab, str(path))
