"""Training: full-catalogue cross-entropy + router losses, early stopping, run logs and plots."""

from moerec.training.distributed import DistContext, DistributedError, distributed_session
from moerec.training.trainer import (
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
    "TrainResult",
    "TrainingDivergedError",
    "TrainingError",
    "distributed_session",
    "seed_everything",
    "sequence_loss",
    "train",
    "train_step",
]
