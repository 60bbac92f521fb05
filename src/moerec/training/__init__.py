"""Training: full-catalogue cross-entropy + router losses, early stopping, run logs and plots."""

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
    "TrainResult",
    "TrainingDivergedError",
    "TrainingError",
    "seed_everything",
    "sequence_loss",
    "train",
    "train_step",
]
