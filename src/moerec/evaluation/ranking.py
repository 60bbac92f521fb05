"""Ranking the catalogue in chunks: top-k and target ranks without a (B, V) score matrix.

A ranker asks ``score_chunk(start, stop)`` for the scores of item ids start..stop-1 of every
row of a batch, (B, stop - start), walks the catalogue in such chunks and keeps only what it
needs between them: the running top-k and each target's count of better-scoring items. Memory
is one chunk of scores at a time, whatever the catalogue size.

On the same scores the results are those of ranking the whole row at once, exactly: a rank
counts the items scoring strictly higher than the target, which adds up over chunks; the
best k of a row are among the best k of the chunk that holds them. With one chunk covering
the catalogue the work is the unchunked ranker's, operation for operation.

Shapes: B rows, C items in a chunk, V catalogue size + 1 (id 0 is padding), E exclusions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from moerec.data.batching import flat_rows

ChunkScorer = Callable[[int, int], Tensor]  # (start, stop) -> (B, stop - start) scores


@dataclass(frozen=True)
class Exclusions:
    """(row, item) pairs that score -inf: items a row must never be recommended."""

    rows: Tensor  # (E,) batch positions
    items: Tensor  # (E,) item ids

    @classmethod
    def none(cls) -> Exclusions:
        empty = torch.zeros(0, dtype=torch.long)
        return cls(empty, empty)

    @classmethod
    def from_histories(cls, offsets: np.ndarray, items: np.ndarray, rows: np.ndarray) -> Exclusions:
        """Every item of each selected CSR row's history (batch position = index in rows)."""
        batch_pos, flat = flat_rows(offsets, rows)
        return cls(torch.from_numpy(batch_pos), torch.from_numpy(items[flat]))

    @classmethod
    def from_lists(cls, per_row: list[list[np.ndarray]]) -> Exclusions:
        """Excluded ids given per batch row, as any number of id arrays each."""
        rows = [
            np.full(len(ids), b, dtype=np.int64) for b, parts in enumerate(per_row) for ids in parts
        ]
        ids = [np.asarray(ids, dtype=np.int64) for parts in per_row for ids in parts]
        if not rows:
            return cls.none()
        return cls(torch.from_numpy(np.concatenate(rows)), torch.from_numpy(np.concatenate(ids)))

    def apply(self, scores: Tensor, start: int, stop: int) -> None:
        """Set the excluded items of chunk start..stop-1 to -inf, in place. scores: (B, C)."""
        if self.items.numel() == 0:
            return
        inside = (self.items >= start) & (self.items < stop)  # (E,)
        scores[self.rows[inside], self.items[inside] - start] = float("-inf")


def chunk_bounds(num_columns: int, chunk_items: int, first: int = 0) -> list[tuple[int, int]]:
    """[start, stop) chunks covering ids 0..num_columns-1; the one holding id ``first`` first."""
    bounds = [
        (start, min(start + chunk_items, num_columns))
        for start in range(0, num_columns, chunk_items)
    ]
    lead = first // chunk_items
    return [bounds[lead], *bounds[:lead], *bounds[lead + 1 :]]


class RunningTopK:
    """The k best (score, id) pairs of each row seen so far."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.values: Tensor | None = None  # (B, ≤ k) best first
        self.ids: Tensor | None = None  # (B, ≤ k)

    def add(self, scores: Tensor, start: int) -> None:
        """Merge one chunk's scores (B, C) of ids start..start+C-1."""
        values, ids = scores.topk(min(self.k, scores.shape[1]), dim=1)  # (B, ≤ k)
        ids = ids + start
        if self.values is None or self.ids is None:
            self.values, self.ids = values, ids
            return
        values = torch.cat([self.values, values], dim=1)  # (B, ≤ 2k)
        ids = torch.cat([self.ids, ids], dim=1)  # (B, ≤ 2k)
        self.values, best = values.topk(min(self.k, values.shape[1]), dim=1)  # (B, ≤ k)
        self.ids = ids.gather(1, best)

    def result(self) -> tuple[Tensor, Tensor]:
        if self.values is None or self.ids is None:
            raise ValueError("no chunk was ranked")
        return self.values, self.ids


def chunked_topk(
    score_chunk: ChunkScorer,
    num_columns: int,
    k: int,
    chunk_items: int,
    exclusions: Exclusions | None = None,
) -> tuple[Tensor, Tensor]:
    """The k best scores of every row and their item ids, best first. -> (B, k), (B, k)."""
    top = RunningTopK(k)
    for start, stop in chunk_bounds(num_columns, chunk_items):
        scores = score_chunk(start, stop)  # (B, C)
        if exclusions is not None:
            exclusions.apply(scores, start, stop)
        top.add(scores, start)
    return top.result()


def chunked_ranks(
    score_chunk: ChunkScorer,
    num_columns: int,
    targets: Tensor,
    k: int,
    chunk_items: int,
    exclusions: Exclusions | None = None,
) -> tuple[Tensor, Tensor]:
    """0-based rank of each target and the ids of each row's k best items. -> (B,), (B, k).

    The chunk holding the targets is scored first, so every later chunk is compared with the
    targets' scores as that chunk gave them: the batch's targets must share a chunk.
    Rank = items scoring strictly higher than the target; a NaN target (a diverged model)
    ranks last, as in ``target_ranks``.
    """
    lead = int(targets[0]) // chunk_items if targets.numel() else 0
    if targets.numel() and bool(((targets // chunk_items) != lead).any()):
        raise ValueError("chunked_ranks needs every target of the batch in the same chunk")
    top = RunningTopK(k)
    ranks = torch.zeros(targets.shape[0], dtype=torch.long)  # (B,)
    target_scores: Tensor | None = None  # (B, 1)
    for start, stop in chunk_bounds(num_columns, chunk_items, first=lead * chunk_items):
        scores = score_chunk(start, stop)  # (B, C)
        if exclusions is not None:
            exclusions.apply(scores, start, stop)
        if target_scores is None:
            target_scores = scores.gather(1, (targets - start).unsqueeze(1))  # (B, 1)
        ranks += (scores > target_scores).sum(dim=1)
        top.add(scores, start)
    if target_scores is not None:
        ranks = torch.where(target_scores.squeeze(1).isnan(), num_columns, ranks)
    return ranks, top.result()[1]


def target_chunk_batches(
    targets: np.ndarray, chunk_items: int, batch_size: int
) -> Iterator[np.ndarray]:
    """Batches of row indices whose targets share a chunk, in row order within each chunk.

    With one chunk these are simply consecutive rows, batch_size at a time.
    """
    chunk_of = np.asarray(targets, dtype=np.int64) // chunk_items  # (U,)
    order = np.argsort(chunk_of, kind="stable")
    cuts = np.flatnonzero(np.diff(chunk_of[order])) + 1
    for group in np.split(order, cuts):
        for start in range(0, group.shape[0], batch_size):
            yield group[start : start + batch_size]
