"""Time context of events: how long since the previous event, and the hour of day.

A model with ``model.time_context`` reads two small ids per event, beside the item: the gap
since the user's previous event on a log2 scale (a second and a minute differ as much as a day
and two days do), and the hour of day in UTC. The request itself is one more event, at the
time it is made: its gap and hour tell the model whether the user is back a minute later or a
month later, and at which time of day.

Id 0 means unknown (padding, a user's first event, or no timestamps), so a model trained with
time context still answers, less well, when a caller has no times to give.
"""

from __future__ import annotations

import numpy as np

from moerec.config import GAP_BUCKETS, HOUR_BUCKETS

__all__ = ["GAP_BUCKETS", "HOUR_BUCKETS", "context_ids", "gap_ids", "hour_ids"]

SECONDS_PER_HOUR = 3600
HOURS_PER_DAY = 24


def gap_ids(seconds: np.ndarray) -> np.ndarray:
    """Log2 bucket of each gap in seconds (negative gaps, from clock skew, count as 0 s)."""
    seconds = np.maximum(np.asarray(seconds, dtype=np.int64), 0)
    ids = np.ones(seconds.shape, dtype=np.int64)
    positive = seconds > 0
    # floor(log2(s)) exactly for integers: the bit length minus one
    ids[positive] = 2 + np.floor(np.log2(seconds[positive].astype(np.float64))).astype(np.int64)
    return np.minimum(ids, GAP_BUCKETS - 1)


def hour_ids(times: np.ndarray) -> np.ndarray:
    """1 + the UTC hour of each Unix time in seconds."""
    times = np.asarray(times, dtype=np.int64)
    return 1 + (times // SECONDS_PER_HOUR) % HOURS_PER_DAY


def context_ids(times: np.ndarray, present: np.ndarray) -> np.ndarray:
    """(gap id, hour id) of every event in left-padded rows.

    times: (B, W) Unix seconds; present: (B, W) True where an event sits (padding is False).
    -> (B, W, 2) int64; 0 where there is no event, and gap 0 for each row's first event.
    """
    times = np.asarray(times, dtype=np.int64)
    present = np.asarray(present, dtype=bool)
    out = np.zeros((*times.shape, 2), dtype=np.int64)
    out[..., 1] = np.where(present, hour_ids(times), 0)
    if times.shape[1] > 1:
        both = present[:, 1:] & present[:, :-1]  # an event with one before it
        gaps = gap_ids(times[:, 1:] - times[:, :-1])
        out[:, 1:, 0] = np.where(both, gaps, 0)
    return out
