"""Training: full-catalogue cross-entropy (the SASRec+ recipe) plus the routers' aux losses.

``train.loss: sampled`` swaps the cross-entropy for sampled softmax with logQ correction (see
``sampled_softmax``), which never scores the whole catalogue.

One epoch = every user's training sequence once, in a seeded random order. Validation NDCG@10
picks the best epoch and stops training after ``patience`` epochs without improvement; the
best weights are restored before the final validation and test evaluations.

Under torchrun the same loop runs in every process (see ``distributed``): each takes its share
of every global batch, DistributedDataParallel averages the gradients, and rank 0 alone
validates, checkpoints, logs and decides when to stop.
"""

from __future__ import annotations

import copy
import logging
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
from torch import Tensor, nn
from tqdm import tqdm

from moerec import MoerecError
from moerec.config import ExperimentConfig, TrainConfig
from moerec.data.batching import event_context, left_pad, trim_padding
from moerec.data.dataset import Dataset
from moerec.data.sequences import Sequences
from moerec.evaluation import EvaluationResult, RoutingSummary, evaluate
from moerec.model import SequentialRecommender
from moerec.training.distributed import SINGLE_PROCESS, DistContext, reduce_routing
from moerec.training.optim import build_optimizer, build_scheduler
from moerec.training.runlog import RunLog, plot_run
from moerec.training.sampled_softmax import SampledSoftmax, build_sampled_softmax

SELECTION_METRIC = "ndcg@10"
CHECKPOINT_NAME = "checkpoint.pt"
# ModelConfig fields that only exist for item features: left out of a feature-free run's
# identity, so that checkpoints written before they existed still resume.
_FEATURE_FIELDS = ("item_feature_mode", "num_attributes", "max_item_attributes")
# MoE fields added later, with the value that turns them off: left out of a run's identity
# while off, for the same reason.
_LATER_MOE_FIELDS = {"moe_num_shared_experts": 0, "moe_balance": "aux_loss"}

logger = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class TrainingExamples:
    """What an epoch trains on. Example i is row ``rows[i]`` of the training sequences cut
    before ``items[ends[i]]`` (its last max_len + 1 items are read); ``tokens[i]`` counts its
    positions that carry a loss. With ``last_only`` only each example's last position does."""

    rows: np.ndarray  # (n,)
    ends: np.ndarray  # (n,) exclusive, into Sequences.items
    tokens: np.ndarray  # (n,)
    last_only: bool

    def __len__(self) -> int:
        return int(self.rows.shape[0])


def training_examples(train: Sequences, kind: str, max_len: int) -> TrainingExamples:
    """``kind`` 'sequences': each user with two or more items, once: the last max_len + 1
    items, every position predicting the next item. 'prefixes': one prefix per item those
    windows predict, ending with it, its last position predicting. Both predict the same items
    once per epoch; a prefix reads the max_len items before its target, where a position of a
    window reads only the items since the window's start."""
    targets = loss_positions(train, max_len)  # (U,) items each user's window predicts
    if kind == "sequences":
        rows = trainable_users(train)
        return TrainingExamples(rows, train.offsets[rows + 1], targets[rows], last_only=False)
    if kind != "prefixes":
        raise ValueError(f"unknown kind of training examples {kind!r}")
    rows = np.repeat(np.arange(len(train)), targets)  # (n,)
    within = np.arange(rows.shape[0]) - np.repeat(np.cumsum(targets) - targets, targets)
    first_end = train.lengths[rows] - targets[rows] + 1  # the window's first target, included
    ends = train.offsets[rows] + first_end + within
    return TrainingExamples(rows, ends, np.ones_like(rows), last_only=True)


def length_batches(
    lengths: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    chunk_batches: int = 50,
) -> Iterator[np.ndarray]:
    """Like ``global_batches`` over ``arange(len(lengths))``, but each batch holds examples of
    similar length: a fresh seeded order is cut into chunks of ``chunk_batches`` batches,
    each chunk is sorted by length and cut into batches, and the batches come in random order.
    Every example still comes once per epoch; what changes is who shares a batch."""
    order = rng.permutation(lengths.shape[0])
    chunk = batch_size * chunk_batches
    batches: list[np.ndarray] = []
    for start in range(0, order.shape[0], chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i : i + batch_size] for i in range(0, part.shape[0], batch_size)]
    for index in rng.permutation(len(batches)):
        yield batches[index]


def training_batches(
    train: Sequences, users: np.ndarray, max_len: int, batch_size: int, rng: np.random.Generator
) -> Iterator[tuple[Tensor, Tensor]]:
    """Shuffled (inputs, targets) batches: targets are the inputs shifted by one item."""
    for rows in global_batches(users, batch_size, rng):
        yield batch_tensors(train, rows, max_len)


def global_batches(
    users: np.ndarray, batch_size: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """One epoch's batches of training-sequence rows, in a fresh seeded order. -> (B,) each."""
    order = rng.permutation(users)
    for start in range(0, order.shape[0], batch_size):
        yield order[start : start + batch_size]


def batch_tensors(
    train: Sequences, rows: np.ndarray, max_len: int, ends: np.ndarray | None = None
) -> tuple[Tensor, Tensor]:
    """(inputs, targets) of the given rows: targets are the inputs shifted by one item.

    Each row holds a user's last ``max_len + 1`` training items (before ``ends``, when given:
    see ``left_pad``), left-padded: inputs = row[:-1], targets = row[1:]; positions whose input
    is padding are ignored.
    """
    window = torch.from_numpy(
        trim_padding(left_pad(train.offsets, train.items, rows, max_len + 1, ends))
    )  # (B, ≤ L+1)
    return window[:, :-1], window[:, 1:]  # (B, L), (B, L)


def batch_context(
    train: Sequences, rows: np.ndarray, width: int, ends: np.ndarray | None = None
) -> Tensor:
    """The ``context`` of a ``batch_tensors`` batch whose inputs are ``width - 1`` wide: each
    window event's (gap id, hour id); the last column is the last target's. -> (B, width, 2)"""
    if train.times is None:
        raise TrainingError("model.time_context needs timestamps, and these sequences have none")
    return torch.from_numpy(
        event_context(train.offsets, train.items, train.times, rows, width, ends=ends)
    )


def loss_positions(train: Sequences, max_len: int) -> np.ndarray:
    """Positions that carry a loss in each row's training window. -> (U,)"""
    return np.maximum(np.minimum(train.lengths, max_len + 1) - 1, 0)


def sequence_loss(
    model: SequentialRecommender,
    inputs: Tensor,
    targets: Tensor,
    label_smoothing: float,
    sampled: SampledSoftmax | None = None,
    context: Tensor | None = None,
    last_only: bool = False,
) -> tuple[Tensor, Tensor, list[Any]]:
    """Cross-entropy of every next item against the whole catalogue, or against the shared
    negatives of ``sampled`` when given; returns (ce, aux, routing). ``context``: see
    ``batch_context``. ``last_only``: only each row's last next item (prefix examples), and
    the final block computes the last position alone."""
    out = model(inputs, last_only=last_only, context=context)
    if last_only:
        hidden, chosen = out.hidden[:, -1], targets[:, -1]  # (M, D), (M,): M = B
    else:
        hidden = out.hidden[out.token_mask]  # (M, D) positions with a real input item
        chosen = targets[out.token_mask]  # (M,)
    if sampled is not None:
        ce = sampled(model, hidden, chosen)  # never builds (M, V) logits
        return ce, out.aux_loss, out.routing
    logits = model.item_logits(hidden)  # (M, V-1)
    labels = chosen - 1  # (M,) item j+1 is column j
    ce = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    return ce, out.aux_loss, out.routing


class SequenceLoss(nn.Module):
    """``sequence_loss`` as a module, so that DistributedDataParallel wraps the whole loss
    computation, the output head tied to the item embeddings included."""

    def __init__(self, model: SequentialRecommender, sampled: SampledSoftmax | None = None) -> None:
        super().__init__()
        self.model = model
        self.sampled = sampled

    def forward(
        self,
        inputs: Tensor,
        targets: Tensor,
        label_smoothing: float,
        context: Tensor | None = None,
        last_only: bool = False,
    ) -> tuple[Tensor, Tensor, list[Any]]:
        return sequence_loss(
            self.model, inputs, targets, label_smoothing, self.sampled, context, last_only
        )


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    inputs: Tensor,
    targets: Tensor,
    config: TrainConfig,
    loss_weight: float = 1.0,
    context: Tensor | None = None,
    last_only: bool = False,
) -> tuple[Tensor, Tensor, list[Any]]:
    """One optimisation step on one batch; returns (ce, aux, routing stats).

    ``model`` is the recommender, or a ``SequenceLoss`` around it (in DistributedDataParallel
    under torchrun); ``loss_weight`` scales this process's loss (see ``DistContext.shard``).
    The sampled loss needs the ``SequenceLoss`` form, which carries the negative sampler.
    """
    if isinstance(model, SequentialRecommender):
        if config.loss == "sampled":
            raise TrainingError(
                "train.loss 'sampled' needs a negative sampler: pass "
                "SequenceLoss(model, build_sampled_softmax(...)) instead of the bare model"
            )
        ce, aux, stats = sequence_loss(
            model, inputs, targets, config.label_smoothing, context=context, last_only=last_only
        )
    else:
        ce, aux, stats = model(inputs, targets, config.label_smoothing, context, last_only)
    optimizer.zero_grad(set_to_none=True)
    loss = ce + aux
    if loss_weight != 1.0:
        loss = loss * loss_weight
    loss.backward()
    if config.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    scheduler.step()
    return ce.detach(), aux.detach(), stats


def fit_config_to_data(config: ExperimentConfig, dataset: Dataset) -> ExperimentConfig:
    """``config`` with the sizes the data decides: the catalogue and, when the model uses item
    features, the attribute vocabulary and the widest item's attribute count."""
    config = config.with_num_items(dataset.num_items)
    if config.model.time_context:
        _check_times(dataset)
    features = dataset.item_features
    if config.model.item_feature_mode == "none":
        if features is not None:
            logger.warning(
                "%s: item features were read but model.item_feature_mode is 'none', so the "
                "model does not use them; set model.item_feature_mode: sum to use them",
                features.source,
            )
        return config
    if features is None:
        raise TrainingError(
            f"model.item_feature_mode is {config.model.item_feature_mode!r} but the data set "
            "has no item features; set data.item_features to an attribute file "
            "(or pass --item-features FILE to moerec train)"
        )
    model = config.model.model_copy(
        update={
            "num_attributes": features.num_attributes,
            "max_item_attributes": features.max_attributes,
        }
    )
    return config.model_copy(update={"model": model})


# Epoch seconds past this are the year 5138: such "seconds" are milliseconds (or finer).
LATEST_PLAUSIBLE_SECONDS = 10**11


def _check_times(dataset: Dataset) -> None:
    """Time context reads gaps and hours from epoch seconds: refuse data that has none."""
    times = dataset.sequences.times
    if times is None:
        raise TrainingError(
            f"model.time_context is on but {dataset.source} has no timestamps (its rows are "
            "in order only); use a file with a time column, or set model.time_context: false"
        )
    if len(times) and int(times.max()) > LATEST_PLAUSIBLE_SECONDS:
        raise TrainingError(
            f"{dataset.source}: timestamps reach {int(times.max())}, which is not epoch "
            "seconds (milliseconds?); time context reads gaps and hours from seconds, so "
            "divide the timestamp column by 1000 (or give ISO 8601 dates)"
        )


def build_model(config: ExperimentConfig, dataset: Dataset) -> SequentialRecommender:
    """A fresh model for ``dataset``; ``config`` must come from ``fit_config_to_data``."""
    features = dataset.item_features
    if config.model.item_feature_mode == "none" or features is None:
        return SequentialRecommender(config.model)
    return SequentialRecommender(config.model, torch.from_numpy(features.table))


def train(
    dataset: Dataset,
    config: ExperimentConfig,
    run_dir: Path | None = None,
    progress: bool = True,
    resume: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    distributed: DistContext | None = None,
) -> TrainResult:
    """Train a model on ``dataset.split.train``; select and stop on validation NDCG@10.

    Under torchrun, pass ``distributed_session``'s context: ``train.batch_size`` is then the
    global batch, shared by the processes; rank 0 alone validates, logs, checkpoints, shows
    progress and calls ``on_epoch``, and every process returns rank 0's result.
    """
    ctx = distributed or SINGLE_PROCESS
    config = fit_config_to_data(config, dataset)
    tc = config.train
    ctx.local_batch_size(tc.batch_size)  # refuses a batch the processes cannot share evenly
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    rng = seed_everything(tc.seed)
    model = build_model(config, dataset).to(ctx.device)
    optimizer = build_optimizer(model, tc)
    examples = training_examples(dataset.split.train, tc.examples, config.model.max_len)
    if len(examples) == 0:
        raise TrainingError(
            "no user has two or more training interactions, so there is nothing to learn from; "
            "check the data (one event per user?) and the k-core settings"
        )
    steps_per_epoch = -(-len(examples) // tc.batch_size)
    scheduler = build_scheduler(optimizer, tc, steps_per_epoch * tc.epochs)
    saved = ctx.run_on_main(lambda: _read_checkpoint(run_dir)) if resume else None
    log = RunLog(run_dir, append=resume) if run_dir is not None and ctx.is_main else None
    identity = _run_identity(config, dataset)

    state: dict[str, Any] = {
        "epoch": 0, "best_score": -1.0, "best_epoch": 0, "bad_epochs": 0, "train_seconds": 0.0,
    }  # fmt: skip
    best_weights = copy.deepcopy(model.state_dict())
    if saved is not None:  # every process restores rank 0's checkpoint
        best_weights = _restore_checkpoint(saved, identity, model, optimizer, scheduler, state, rng)
    elif log is not None:
        log.write({"event": "start", "config": config.to_dict(), "data": dataset.stats()})

    sampled = None
    if tc.loss == "sampled":  # each process draws its own negatives (seeded by its rank)
        sampled = build_sampled_softmax(
            tc, dataset.num_items, dataset.split.train.items, rank=ctx.rank
        )
        sampled.sampler.draws = int(state.get("negative_draws", 0))
    net = ctx.wrap(SequenceLoss(model, sampled))
    first_epoch = int(state["epoch"]) + 1
    if state["bad_epochs"] >= tc.patience:  # the run being resumed had already stopped
        first_epoch = tc.epochs + 1
    # A resumed run gets the whole budget again: it is a limit on this invocation's wall time.
    deadline = time.perf_counter() + tc.time_budget_minutes * 60 if tc.time_budget_minutes else None
    for epoch in range(first_epoch, tc.epochs + 1):
        started = time.perf_counter()
        record = _train_epoch(
            net, optimizer, scheduler, dataset, config, examples, rng, epoch,
            progress and ctx.is_main, ctx,
        )  # fmt: skip
        state["train_seconds"] += time.perf_counter() - started
        record["train_seconds"] = round(state["train_seconds"], 2)
        if ctx.is_main and (epoch % tc.eval_every == 0 or epoch == tc.epochs):
            valid = evaluate(model, dataset.split.valid, config.eval)
            record["valid"] = valid.metrics
            score = valid.metrics[SELECTION_METRIC]
            if score > state["best_score"]:
                state.update(best_score=score, best_epoch=epoch, bad_epochs=0)
                best_weights = copy.deepcopy(model.state_dict())
            else:
                state["bad_epochs"] += tc.eval_every
        out_of_time = deadline is not None and time.perf_counter() >= deadline
        if out_of_time:
            record["stopped"] = "time budget"
        state["epoch"] = epoch
        if sampled is not None:  # every process has drawn as often: rank 0's count is theirs
            state["negative_draws"] = sampled.sampler.draws
        if log is not None:  # checkpoint first: a crash between the two never repeats an epoch
            _save_checkpoint(
                log.run_dir / CHECKPOINT_NAME,
                identity, model, optimizer, scheduler, state, best_weights, rng,
            )  # fmt: skip
            log.write(record)
        if on_epoch is not None and ctx.is_main:
            on_epoch(record)
        if ctx.decide(state["bad_epochs"] >= tc.patience or out_of_time):  # rank 0's, everywhere
            break

    def finish() -> TrainResult:
        model.load_state_dict(best_weights)
        model.eval()
        valid = evaluate(model, dataset.split.valid, config.eval)
        test = evaluate(model, dataset.split.test, config.eval)
        result = TrainResult(
            model=model.cpu(),
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

    return ctx.run_on_main(finish)


def _train_epoch(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    dataset: Dataset,
    config: ExperimentConfig,
    examples: TrainingExamples,
    rng: np.random.Generator,
    epoch: int,
    progress: bool,
    ctx: DistContext,
) -> dict[str, Any]:
    """One pass over the training sequences. Every process draws the same order (same seed,
    same generator state) and trains on its share of each global batch; the returned loss
    and routing statistics are the global batch's (summed over processes)."""
    tc = config.train
    train_set = dataset.split.train
    net.train()
    routing = RoutingSummary()
    total_ce = total_aux = shown = 0.0
    batches = 0
    steps = -(-len(examples) // tc.batch_size)
    if tc.batch_by_length:
        lengths = np.minimum(examples.ends - train_set.offsets[examples.rows], config.model.max_len)
        batch_order = length_batches(lengths, tc.batch_size, rng)
    else:
        batch_order = global_batches(np.arange(len(examples)), tc.batch_size, rng)
    bar = tqdm(
        batch_order,
        total=steps,
        desc=f"epoch {epoch}",
        unit="batch",
        disable=not progress,
        leave=False,
    )
    for batch in bar:
        shard = ctx.shard(batch, examples.tokens[batch])
        rows, ends = examples.rows[shard.rows], examples.ends[shard.rows]
        inputs, targets = batch_tensors(train_set, rows, config.model.max_len, ends)
        context = None
        if config.model.time_context:
            context = batch_context(train_set, rows, inputs.shape[1] + 1, ends).to(ctx.device)
        ce, aux, stats = train_step(
            net, optimizer, scheduler, inputs.to(ctx.device), targets.to(ctx.device), tc,
            loss_weight=shard.loss_weight, context=context, last_only=examples.last_only,
        )  # fmt: skip
        loss = ce.item()
        if not math.isfinite(loss):
            raise TrainingDivergedError(
                f"training diverged: the loss became {loss} in epoch {epoch}, batch "
                f"{batches + 1}; lower train.learning_rate or set train.grad_clip"
            )
        if not shard.stand_in:
            routing.add(stats)
        share = shard.loss_weight / ctx.world_size  # this process's part of the batch mean
        total_ce += loss * share
        total_aux += aux.item() * share
        shown += loss
        batches += 1
        bar.set_postfix(loss=f"{shown / batches:.4f}")
    total_ce, total_aux = ctx.all_reduce_sum([total_ce, total_aux])
    moe_layers = config.model.num_layers if config.model.is_moe else 0
    routing = reduce_routing(routing, ctx, moe_layers, config.model.moe_num_experts)
    return {
        "event": "epoch",
        "epoch": epoch,
        "loss": total_ce / max(batches, 1),
        "aux_loss": total_aux / max(batches, 1),
        "lr": scheduler.get_last_lr()[0],
        "routing": routing.to_dict(),
    }


def _run_identity(config: ExperimentConfig, dataset: Dataset) -> dict[str, Any]:
    """What must not change between a run and its resumption (epochs, patience and the time
    budget may)."""
    train = config.train.model_dump(mode="json")
    for free in ("epochs", "patience", "time_budget_minutes"):
        train.pop(free)
    if config.train.loss == "ce":  # so checkpoints from before the sampled loss still resume
        for unused in ("loss", "num_negatives", "negative_sampler", "logq_correction"):
            train.pop(unused)
    model = config.model.model_dump(mode="json")
    identity: dict[str, Any] = {"model": model, "train": train, "data": dataset.fingerprint}
    for name, off in _LATER_MOE_FIELDS.items():
        if model.get(name) == off:
            model.pop(name)
    if config.model.moe_balance != "bias":
        model.pop("moe_bias_update_rate", None)
    if config.model.item_feature_mode == "none":
        for unused in _FEATURE_FIELDS:
            model.pop(unused, None)
    elif dataset.item_features is not None:  # other attributes are other training data
        identity["item_features"] = dataset.item_features.fingerprint()
    return identity


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


def _read_checkpoint(run_dir: Path | None) -> dict[str, Any]:
    """The run's checkpoint, its tensors on the CPU (``_restore_checkpoint`` places them)."""
    path = run_dir / CHECKPOINT_NAME if run_dir is not None else None
    if path is None or not path.is_file():
        raise TrainingError(
            f"nothing to resume: no {CHECKPOINT_NAME} in {run_dir}; "
            "pass the --run-dir of the interrupted run"
        )
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged pickle/zip
        raise TrainingError(f"{path}: unreadable checkpoint ({exc}); start a new run") from None
    if not isinstance(saved, dict):
        raise TrainingError(f"{path}: not a moerec checkpoint; start a new run")
    return {**saved, "path": str(path)}


def _restore_checkpoint(
    saved: dict[str, Any],
    identity: dict[str, Any],
    model: SequentialRecommender,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: dict[str, Any],
    rng: np.random.Generator,
) -> dict[str, Tensor]:
    if saved.get("identity") != identity:
        raise TrainingError(
            f"{saved['path']}: this checkpoint was made with another model/training config or "
            "other data; resume with the same settings (only epochs and patience may change)"
        )
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    state.update(saved["state"])
    torch.set_rng_state(saved["torch_rng"])
    rng.bit_generator.state = saved["numpy_rng"]
    return saved["best_weights"]
