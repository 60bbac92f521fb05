"""Left-padded id matrices from CSR sequences, without a per-user Python loop."""

from __future__ import annotations

import numpy as np

from moerec.data.time_context import context_ids


def left_pad(
    offsets: np.ndarray,
    items: np.ndarray,
    rows: np.ndarray,
    width: int,
    ends: np.ndarray | None = None,
) -> np.ndarray:
    """The last ``width`` items of each selected CSR row, right-aligned, 0-padded on the left.

    offsets: (U+1,), items: (total,), rows: (B,) -> (B, width) int64. ``ends`` (B,), indices
    into ``items``, cuts each row short: row b then ends before ``items[ends[b]]`` (a prefix).
    """
    rows = np.asarray(rows, dtype=np.int64)
    ends = offsets[rows + 1] if ends is None else np.asarray(ends, dtype=np.int64)  # (B,)
    lengths = np.minimum(ends - offsets[rows], width)  # (B,)
    starts = ends - lengths  # (B,)
    out = np.zeros((rows.shape[0], width), dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return out
    row_of = np.repeat(np.arange(rows.shape[0]), lengths)  # (total,)
    within = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # (total,)
    source = np.repeat(starts, lengths) + within  # (total,) index into items
    column = width - np.repeat(lengths, lengths) + within  # (total,)
    out[row_of, column] = items[source]
    return out


def flat_rows(offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(batch position, index into items) pairs covering every item of the selected rows.

    Used to mask a user's whole history in a score matrix with one scatter.
    """
    rows = np.asarray(rows, dtype=np.int64)
    starts, ends = offsets[rows], offsets[rows + 1]
    lengths = ends - starts  # (B,)
    total = int(lengths.sum())
    batch_pos = np.repeat(np.arange(rows.shape[0]), lengths)  # (total,)
    within = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return batch_pos, np.repeat(starts, lengths) + within


def trim_padding(batch: np.ndarray) -> np.ndarray:
    """Drop leading columns that are padding in every row. (B, W) -> (B, W') with W' ≤ W.

    Positions are right-aligned, so this changes no result, only the work done on padding.
    """
    used = (batch != 0).any(axis=0)  # (W,)
    if not used.any():
        return batch[:, -1:]
    return batch[:, int(used.argmax()) :]


def event_context(
    offsets: np.ndarray,
    items: np.ndarray,
    times: np.ndarray,
    rows: np.ndarray,
    width: int,
    next_times: np.ndarray | None = None,
    ends: np.ndarray | None = None,
) -> np.ndarray:
    """(gap id, hour id) of the last ``width`` events of each selected row, left-padded like
    ``left_pad`` (``ends`` as there), plus, with ``next_times`` (B,), one more column for the
    event to predict.

    -> (B, width, 2), or (B, width + 1, 2) with ``next_times``: a model's ``context``.
    """
    present = left_pad(offsets, items, rows, width, ends) != 0  # items are ids >= 1
    stamps = left_pad(offsets, times, rows, width, ends)
    if next_times is not None:
        present = np.concatenate([present, np.ones((present.shape[0], 1), dtype=bool)], axis=1)
        stamps = np.concatenate([stamps, np.asarray(next_times, np.int64)[:, None]], axis=1)
    return context_ids(stamps, present)
