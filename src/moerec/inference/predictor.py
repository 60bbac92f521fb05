"""The predictor: a loaded artefact that turns item histories into ranked recommendations.

No web code here: the CLI and the HTTP service both call ``Predictor.recommend``. Only the last
position's hidden state is scored against the catalogue, and the experts that position used in
each layer are reported with their weights, so a caller can see how a request was routed.

A catalogue larger than ``score_chunk_items`` is ranked in chunks with a running top-k
(``evaluation.ranking``), so a request never holds a (batch, catalogue) score matrix, and a
candidate-restricted request scores its candidates only. A smaller catalogue is scored in one
piece, as the reference path below does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from moerec import MoerecError
from moerec.data.batching import event_context, flat_rows, left_pad, trim_padding
from moerec.evaluation.evaluator import exclude_seen
from moerec.evaluation.ranking import Exclusions, chunked_topk
from moerec.registry import Artefact, load_artefact

# One MoE layer's routing of the batch's scoring positions: experts, weights, slot in use,
# each a (B, K) nested list.
RoutingRows = tuple[list[list[int]], list[list[float]], list[list[bool]]]


@dataclass(frozen=True)
class ExpertUse:
    """Which experts one layer used for the scoring position, with their combine weights."""

    layer: int
    experts: list[int]
    weights: list[float]


@dataclass(frozen=True)
class Recommendation:
    items: list[str]  # raw item ids, best first (or in the asked order for a scoring query)
    scores: list[float]
    experts: list[ExpertUse]  # one entry per MoE layer; empty for a dense model


@dataclass(frozen=True)
class Query:
    """One user's request, in the model's encoded ids.

    A batch of queries shares one forward pass whatever their options: the per-row options
    only change which scores are masked or read afterwards.
    """

    history: np.ndarray  # encoded items, oldest first; at least one
    k: int = 10
    exclude_history: bool = True
    exclude: np.ndarray | None = None  # encoded items never to recommend
    candidates: np.ndarray | None = None  # rank only these encoded items
    score_only: bool = False  # return the scores of `candidates`, in the order given
    # Models with time context: Unix seconds of each history item, and of the request. Either
    # may be left out (unknown); the model then answers without that part of the context.
    times: np.ndarray | None = None
    now: float | None = None


class Predictor:
    """Loads a model once; scores batches of histories with no gradient bookkeeping."""

    def __init__(self, artefact: Artefact, score_chunk_items: int | None = None) -> None:
        """``score_chunk_items``: items scored at once (default: the artefact's eval setting)."""
        self.artefact = artefact
        self.model = artefact.model.eval()
        self.vocab = artefact.vocab
        self.max_len = artefact.config.model.max_len
        self.score_chunk_items = score_chunk_items or artefact.config.eval.score_chunk_items
        if self.score_chunk_items < 1:
            raise MoerecError("score_chunk_items must be at least 1")
        self.item_table = self._frozen_item_table()

    def _frozen_item_table(self) -> Tensor | None:
        """With item features, the head's table (embeddings plus attribute means), computed once
        for all requests: the loaded model never changes, and the per-request alternative
        gathers and averages every item's attribute embeddings before scoring. None without
        features, where the table is the embedding matrix itself and costs nothing to read."""
        if self.model.attribute_embedding is None:
            return None
        with torch.no_grad():
            return self.model.item_table().detach()

    @classmethod
    def from_path(cls, path: Path | str, score_chunk_items: int | None = None) -> Predictor:
        return cls(load_artefact(path), score_chunk_items)

    def warm_up(self) -> None:
        """One tiny forward pass, so the first request does not pay torch's lazy set-up."""
        self.run([Query(np.asarray([1], dtype=np.int64), k=1)])

    @property
    def version(self) -> str:
        return self.artefact.version

    @property
    def time_context(self) -> bool:
        """Whether the model reads event times (``Query.times`` and ``Query.now``)."""
        return self.model.config.time_context

    def known_positions(self, raw_items: Sequence[str]) -> list[int]:
        """Positions in ``raw_items`` of the items the model knows: those ``encode`` keeps."""
        return [i for i, raw in enumerate(raw_items) if self.vocab.item_index(str(raw)) is not None]

    def encode(self, raw_items: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """Encoded ids of the known items, in order, and the raw ids the model does not know."""
        known: list[int] = []
        unknown: list[str] = []
        for raw in raw_items:
            index = self.vocab.item_index(str(raw))
            if index is None:
                unknown.append(str(raw))
            else:
                known.append(index)
        return np.asarray(known, dtype=np.int64), unknown

    def recommend(
        self, histories: Sequence[np.ndarray], k: int = 10, exclude_history: bool = True
    ) -> list[Recommendation]:
        """Top-k items for each encoded history (oldest item first)."""
        return self.run([Query(h, k=k, exclude_history=exclude_history) for h in histories])

    @torch.no_grad()
    def run(self, queries: Sequence[Query]) -> list[Recommendation]:
        """Answer a batch of queries with one forward pass over their histories."""
        if any(len(q.history) == 0 for q in queries):
            raise MoerecError("every history needs at least one item the model knows")
        if not queries:
            return []
        lengths = np.asarray([len(q.history) for q in queries], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        items = np.concatenate([q.history for q in queries]).astype(np.int64)
        rows = np.arange(len(queries))
        seq = torch.from_numpy(
            trim_padding(left_pad(offsets, items, rows, self.max_len))
        )  # (B, ≤L)
        context = None
        if self.model.config.time_context:
            context = self._context(queries, offsets, items, rows, seq.shape[1])
        user_hidden, out = self.model.encode_users(seq, context)  # (B, D)
        # Python lists once per batch: per-query tensor indexing cost more than the query's
        # share of the forward pass at batch 16.
        routing = [
            (experts.tolist(), weights.tolist(), mask.tolist())
            for experts, weights, mask in out.last_position_routing()
        ]
        if self.model.config.num_items + 1 > self.score_chunk_items:
            return self._run_chunked(queries, user_hidden, routing)
        return self._run_whole(queries, user_hidden, routing, offsets, items, rows)

    @staticmethod
    def _context(
        queries: Sequence[Query],
        offsets: np.ndarray,
        items: np.ndarray,
        rows: np.ndarray,
        width: int,
    ) -> Tensor:
        """(B, width + 1, 2) time context of the batch; 0 (unknown) where a query has no times
        or no request time."""
        stamps = []
        for query in queries:
            if query.times is None:
                stamps.append(np.zeros(len(query.history), dtype=np.int64))
            elif len(query.times) != len(query.history):
                raise MoerecError(
                    f"a query has {len(query.times)} times for {len(query.history)} history items"
                )
            else:
                stamps.append(np.asarray(query.times, dtype=np.float64).astype(np.int64))
        now = np.asarray([q.now or 0 for q in queries], dtype=np.float64).astype(np.int64)
        context = event_context(offsets, items, np.concatenate(stamps), rows, width, now)
        for b, query in enumerate(queries):
            if query.times is None:  # no gaps, no hours: only the request's hour is known
                context[b, :, 0] = 0
                context[b, :-1, 1] = 0
            if query.now is None:
                context[b, -1] = 0
        return torch.from_numpy(context)

    def _run_whole(
        self,
        queries: Sequence[Query],
        user_hidden: Tensor,
        routing: list[RoutingRows],
        offsets: np.ndarray,
        items: np.ndarray,
        rows: np.ndarray,
    ) -> list[Recommendation]:
        """The reference path: one (B, V) score matrix, masked and ranked in place."""
        scores = self.model.score(user_hidden, self.item_table)  # (B, V)
        # scoring queries read raw scores: history exclusion would turn them into -inf
        filtered = [q.exclude_history and not q.score_only for q in queries]
        if all(filtered):
            exclude_seen(scores, offsets, items, rows)
        elif any(filtered):
            subset = np.asarray(filtered).nonzero()[0]
            batch_pos, flat = flat_rows(offsets, subset)
            scores[torch.from_numpy(subset[batch_pos]), torch.from_numpy(items[flat])] = float(
                "-inf"
            )
        plain = [
            b
            for b, q in enumerate(queries)
            if not q.score_only and q.candidates is None and q.exclude is None
        ]
        results: dict[int, Recommendation] = {}
        if plain:  # the common case: one batched top-k
            k_max = min(max(queries[b].k for b in plain), self.model.config.num_items)
            ranked = scores if len(plain) == len(queries) else scores[plain]  # no (B, V) copy
            top_scores, top_items = ranked.topk(k_max, dim=1)
            item_rows, score_rows = top_items.tolist(), top_scores.tolist()
            for i, b in enumerate(plain):
                k = queries[b].k
                results[b] = self._recommendation(item_rows[i][:k], score_rows[i][:k], routing, b)
        for b, query in enumerate(queries):
            if b in results:
                continue
            row = scores[b]
            if query.score_only:
                picked = torch.from_numpy(_ids(query.candidates))
                results[b] = self._recommendation(
                    picked.tolist(), row[picked].tolist(), routing, b, keep_all=True
                )
                continue
            row = self._restrict(row, query)
            top_scores, top_items = row.topk(min(query.k, self.model.config.num_items))
            results[b] = self._recommendation(top_items.tolist(), top_scores.tolist(), routing, b)
        return [results[b] for b in range(len(queries))]

    def _run_chunked(
        self,
        queries: Sequence[Query],
        user_hidden: Tensor,
        routing: list[RoutingRows],
    ) -> list[Recommendation]:
        """The same answers as ``_run_whole`` without a (B, V) matrix: full-catalogue queries
        share one chunked top-k; candidate and scoring queries score their own items only."""
        results: dict[int, Recommendation] = {}
        ranked = [b for b, q in enumerate(queries) if not q.score_only and q.candidates is None]
        if ranked:
            hidden = user_hidden[ranked]  # (B', D)
            exclusions = Exclusions.from_lists([self._excluded(queries[b]) for b in ranked])
            top_scores, top_items = chunked_topk(
                lambda start, stop: self.model.score_range(hidden, start, stop, self.item_table),
                self.model.config.num_items + 1,
                min(max(queries[b].k for b in ranked), self.model.config.num_items),
                self.score_chunk_items,
                exclusions,
            )  # (B', k), (B', k)
            item_rows, score_rows = top_items.tolist(), top_scores.tolist()
            for i, b in enumerate(ranked):
                k = queries[b].k
                results[b] = self._recommendation(item_rows[i][:k], score_rows[i][:k], routing, b)
        for b, query in enumerate(queries):
            if b in results:
                continue
            picked = _ids(query.candidates)
            if not query.score_only:  # the whole-catalogue path keeps one column per item
                picked = np.unique(picked)
            ids = torch.from_numpy(picked)
            row = self.model.score_items(user_hidden[b : b + 1], ids, self.item_table)[0]
            row[ids == 0] = float("-inf")  # padding, as ``score`` has it
            if query.score_only:
                results[b] = self._recommendation(
                    ids.tolist(), row.tolist(), routing, b, keep_all=True
                )
                continue
            excluded = self._excluded(query)
            if excluded:
                row[torch.from_numpy(np.isin(picked, np.concatenate(excluded)))] = float("-inf")
            top_scores, top = row.topk(min(query.k, row.shape[0]))
            results[b] = self._recommendation(ids[top].tolist(), top_scores.tolist(), routing, b)
        return [results[b] for b in range(len(queries))]

    @staticmethod
    def _excluded(query: Query) -> list[np.ndarray]:
        """The ids a ranking query must not return: its history (unless kept) and exclusions."""
        parts = [query.history] if query.exclude_history else []
        if query.exclude is not None and len(query.exclude):
            parts.append(_ids(query.exclude))
        return [np.asarray(part, dtype=np.int64) for part in parts]

    @staticmethod
    def _restrict(row: Tensor, query: Query) -> Tensor:
        if query.candidates is not None:
            allowed = torch.full_like(row, float("-inf"))
            picked = torch.from_numpy(_ids(query.candidates))
            allowed[picked] = row[picked]
            row = allowed
        else:
            row = row.clone()
        if query.exclude is not None and len(query.exclude):
            row[torch.from_numpy(_ids(query.exclude))] = float("-inf")
        return row

    def _recommendation(
        self,
        items: list[int],
        scores: list[float],
        routing: list[RoutingRows],
        b: int,
        keep_all: bool = False,
    ) -> Recommendation:
        """Query b's answer from its ranked ids and scores (Python lists, one query's row)."""
        # fewer than k items may be left after exclusion; a scoring query keeps every item
        if not keep_all:
            kept = [(item, score) for item, score in zip(items, scores, strict=True)
                    if math.isfinite(score)]  # fmt: skip
            items, scores = [item for item, _ in kept], [score for _, score in kept]
        experts = [
            ExpertUse(
                layer=layer,
                experts=[e for e, used in zip(experts[b], mask[b], strict=True) if used],
                weights=[round(w, 4) for w, used in zip(weights[b], mask[b], strict=True) if used],
            )
            for layer, (experts, weights, mask) in enumerate(routing)
        ]
        return Recommendation(items=self.vocab.decode_items(items), scores=scores, experts=experts)


def _ids(values: np.ndarray | None) -> np.ndarray:
    return np.asarray(values if values is not None else [], dtype=np.int64)
