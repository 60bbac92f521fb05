"""The predictor: a loaded artefact that turns item histories into ranked recommendations.

No web code here: the CLI and the HTTP service both call ``Predictor.recommend``. Only the last
position's hidden state is scored against the catalogue, and the experts that position used in
each layer are reported with their weights, so a caller can see how a request was routed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from moerec import MoerecError
from moerec.data.batching import left_pad, trim_padding
from moerec.evaluation.evaluator import exclude_seen
from moerec.registry import Artefact, load_artefact


@dataclass(frozen=True)
class ExpertUse:
    """Which experts one layer used for the scoring position, with their combine weights."""

    layer: int
    experts: list[int]
    weights: list[float]


@dataclass(frozen=True)
class Recommendation:
    items: list[str]  # raw item ids, best first
    scores: list[float]
    experts: list[ExpertUse]  # one entry per MoE layer; empty for a dense model


class Predictor:
    """Loads a model once; scores batches of histories with no gradient bookkeeping."""

    def __init__(self, artefact: Artefact) -> None:
        self.artefact = artefact
        self.model = artefact.model.eval()
        self.vocab = artefact.vocab
        self.max_len = artefact.config.model.max_len

    @classmethod
    def from_path(cls, path: Path | str) -> Predictor:
        return cls(load_artefact(path))

    @property
    def version(self) -> str:
        return self.artefact.version

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

    @torch.no_grad()
    def recommend(
        self, histories: Sequence[np.ndarray], k: int = 10, exclude_history: bool = True
    ) -> list[Recommendation]:
        """Top-k items for each encoded history (oldest item first)."""
        if any(len(h) == 0 for h in histories):
            raise MoerecError("every history needs at least one item the model knows")
        if not histories:
            return []
        lengths = np.asarray([len(h) for h in histories], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        items = np.concatenate(histories).astype(np.int64)
        rows = np.arange(len(histories))
        seq = torch.from_numpy(
            trim_padding(left_pad(offsets, items, rows, self.max_len))
        )  # (B, ≤L)
        user_hidden, out = self.model.encode_users(seq)  # (B, D)
        scores = self.model.score(user_hidden)  # (B, V)
        if exclude_history:
            exclude_seen(scores, offsets, items, rows)
        k = min(k, self.model.config.num_items)
        top_scores, top_items = scores.topk(k, dim=1)  # (B, k)
        routing = out.last_position_routing()
        return [
            self._recommendation(top_items[b], top_scores[b], routing, b)
            for b in range(len(histories))
        ]

    def _recommendation(
        self, items: Tensor, scores: Tensor, routing: list[tuple[Tensor, Tensor, Tensor]], b: int
    ) -> Recommendation:
        keep = torch.isfinite(scores)  # fewer than k items left after exclusion
        experts = [
            ExpertUse(
                layer=layer,
                experts=experts[b][mask[b]].tolist(),
                weights=[round(w, 4) for w in weights[b][mask[b]].tolist()],
            )
            for layer, (experts, weights, mask) in enumerate(routing)
        ]
        return Recommendation(
            items=self.vocab.decode_items(items[keep].tolist()),
            scores=scores[keep].tolist(),
            experts=experts,
        )
