import math

import pytest
import torch

from moerec.evaluation.metrics import metrics_from_ranks, target_ranks


def test_target_rank_counts_items_scoring_strictly_higher():
    scores = torch.tensor([[0.0, 0.9, 0.1, 0.5, 0.7], [0.0, 0.1, 0.2, 0.3, 0.4]])
    targets = torch.tensor([3, 4])
    assert target_ranks(scores, targets).tolist() == [2, 0]


def test_excluded_items_at_minus_infinity_never_outrank_the_target():
    scores = torch.tensor([[float("-inf"), float("-inf"), 0.2, -5.0]])
    assert target_ranks(scores, torch.tensor([3])).tolist() == [1]


def test_a_nan_target_score_ranks_last_not_first():
    scores = torch.tensor([[0.0, float("nan"), float("nan")], [0.0, 0.5, 0.1]])
    assert target_ranks(scores, torch.tensor([1, 2])).tolist() == [3, 1]


def test_metrics_match_hand_computed_values():
    # ranks 0, 2, 7, 30: hits@5 for the first two, @10 for three, @20 for three
    ranks = torch.tensor([0, 2, 7, 30])
    m = metrics_from_ranks(ranks, (5, 10, 20))
    assert m["hr@5"] == pytest.approx(2 / 4)
    assert m["hr@10"] == pytest.approx(3 / 4)
    assert m["hr@20"] == pytest.approx(3 / 4)
    assert m["ndcg@5"] == pytest.approx((1.0 + 1 / math.log2(4)) / 4)
    assert m["ndcg@10"] == pytest.approx((1.0 + 1 / math.log2(4) + 1 / math.log2(9)) / 4)
    assert m["mrr@5"] == pytest.approx((1.0 + 1 / 3) / 4)
    assert m["mrr@10"] == pytest.approx((1.0 + 1 / 3 + 1 / 8) / 4)


def test_metrics_of_no_users_are_zero_not_nan():
    m = metrics_from_ranks(torch.zeros(0, dtype=torch.long), (10,))
    assert m == {"hr@10": 0.0, "ndcg@10": 0.0, "mrr@10": 0.0}
