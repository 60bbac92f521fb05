"""Inference: load an artefact once, encode histories, rank the catalogue. No web code."""

from moerec.inference.batcher import BatcherClosedError, BatchReport, MicroBatcher
from moerec.inference.predictor import ExpertUse, Predictor, Query, Recommendation
from moerec.inference.process import PredictorProcess, PredictorProcessError

__all__ = [
    "BatchReport",
    "BatcherClosedError",
    "ExpertUse",
    "MicroBatcher",
    "Predictor",
    "PredictorProcess",
    "PredictorProcessError",
    "Query",
    "Recommendation",
]
