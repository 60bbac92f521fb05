"""Full-ranking evaluation: every user's target is ranked against the whole catalogue.

Users are scored in batches on tensors; the user's own history is masked with one scatter per
batch. No per-user Python loop, no sampled negatives.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from moerec.data.batching import flat_rows, left_pad, trim_padding
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
    model: SequentialRecommender,
    eval_set: EvalSet,
    ks: tuple[int, ...] = (5, 10, 20),
    batch_size: int = 512,
    exclude_history: bool = True,
) -> EvaluationResult:
    """Rank each target among all items with the user's history excluded."""
    started = time.perf_counter()
    was_training = model.training
    model.eval()
    num_users = int(eval_set.targets.shape[0])
    num_items = model.config.num_items
    max_len = model.config.max_len
    offsets, items = eval_set.histories.offsets, eval_set.histories.items
    routing = RoutingSummary()
    ranks: list[torch.Tensor] = []
    recommended = torch.zeros(num_items + 1, dtype=torch.bool)
    for start in range(0, num_users, batch_size):
        rows = np.arange(start, min(start + batch_size, num_users))
        seq = torch.from_numpy(trim_padding(left_pad(offsets, items, rows, max_len)))  # (B, ≤L)
        user_hidden, out = model.encode_users(seq)  # (B, D)
        routing.add(out.routing)
        scores = model.score(user_hidden)  # (B, V)
        if exclude_history:
            batch_pos, flat = flat_rows(offsets, rows)
            scores[torch.from_numpy(batch_pos), torch.from_numpy(items[flat])] = float("-inf")
        targets = torch.from_numpy(eval_set.targets[rows]).long()  # (B,)
        ranks.append(target_ranks(scores, targets))
        top = scores.topk(min(COVERAGE_K, num_items), dim=1).indices  # (B, 10)
        recommended[top.reshape(-1)] = True
    model.train(was_training)
    all_ranks = torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)
    metrics = metrics_from_ranks(all_ranks, ks)
    metrics[f"coverage@{COVERAGE_K}"] = recommended[1:].sum().item() / max(num_items, 1)
    return EvaluationResult(
        metrics=metrics,
        num_users=num_users,
        routing=routing,
        seconds=time.perf_counter() - started,
    )
