"""Full-ranking evaluation: every user's target is ranked against the whole catalogue.

Users are scored in batches on tensors; the user's own history is masked with one scatter per
batch. No per-user Python loop, no sampled negatives.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from moerec.config import EvalConfig
from moerec.data.batching import flat_rows, left_pad, trim_padding
from moerec.data.sequences import Sequences
from moerec.data.split import EvalSet
from moerec.evaluation.metrics import metrics_from_ranks, target_ranks
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

    def score(rows: np.ndarray) -> torch.Tensor:
        seq = torch.from_numpy(trim_padding(left_pad(offsets, items, rows, model.config.max_len)))
        user_hidden, out = model.encode_users(seq.to(device))  # (B, D)
        routing.add(out.routing)
        return model.score(user_hidden).cpu()  # (B, V); ranking happens on the CPU

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

    def score(rows: np.ndarray) -> torch.Tensor:
        return counts.expand(rows.shape[0], -1).clone()  # (B, V)

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
    score: Callable[[np.ndarray], torch.Tensor],
    settings: EvalConfig,
    routing: RoutingSummary | None = None,
) -> EvaluationResult:
    """Rank every target given ``score(rows) -> (B, V)`` for batches of eval-set rows."""
    started = time.perf_counter()
    num_users = int(eval_set.targets.shape[0])
    offsets, items = eval_set.histories.offsets, eval_set.histories.items
    ranks: list[torch.Tensor] = []
    recommended = torch.zeros(num_items + 1, dtype=torch.bool)
    for start in range(0, num_users, settings.batch_size):
        rows = np.arange(start, min(start + settings.batch_size, num_users))
        scores = score(rows)  # (B, V)
        if settings.exclude_history:
            exclude_seen(scores, offsets, items, rows)
        targets = torch.from_numpy(eval_set.targets[rows]).long()  # (B,)
        ranks.append(target_ranks(scores, targets))
        top = scores.topk(min(COVERAGE_K, num_items), dim=1).indices  # (B, 10)
        recommended[top.reshape(-1)] = True
    all_ranks = torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)
    metrics = metrics_from_ranks(all_ranks, settings.ks)
    metrics[f"coverage@{COVERAGE_K}"] = recommended[1:].sum().item() / max(num_items, 1)
    return EvaluationResult(
        metrics=metrics,
        num_users=num_users,
        routing=routing or RoutingSummary(),
        seconds=time.perf_counter() - started,
    )
