"""Ranking metrics for leave-one-out evaluation: one held-out target per user.

With a single relevant item, HR@K is 1 when the target ranks in the top K, NDCG@K is
1 / log2(rank + 2) for a 0-based rank < K, and MRR@K is 1 / (rank + 1) for rank < K.
"""

from __future__ import annotations

import torch
from torch import Tensor

METRIC_NAMES = ("hr", "ndcg", "mrr")


def target_ranks(scores: Tensor, targets: Tensor) -> Tensor:
    """0-based rank of each target among all items. scores: (B, V), targets: (B,) -> (B,).

    Ties count in the target's favour only against items scoring exactly the same, which for
    real-valued scores almost never happens; excluded items score -inf and never outrank it.
    A NaN target score (a diverged model) ranks last instead of first: NaN compares False.
    """
    target_scores = scores.gather(1, targets.unsqueeze(1))  # (B, 1)
    ranks = (scores > target_scores).sum(dim=1)  # (B,)
    return torch.where(target_scores.squeeze(1).isnan(), scores.shape[1], ranks)


def metrics_from_ranks(ranks: Tensor, ks: tuple[int, ...]) -> dict[str, float]:
    """Mean HR/NDCG/MRR@K over users, keyed ``hr@10``, ``ndcg@10``, ``mrr@10``."""
    ranks = ranks.double()
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"hr@{k}"] = hit.double().mean().item() if ranks.numel() else 0.0
        out[f"ndcg@{k}"] = (
            torch.where(hit, 1.0 / torch.log2(ranks + 2.0), 0.0).mean().item()
            if ranks.numel()
            else 0.0
        )
        out[f"mrr@{k}"] = (
            torch.where(hit, 1.0 / (ranks + 1.0), 0.0).mean().item() if ranks.numel() else 0.0
        )
    return out
