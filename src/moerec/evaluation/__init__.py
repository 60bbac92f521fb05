"""Evaluation: full-ranking HR/NDCG/MRR@K, coverage, routing statistics and model cost."""

from moerec.evaluation.evaluator import EvaluationResult, evaluate, evaluate_popularity
from moerec.evaluation.metrics import metrics_from_ranks, target_ranks
from moerec.evaluation.routing import RoutingSummary

__all__ = [
    "EvaluationResult",
    "RoutingSummary",
    "evaluate",
    "evaluate_popularity",
    "metrics_from_ranks",
    "target_ranks",
]
