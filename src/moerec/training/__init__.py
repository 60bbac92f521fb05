"""Training: full-catalogue cross-entropy (or sampled softmax) + router losses, early stopping,
run logs and plots."""

from moerec.training.distributed import DistContext, DistributedError, distributed_session
from moerec.training.sampled_softmax import (
    NegativeSampler,
    SampledSoftmax,
    build_sampled_softmax,
    sampled_softmax_loss,
)
from moerec.training.trainer import (
    SequenceLoss,
    TrainingDivergedError,
    TrainingError,
    TrainResult,
    seed_everything,
    sequence_loss,
    train,
    train_step,
)

__all__ = [
    "DistContext",
    "DistributedError",
    "NegativeSampler",
    "SampledSoftmax",
    "SequenceLoss",
    "TrainResult",
    "TrainingDivergedError",
    "TrainingError",
    "build_sampled_softmax",
    "distributed_session",
    "sampled_softmax_loss",
    "seed_everything",
    "sequence_loss",
    "train",
    "train_step",
]
