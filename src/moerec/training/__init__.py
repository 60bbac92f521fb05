"""Training: full-catalogue cross-entropy + router losses, early stopping, run logs and plots."""

from moerec.training.trainer import TrainResult, seed_everything, sequence_loss, train

__all__ = ["TrainResult", "seed_everything", "sequence_loss", "train"]
