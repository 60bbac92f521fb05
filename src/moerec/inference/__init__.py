"""Inference: load an artefact once, encode histories, rank the catalogue. No web code."""

from moerec.inference.batcher import BatcherClosedError, BatchReport, MicroBatcher
from moerec.inference.predictor import ExpertUse, Predictor, Query, Recommendation

__all__ = [
    "BatchReport",
    "BatcherClosedError",
    "ExpertUse",
    "MicroBatcher",
    "Predictor",
    "Query",
    "Recommendation",
]
