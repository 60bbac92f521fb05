"""Full-ranking evaluation: every user's target is ranked against the whole catalogue.

Users are scored in batches on tensors; the user's own history is masked with one scatter per
batch. No per-user Python loop, no sampled negatives. The catalogue is scored
``score_chunk_items`` items at a time (see ``ranking``): a catalogue of millions never needs a
(batch, catalogue) score matrix, and ranks stay exact.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from moerec.config import EvalConfig
from moerec.data.batching import event_context, flat_rows, left_pad, trim_padding
from moerec.data.sequences import Sequences
from moerec.data.split import EvalSet
from moerec.evaluation.metrics import metrics_from_ranks
from moerec.evaluation.ranking import ChunkScorer, Exclusions, chunked_ranks, target_chunk_batches
from moerec.evaluation.routing import RoutingSummary
from moerec.model import SequentialRecommender

COVERAGE_K = 10


@dataclass(frozen=True)
class EvaluationResult:
    metrics: dict[str, float]  # hr@K, ndcg@K, mrr@K for every K, and coverage@10
    num_users: int
    routing: RoutingSummary
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return {
            "metrics": self.metrics,
            "num_users": self.num_users,
            "routing": self.routing.to_dict(),
            "seconds": round(self.seconds, 3),
        }


@torch.no_grad()
def evaluate(
    model: SequentialRecommender, eval_set: EvalSet, settings: EvalConfig | None = None
) -> EvaluationResult:
    """Rank each target among all items (the user's history excluded unless told otherwise)."""
    settings = settings or EvalConfig()
    was_training = model.training
    model.eval()
    routing = RoutingSummary()
    offsets, items = eval_set.histories.offsets, eval_set.histories.items
    device = model.item_embedding.weight.device  # a GPU under torchrun with nccl

    times, target_times = eval_set.histories.times, eval_set.target_times
    if not model.config.time_context:
        times = target_times = None

    def score(rows: np.ndarray) -> ChunkScorer:
        seq = torch.from_numpy(trim_padding(left_pad(offsets, items, rows, model.config.max_len)))
        context = None
        if times is not None and target_times is not None:
            # the target's time is the request's: when the user comes back
            context = torch.from_numpy(
                event_context(offsets, items, times, rows, seq.shape[1], target_times[rows])
            ).to(device)
        user_hidden, out = model.encode_users(seq.to(device), context)  # (B, D)
        routing.add(out.routing)
        # (B, C) per chunk; ranking happens on the CPU
        return lambda start, stop: model.score_range(user_hidden, start, stop).cpu()

    try:
        return rank_eval_set(eval_set, model.config.num_items, score, settings, routing)
    finally:
        model.train(was_training)


def evaluate_popularity(
    train: Sequences, eval_set: EvalSet, num_items: int, settings: EvalConfig | None = None
) -> EvaluationResult:
    """The most-popular-items baseline under the same protocol: a floor every model must beat."""
    counts = torch.from_numpy(np.bincount(train.items, minlength=num_items + 1)).double()
    counts[0] = float("-inf")  # padding

    def score(rows: np.ndarray) -> ChunkScorer:
        return lambda start, stop: counts[start:stop].expand(rows.shape[0], -1).clone()  # (B, C)

    return rank_eval_set(eval_set, num_items, score, settings or EvalConfig())


def exclude_seen(
    scores: torch.Tensor, offsets: np.ndarray, items: np.ndarray, rows: np.ndarray
) -> None:
    """Give every item of each row's history a score of -inf, in place. scores: (B, V).

    The field's standard protocol: an item the user already has is not recommended again, so
    a target that repeats a history item can never be hit.
    """
    batch_pos, flat = flat_rows(offsets, rows)
    scores[torch.from_numpy(batch_pos), torch.from_numpy(items[flat])] = float("-inf")


def rank_eval_set(
    eval_set: EvalSet,
    num_items: int,
    score: Callable[[np.ndarray], torch.Tensor | ChunkScorer],
    settings: EvalConfig,
    routing: RoutingSummary | None = None,
) -> EvaluationResult:
    """Rank every target given ``score(rows)`` for batches of eval-set rows: the (B, V) scores,
    or a ``ChunkScorer`` of them (rows whose targets share a chunk are batched together)."""
    started = time.perf_counter()
    num_users = int(eval_set.targets.shape[0])
    offsets, items = eval_set.histories.offsets, eval_set.histories.items
    chunk = settings.score_chunk_items
    all_ranks = torch.zeros(num_users, dtype=torch.long)
    recommended = torch.zeros(num_items + 1, dtype=torch.bool)
    for rows in target_chunk_batches(eval_set.targets, chunk, settings.batch_size):
        scorer = score(rows)
        if isinstance(scorer, torch.Tensor):
            scorer = _slices(scorer)
        exclusions = (
            Exclusions.from_histories(offsets, items, rows) if settings.exclude_history else None
        )
        targets = torch.from_numpy(eval_set.targets[rows]).long()  # (B,)
        ranks, top = chunked_ranks(
            scorer, num_items + 1, targets, min(COVERAGE_K, num_items), chunk, exclusions
        )  # (B,), (B, 10)
        all_ranks[torch.from_numpy(rows)] = ranks
        recommended[top.reshape(-1)] = True
    metrics = metrics_from_ranks(all_ranks, settings.ks)
    metrics[f"coverage@{COVERAGE_K}"] = recommended[1:].sum().item() / max(num_items, 1)
    return EvaluationResult(
        metrics=metrics,
        num_users=num_users,
        routing=routing or RoutingSummary(),
        seconds=time.perf_counter() - started,
    )


def _slices(scores: torch.Tensor) -> ChunkScorer:
    """A ``ChunkScorer`` reading column slices of an already computed (B, V) matrix."""
    return lambda start, stop: scores[:, start:stop]
