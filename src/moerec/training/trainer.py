"""Training: full-catalogue cross-entropy (the SASRec+ recipe) plus the routers' aux losses.

One epoch = every user's training sequence once, in a seeded random order. Validation NDCG@10
picks the best epoch and stops training after ``patience`` epochs without improvement; the
best weights are restored before the final validation and test evaluations.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from moerec import MoerecError
from moerec.config import ExperimentConfig, TrainConfig
from moerec.data.batching import left_pad, trim_padding
from moerec.data.dataset import Dataset
from moerec.data.sequences import Sequences
from moerec.evaluation import EvaluationResult, RoutingSummary, evaluate
from moerec.model import SequentialRecommender
from moerec.training.optim import build_optimizer, build_scheduler
from moerec.training.runlog import RunLog, plot_run

SELECTION_METRIC = "ndcg@10"
CHECKPOINT_NAME = "checkpoint.pt"


class TrainingError(MoerecError):
    """Training cannot start or go on as configured."""


class TrainingDivergedError(TrainingError):
    """The loss stopped being a finite number."""


@dataclass
class TrainResult:
    model: SequentialRecommender
    config: ExperimentConfig
    best_epoch: int
    epochs_run: int
    valid: EvaluationResult
    test: EvaluationResult
    train_seconds: float
    run_dir: Path | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        """The project's one result schema: metrics under ``valid`` and ``test``."""
        return {
            "valid": self.valid.metrics,
            "test": self.test.metrics,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "train_seconds": round(self.train_seconds, 2),
            "routing": self.test.routing.to_dict(),
        }


def seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def trainable_users(train: Sequences) -> np.ndarray:
    """Users with at least one (input, next item) pair."""
    return np.flatnonzero(train.lengths >= 2)


def training_batches(
    train: Sequences, users: np.ndarray, max_len: int, batch_size: int, rng: np.random.Generator
) -> Iterator[tuple[Tensor, Tensor]]:
    """Shuffled (inputs, targets) batches: targets are the inputs shifted by one item.

    Each row holds a user's last ``max_len + 1`` training items, left-padded:
    inputs = row[:-1], targets = row[1:]; positions whose input is padding are ignored.
    """
    order = rng.permutation(users)
    for start in range(0, order.shape[0], batch_size):
        rows = order[start : start + batch_size]
        window = torch.from_numpy(
            trim_padding(left_pad(train.offsets, train.items, rows, max_len + 1))
        )  # (B, ≤ L+1)
        yield window[:, :-1], window[:, 1:]  # (B, L), (B, L)


def sequence_loss(
    model: SequentialRecommender, inputs: Tensor, targets: Tensor, label_smoothing: float
) -> tuple[Tensor, Tensor, list[Any]]:
    """Cross-entropy of every next item against the whole catalogue; returns (ce, aux, routing)."""
    out = model(inputs)
    hidden = out.hidden[out.token_mask]  # (M, D) positions with a real input item
    logits = model.item_logits(hidden)  # (M, V-1)
    labels = targets[out.token_mask] - 1  # (M,) item j+1 is column j
    ce = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    return ce, out.aux_loss, out.routing


def train_step(
    model: SequentialRecommender,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    inputs: Tensor,
    targets: Tensor,
    config: TrainConfig,
) -> tuple[Tensor, Tensor, list[Any]]:
    """One optimisation step on one batch; returns (ce, aux, routing stats)."""
    ce, aux, stats = sequence_loss(model, inputs, targets, config.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    (ce + aux).backward()
    if config.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    scheduler.step()
    return ce.detach(), aux.detach(), stats


def train(
    dataset: Dataset,
    config: ExperimentConfig,
    run_dir: Path | None = None,
    progress: bool = True,
    resume: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train a model on ``dataset.split.train``; select and stop on validation NDCG@10."""
    config = config.with_num_items(dataset.num_items)
    tc = config.train
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    rng = seed_everything(tc.seed)
    model = SequentialRecommender(config.model)
    optimizer = build_optimizer(model, tc)
    users = trainable_users(dataset.split.train)
    if users.size == 0:
        raise TrainingError(
            "no user has two or more training interactions, so there is nothing to learn from; "
            "check the data (one event per user?) and the k-core settings"
        )
    steps_per_epoch = -(-users.shape[0] // tc.batch_size)
    scheduler = build_scheduler(optimizer, tc, steps_per_epoch * tc.epochs)
    if resume and (run_dir is None or not (run_dir / CHECKPOINT_NAME).is_file()):
        raise TrainingError(
            f"nothing to resume: no {CHECKPOINT_NAME} in {run_dir}; "
            "pass the --run-dir of the interrupted run"
        )
    log = RunLog(run_dir, append=resume) if run_dir is not None else None
    identity = _run_identity(config, dataset.fingerprint)

    state: dict[str, Any] = {
        "epoch": 0, "best_score": -1.0, "best_epoch": 0, "bad_epochs": 0, "train_seconds": 0.0,
    }  # fmt: skip
    best_weights = copy.deepcopy(model.state_dict())
    if log is not None and resume:
        best_weights = _load_checkpoint(
            log.run_dir / CHECKPOINT_NAME, identity, model, optimizer, scheduler, state, rng
        )
    elif log is not None:
        log.write({"event": "start", "config": config.to_dict(), "data": dataset.stats()})

    first_epoch = int(state["epoch"]) + 1
    if state["bad_epochs"] >= tc.patience:  # the run being resumed had already stopped
        first_epoch = tc.epochs + 1
    for epoch in range(first_epoch, tc.epochs + 1):
        started = time.perf_counter()
        record = _train_epoch(
            model, optimizer, scheduler, dataset, config, users, rng, epoch, progress
        )
        state["train_seconds"] += time.perf_counter() - started
        record["train_seconds"] = round(state["train_seconds"], 2)
        if epoch % tc.eval_every == 0 or epoch == tc.epochs:
            valid = evaluate(model, dataset.split.valid, config.eval)
            record["valid"] = valid.metrics
            score = valid.metrics[SELECTION_METRIC]
            if score > state["best_score"]:
                state.update(best_score=score, best_epoch=epoch, bad_epochs=0)
                best_weights = copy.deepcopy(model.state_dict())
            else:
                state["bad_epochs"] += tc.eval_every
        state["epoch"] = epoch
        if log is not None:  # checkpoint first: a crash between the two never repeats an epoch
            _save_checkpoint(
                log.run_dir / CHECKPOINT_NAME,
                identity, model, optimizer, scheduler, state, best_weights, rng,
            )  # fmt: skip
            log.write(record)
        if on_epoch is not None:
            on_epoch(record)
        if state["bad_epochs"] >= tc.patience:
            break

    model.load_state_dict(best_weights)
    model.eval()
    valid = evaluate(model, dataset.split.valid, config.eval)
    test = evaluate(model, dataset.split.test, config.eval)
    result = TrainResult(
        model=model,
        config=config,
        best_epoch=int(state["best_epoch"]),
        epochs_run=int(state["epoch"]),
        valid=valid,
        test=test,
        train_seconds=state["train_seconds"],
        run_dir=run_dir,
    )
    if log is not None:
        log.write({"event": "end", **result.metrics()})
        plot_run(log.records, log.run_dir / "plots")
        result.history = log.records
    return result


def _train_epoch(
    model: SequentialRecommender,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    dataset: Dataset,
    config: ExperimentConfig,
    users: np.ndarray,
    rng: np.random.Generator,
    epoch: int,
    progress: bool,
) -> dict[str, Any]:
    tc = config.train
    model.train()
    routing = RoutingSummary()
    total_ce = total_aux = 0.0
    batches = 0
    steps = -(-users.shape[0] // tc.batch_size)
    bar = tqdm(
        training_batches(dataset.split.train, users, config.model.max_len, tc.batch_size, rng),
        total=steps,
        desc=f"epoch {epoch}",
        unit="batch",
        disable=not progress,
        leave=False,
    )
    for inputs, targets in bar:
        ce, aux, stats = train_step(model, optimizer, scheduler, inputs, targets, tc)
        loss = ce.item()
        if not math.isfinite(loss):
            raise TrainingDivergedError(
                f"training diverged: the loss became {loss} in epoch {epoch}, batch "
                f"{batches + 1}; lower train.learning_rate or set train.grad_clip"
            )
        routing.add(stats)
        total_ce += loss
        total_aux += aux.item()
        batches += 1
        bar.set_postfix(loss=f"{total_ce / batches:.4f}")
    return {
        "event": "epoch",
        "epoch": epoch,
        "loss": total_ce / max(batches, 1),
        "aux_loss": total_aux / max(batches, 1),
        "lr": scheduler.get_last_lr()[0],
        "routing": routing.to_dict(),
    }


def _run_identity(config: ExperimentConfig, fingerprint: str) -> dict[str, Any]:
    """What must not change between a run and its resumption (epochs and patience may)."""
    train = config.train.model_dump(mode="json")
    for free in ("epochs", "patience"):
        train.pop(free)
    return {"model": config.model.model_dump(mode="json"), "train": train, "data": fingerprint}


def _save_checkpoint(
    path: Path,
    identity: dict[str, Any],
    model: SequentialRecommender,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: dict[str, Any],
    best_weights: dict[str, Tensor],
    rng: np.random.Generator,
) -> None:
    """Everything needed to resume exactly; written to a temp file, then renamed atomically."""
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "identity": identity,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "state": state,
            "best_weights": best_weights,
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": rng.bit_generator.state,
        },
        tmp,
    )
    tmp.replace(path)


def _load_checkpoint(
    path: Path,
    identity: dict[str, Any],
    model: SequentialRecommender,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: dict[str, Any],
    rng: np.random.Generator,
) -> dict[str, Tensor]:
    try:
        saved = torch.load(path, weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged pickle/zip
        raise TrainingError(f"{path}: unreadable checkpoint ({exc}); start a new run") from None
    if saved.get("identity") != identity:
        raise TrainingError(
            f"{path}: this checkpoint was made with another model/training config or other "
            "data; resume with the same settings (only epochs and patience may change)"
        )
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    state.update(saved["state"])
    torch.set_rng_state(saved["torch_rng"])
    rng.bit_generator.state = saved["numpy_rng"]
    return saved["best_weights"]
