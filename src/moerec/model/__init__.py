"""The model: embeddings, causal Transformer blocks with sparse MoE feed-forward, a tied head.

Only ``nn.Module``s and the tensors they return live here; no data, training or I/O code.
"""

from moerec.model.moe import DenseFeedForward, MoEFeedForward, RoutingStats
from moerec.model.recommender import PADDING_ID, EncoderOutput, SequentialRecommender
from moerec.model.router import Router, Routing

__all__ = [
    "PADDING_ID",
    "DenseFeedForward",
    "EncoderOutput",
    "MoEFeedForward",
    "Router",
    "Routing",
    "RoutingStats",
    "SequentialRecommender",
]
