"""Per-user chronological item sequences in a compact CSR layout."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from moerec.data.interactions import Interactions
from moerec.data.vocab import Vocabulary


@dataclass(frozen=True, eq=False)
class Sequences:
    """Row ``u`` is ``items[offsets[u]:offsets[u + 1]]``.

    Two flat arrays instead of a list of arrays: millions of users cost two allocations, the
    whole thing hashes and saves trivially, and slicing a row is free. ``times``, when the
    source had timestamps, is the Unix time (seconds) of each item, in the same layout.
    """

    offsets: np.ndarray
    items: np.ndarray
    times: np.ndarray | None = None

    def __post_init__(self) -> None:
        offsets = np.asarray(self.offsets, dtype=np.int64)
        items = np.asarray(self.items, dtype=np.int64)
        if offsets.ndim != 1 or len(offsets) == 0 or offsets[0] != 0:
            raise ValueError("Sequences.offsets must be 1-D and start at 0")
        if offsets[-1] != len(items) or (np.diff(offsets) < 0).any():
            raise ValueError("Sequences.offsets must be non-decreasing and end at len(items)")
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "items", items)
        if self.times is not None:
            times = np.asarray(self.times, dtype=np.int64)
            if times.shape != items.shape:
                raise ValueError("Sequences.times must have one entry per item")
            object.__setattr__(self, "times", times)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, u: int) -> np.ndarray:
        if not -len(self) <= u < len(self):
            raise IndexError(f"row {u} out of range for {len(self)} sequences")
        u %= len(self)
        return self.items[self.offsets[u] : self.offsets[u + 1]]

    @property
    def lengths(self) -> np.ndarray:
        """Length of every row (int64)."""
        return np.diff(self.offsets)

    @classmethod
    def from_lists(cls, rows: Sequence[Sequence[int]]) -> Sequences:
        """Build from one list of encoded items per row."""
        lengths = np.fromiter((len(row) for row in rows), np.int64, len(rows))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        items = np.fromiter((item for row in rows for item in row), np.int64, int(offsets[-1]))
        return cls(offsets, items)

    def to_lists(self) -> list[list[int]]:
        """Every row as a Python list (for tests and small data)."""
        return [self[u].tolist() for u in range(len(self))]


def build_sequences(interactions: Interactions, vocab: Vocabulary) -> Sequences:
    """One chronological row per vocabulary user (row ``u`` = ``vocab.user_ids[u]``).

    The sort is stable, so interactions with the same timestamp keep their order in the file
    (MovieLens has many same-second ratings; pairs files rely on file order entirely). Files
    without time (whose timestamps are the row positions) give sequences without ``times``.
    """
    users = vocab.encode_users(interactions.users)
    items = vocab.encode_items(interactions.items)
    order = np.lexsort((interactions.timestamps, users))  # lexsort is stable
    counts = np.bincount(users, minlength=vocab.num_users)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    timed = has_real_times(interactions.timestamps)
    return Sequences(offsets, items[order], interactions.timestamps[order] if timed else None)


def has_real_times(timestamps: np.ndarray) -> bool:
    """False for the row positions that readers give files without a time column."""
    n = len(timestamps)
    if n and (timestamps[0] != 0 or timestamps[-1] != n - 1):  # the usual answer, at no cost
        return True
    return not np.array_equal(timestamps, np.arange(n, dtype=timestamps.dtype))
