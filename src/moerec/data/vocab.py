"""The mapping between raw ids and the dense indices the model uses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from moerec.data.errors import DataError, UnknownIdError
from moerec.data.interactions import Interactions

_INT64_DIGITS = 18  # ids this long always fit in int64
_SHOWN = 5  # unknown ids listed in an error message
_VERSION = 1


def _all_digits(unique: np.ndarray) -> bool:
    """Whether every id is made of ASCII digits only (vectorised over the UTF-32 code units)."""
    if unique.size == 0:
        return False
    codes = unique.view(np.uint32).reshape(len(unique), -1)
    digit = (codes >= ord("0")) & (codes <= ord("9"))
    return bool((digit | (codes == 0)).all() and digit[:, 0].all())


def natural_order(ids: Sequence[str] | np.ndarray) -> tuple[str, ...]:
    """Distinct ids, numerically if all are unsigned integers ("2" < "10"), else as strings.

    The order depends only on the set of ids, so the same data always gives the same indices.
    Equal numbers with different spellings ("7", "07") stay distinct, ordered as strings.
    """
    unique = np.unique(np.asarray(ids, dtype=str))
    if not _all_digits(unique):
        return tuple(unique.tolist())
    if unique.dtype.itemsize // 4 <= _INT64_DIGITS:
        numbers = unique.astype(np.int64)
        # lexsort is stable and ``unique`` is already in string order, which breaks the ties.
        return tuple(unique[np.lexsort((numbers,))].tolist())
    return tuple(sorted(unique.tolist(), key=lambda value: (int(value), value)))


def _shown(values: Sequence[object]) -> str:
    listed = ", ".join(repr(value) for value in values[:_SHOWN])
    return listed + (", ..." if len(values) > _SHOWN else "")


def _id_list(data: dict[str, Any], key: str) -> tuple[str, ...]:
    values = data.get(key)
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise DataError(f"vocabulary {key} must be a list of strings")
    if len(set(values)) != len(values):
        raise DataError(f"vocabulary {key} contains duplicate ids")
    return tuple(values)


@dataclass(frozen=True)
class Vocabulary:
    """Raw item/user ids <-> dense indices.

    Items are encoded 1..num_items because 0 is the padding index of the model; users are
    0-based rows of :class:`~moerec.data.sequences.Sequences`. Index lookups are built lazily
    and cached, so a vocabulary that is only stored or compared costs nothing extra.
    """

    item_ids: tuple[str, ...]
    user_ids: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "item_ids", tuple(self.item_ids))
        object.__setattr__(self, "user_ids", tuple(self.user_ids))

    @classmethod
    def build(cls, interactions: Interactions) -> Vocabulary:
        """All items and users of ``interactions``, in natural id order (see natural_order)."""
        return cls(natural_order(interactions.items), natural_order(interactions.users))

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @cached_property
    def _item_index(self) -> dict[str, int]:
        return {raw: index for index, raw in enumerate(self.item_ids, start=1)}

    @cached_property
    def _user_index(self) -> dict[str, int]:
        return {raw: index for index, raw in enumerate(self.user_ids)}

    @staticmethod
    def _encode(raw: np.ndarray | Sequence[str], index: dict[str, int], kind: str) -> np.ndarray:
        values = raw.tolist() if isinstance(raw, np.ndarray) else list(raw)
        encoded = np.fromiter(
            (index.get(str(value), -1) for value in values), np.int64, len(values)
        )
        missing = np.flatnonzero(encoded < 0)
        if len(missing):
            unknown = list(dict.fromkeys(str(values[i]) for i in missing))
            raise UnknownIdError(
                f"{len(unknown)} unknown {kind} id(s) not in the vocabulary: {_shown(unknown)}; "
                f"only {kind}s seen in the training data can be used"
            )
        return encoded

    def encode_items(self, raw: np.ndarray | Sequence[str]) -> np.ndarray:
        """Raw item ids -> indices 1..num_items (int64); unknown ids raise UnknownIdError."""
        return self._encode(raw, self._item_index, "item")

    def encode_users(self, raw: np.ndarray | Sequence[str]) -> np.ndarray:
        """Raw user ids -> indices 0..num_users-1 (int64); unknown ids raise UnknownIdError."""
        return self._encode(raw, self._user_index, "user")

    def item_index(self, raw: str) -> int | None:
        """The index of one raw item id, or None if it is unknown."""
        return self._item_index.get(str(raw))

    def user_index(self, raw: str) -> int | None:
        """The index of one raw user id, or None if it is unknown."""
        return self._user_index.get(str(raw))

    @cached_property
    def _item_array(self) -> np.ndarray:
        return np.asarray(("", *self.item_ids), dtype=object)

    def decode_items(self, idx: np.ndarray | Sequence[int]) -> list[str]:
        """Indices 1..num_items -> raw item ids; padding (0) or out-of-range indices raise."""
        indices = np.asarray(idx, dtype=np.int64).reshape(-1)
        bad = indices[(indices < 1) | (indices > self.num_items)]
        if len(bad):
            raise UnknownIdError(
                f"item indices out of range 1..{self.num_items}: {_shown(bad.tolist())}"
            )
        return self._item_array[indices].tolist()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form that :meth:`from_dict` restores exactly."""
        return {
            "version": _VERSION,
            "item_ids": list(self.item_ids),
            "user_ids": list(self.user_ids),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vocabulary:
        """Inverse of :meth:`to_dict`; checks the structure so a corrupt file fails clearly."""
        if not isinstance(data, dict) or data.get("version") != _VERSION:
            raise DataError(f"not a vocabulary (expected a mapping with version {_VERSION})")
        return cls(_id_list(data, "item_ids"), _id_list(data, "user_ids"))
