"""Filters applied to raw interactions before the vocabulary is built."""

from __future__ import annotations

import numpy as np

from moerec.data.errors import DataError
from moerec.data.interactions import Interactions


def filter_min_rating(interactions: Interactions, min_rating: float | None) -> Interactions:
    """Keep interactions rated at least ``min_rating`` (``None`` keeps everything).

    A threshold on a file without ratings is an error rather than a no-op, because silently
    ignoring it would make the user believe the data was filtered.
    """
    if min_rating is None:
        return interactions
    if interactions.ratings is None:
        raise DataError(
            f"{interactions.source}: min_rating={min_rating} is set but the data has no ratings; "
            "remove data.min_rating or use a file with a rating column"
        )
    return interactions.select(interactions.ratings >= min_rating)


def _codes(ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense integer codes for raw ids, so each k-core round is a cheap bincount."""
    unique, codes = np.unique(ids, return_inverse=True)
    return codes.reshape(-1), len(unique)


def k_core(interactions: Interactions, min_user: int, min_item: int) -> Interactions:
    """Repeatedly drop users with fewer than ``min_user`` and items with fewer than
    ``min_item`` interactions until every remaining one has enough (0 disables a side).

    One pass is not enough: dropping a rare item can push a user below the threshold, whose
    removal can then push another item below it, and so on.
    """
    if min_user < 0 or min_item < 0:
        raise DataError(f"k-core thresholds must be >= 0 (got {min_user}, {min_item})")
    if min_user <= 1 and min_item <= 1:
        return interactions
    users, num_users = _codes(interactions.users)
    items, num_items = _codes(interactions.items)
    keep = np.ones(len(interactions), dtype=bool)
    while True:
        user_counts = np.bincount(users[keep], minlength=num_users)
        item_counts = np.bincount(items[keep], minlength=num_items)
        enough = (user_counts[users] >= min_user) & (item_counts[items] >= min_item)
        still = keep & enough
        if np.array_equal(still, keep):
            return interactions.select(keep)
        keep = still
