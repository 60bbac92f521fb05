import numpy as np
import pytest
import torch

from moerec.config import EvalConfig
from moerec.data.sequences import Sequences
from moerec.data.split import EvalSet
from moerec.evaluation import evaluate, evaluate_popularity
from moerec.evaluation.evaluator import rank_eval_set

# Two users over a 5-item catalogue; user 0 already saw items 1 and 2, user 1 saw item 5.
EVAL = EvalSet(
    users=np.array([0, 1]),
    histories=Sequences.from_lists([[1, 2], [5]]),
    targets=np.array([3, 5]),
)
SCORES = torch.tensor(
    [
        [float("-inf"), 9.0, 8.0, 1.0, 2.0, 3.0],
        [float("-inf"), 1.0, 2.0, 3.0, 4.0, 5.0],
    ]
)


def fixed_scores(rows):
    return SCORES[torch.from_numpy(rows)].clone()


def test_history_is_excluded_before_ranking():
    result = rank_eval_set(EVAL, 5, fixed_scores, EvalConfig(ks=(1, 3), batch_size=1))
    # user 0: remaining scores {3: 1.0, 4: 2.0, 5: 3.0} -> target 3 has rank 2 (0-based)
    # user 1: its target was seen before, so it is masked and can never be hit
    assert result.metrics["hr@1"] == 0.0
    assert result.metrics["hr@3"] == pytest.approx(0.5)
    assert result.metrics["ndcg@3"] == pytest.approx(0.5 * (1 / np.log2(4)))


def test_without_exclusion_seen_items_compete():
    result = rank_eval_set(
        EVAL, 5, fixed_scores, EvalConfig(ks=(1, 3), batch_size=2, exclude_history=False)
    )
    # user 0: items 1, 2, 5, 4 outrank item 3 (rank 4); user 1: target 5 ranks first
    assert result.metrics["hr@1"] == pytest.approx(0.5)
    assert result.metrics["hr@3"] == pytest.approx(0.5)


def test_coverage_counts_distinct_items_in_top_10():
    result = rank_eval_set(EVAL, 5, fixed_scores, EvalConfig(ks=(10,), batch_size=2))
    assert result.metrics["coverage@10"] == pytest.approx(1.0)  # all 5 items recommended


def test_popularity_baseline_ranks_by_training_counts():
    train = Sequences.from_lists([[4, 4, 4, 3], [3, 2]])
    result = evaluate_popularity(train, EVAL, 5, EvalConfig(ks=(1,)))
    # user 0 (saw 1, 2): item 4 (3 plays) beats target 3 (2 plays); user 1: target masked
    assert result.metrics["hr@1"] == 0.0
    result = evaluate_popularity(Sequences.from_lists([[3, 3, 4]]), EVAL, 5, EvalConfig(ks=(1,)))
    assert result.metrics["hr@1"] == pytest.approx(0.5)


def test_model_evaluation_is_batch_size_invariant_and_restores_train_mode(trained, tiny_dataset):
    model = trained.model.train()
    small = evaluate(model, tiny_dataset.split.test, EvalConfig(batch_size=7))
    large = evaluate(model, tiny_dataset.split.test, EvalConfig(batch_size=1000))
    assert model.training
    for key, value in small.metrics.items():
        assert value == pytest.approx(large.metrics[key], abs=1e-9), key
    assert small.routing.layers[0].tokens == large.routing.layers[0].tokens


def test_the_trained_model_beats_popularity(trained, tiny_dataset):
    popularity = evaluate_popularity(
        tiny_dataset.split.train, tiny_dataset.split.test, tiny_dataset.num_items
    )
    assert trained.test.metrics["ndcg@10"] > 1.5 * popularity.metrics["ndcg@10"]
