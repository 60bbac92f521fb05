"""Inference: load an artefact once, encode histories, rank the catalogue. No web code."""

from moerec.inference.predictor import ExpertUse, Predictor, Recommendation

__all__ = ["ExpertUse", "Predictor", "Recommendation"]
