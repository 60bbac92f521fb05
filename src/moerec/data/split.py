"""Leave-one-out evaluation split, the protocol of SASRec/BERT4Rec/S3-Rec papers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moerec.data.sequences import Sequences

MIN_EVALUATED_LENGTH = 3  # one item of history, one validation and one test target


@dataclass(frozen=True, eq=False)
class EvalSet:
    """Users to evaluate, each with the history the model sees and the item to predict."""

    users: np.ndarray  # (m,) int64 user indices
    histories: Sequences  # m rows, chronological
    targets: np.ndarray  # (m,) int64 encoded items
    target_times: np.ndarray | None = None  # (m,) Unix seconds, when the data had times

    def __len__(self) -> int:
        return len(self.users)


@dataclass(frozen=True, eq=False)
class LeaveOneOutSplit:
    """The last item of each user is the test target, the one before it the validation target.

    Users with fewer than three items have no room for both targets plus a history: they stay
    entirely in ``train`` and are not evaluated.
    """

    train: Sequences
    valid: EvalSet
    test: EvalSet


def _truncate(sequences: Sequences, keep: np.ndarray, rows: np.ndarray) -> Sequences:
    """Rows ``rows`` of ``sequences``, each cut to its first ``keep[row]`` items."""
    lengths = sequences.lengths
    position = np.arange(len(sequences.items)) - np.repeat(sequences.offsets[:-1], lengths)
    selected = np.zeros(len(sequences), dtype=bool)
    selected[rows] = True
    mask = np.repeat(selected, lengths) & (position < np.repeat(keep, lengths))
    offsets = np.concatenate([[0], np.cumsum(keep[rows])]).astype(np.int64)
    times = None if sequences.times is None else sequences.times[mask]
    return Sequences(offsets, sequences.items[mask], times)


def leave_one_out(sequences: Sequences) -> LeaveOneOutSplit:
    """Split every user's sequence into train / validation / test (see LeaveOneOutSplit)."""
    lengths = sequences.lengths
    users = np.flatnonzero(lengths >= MIN_EVALUATED_LENGTH).astype(np.int64)
    every = np.arange(len(sequences), dtype=np.int64)
    ends = sequences.offsets[1:]
    train_keep = np.where(lengths >= MIN_EVALUATED_LENGTH, lengths - 2, lengths)
    valid = EvalSet(
        users=users,
        histories=_truncate(sequences, lengths - 2, users),
        targets=sequences.items[ends[users] - 2],
        target_times=_at(sequences.times, ends[users] - 2),
    )
    test = EvalSet(
        users=users.copy(),
        histories=_truncate(sequences, lengths - 1, users),
        targets=sequences.items[ends[users] - 1],
        target_times=_at(sequences.times, ends[users] - 1),
    )
    return LeaveOneOutSplit(train=_truncate(sequences, train_keep, every), valid=valid, test=test)


def _at(times: np.ndarray | None, index: np.ndarray) -> np.ndarray | None:
    return None if times is None else times[index]
