"""The raw interaction log every reader produces and every later step consumes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Interactions:
    """One row per (user, item, time) event, with ids still as the strings in the file.

    Ids stay raw strings here so that nothing about the catalogue is decided before filtering;
    the :class:`~moerec.data.vocab.Vocabulary` assigns dense indices afterwards. Files without
    time use the position within the file as the timestamp, so sorting by time keeps file order.
    """

    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    ratings: np.ndarray | None
    source: str

    def __post_init__(self) -> None:
        n = len(self.users)
        columns = {"items": self.items, "timestamps": self.timestamps}
        if self.ratings is not None:
            columns["ratings"] = self.ratings
        for name, column in columns.items():
            if len(column) != n:
                raise ValueError(f"Interactions.{name} has {len(column)} rows, users has {n}")

    def __len__(self) -> int:
        return len(self.users)

    def select(self, mask: np.ndarray) -> Interactions:
        """The rows where the boolean ``mask`` is true (same source)."""
        mask = np.asarray(mask)
        if mask.dtype != np.bool_ or mask.shape != (len(self),):
            raise ValueError(f"select() needs a boolean mask of shape ({len(self)},)")
        return Interactions(
            users=self.users[mask],
            items=self.items[mask],
            timestamps=self.timestamps[mask],
            ratings=None if self.ratings is None else self.ratings[mask],
            source=self.source,
        )
