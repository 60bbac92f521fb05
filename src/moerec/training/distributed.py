"""Data-parallel training under ``torchrun``: PyTorch's DistributedDataParallel, nothing more.

``torchrun --nproc_per_node N -m moerec train …`` starts N processes and gives each one RANK,
WORLD_SIZE and LOCAL_RANK (and the rendezvous address) in its environment.
``distributed_session`` reads them, joins the process group (gloo on CPU, nccl on GPU) and
yields a ``DistContext``; without those variables it yields the single-process context, whose
collectives are no-ops, so the trainer has one code path.

The batch rule: ``train.batch_size`` is the *global* batch. Every process draws the same seeded
permutation of the training sequences each epoch (so no sampler state has to be exchanged, and
a new epoch reshuffles like DistributedSampler.set_epoch), cuts it into the same global batches
as a single process would, and takes its contiguous ``batch_size / world_size`` share of each.
Each process scales its mean loss by its share of the global batch's tokens, so DDP's gradient
average equals the gradient of the global batch's mean loss: N processes take the steps one
process would, up to the order of floating-point sums.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from moerec import MoerecError
from moerec.evaluation import RoutingSummary
from moerec.evaluation.routing import LayerRouting

T = TypeVar("T")

_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class DistributedError(MoerecError):
    """Data-parallel training cannot run as configured."""


@dataclass(frozen=True)
class Shard:
    """One process's share of a global batch."""

    rows: np.ndarray  # (b,) training-sequence rows this process trains on
    loss_weight: float  # multiplier of this process's mean loss (see DistContext.shard)
    stand_in: bool = False  # the share was empty: ``rows`` is a placeholder with weight 0


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job. The default is a plain single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # "gloo" or "nccl" once a process group is joined

    @property
    def is_main(self) -> bool:
        """Rank 0 evaluates, logs, checkpoints, shows progress and saves the model."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def device(self) -> torch.device:
        if self.backend == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def local_batch_size(self, global_batch_size: int) -> int:
        """Sequences per process and step; refuses a global batch the processes cannot share."""
        if global_batch_size % self.world_size:
            lower = global_batch_size - global_batch_size % self.world_size
            raise DistributedError(
                f"train.batch_size ({global_batch_size}) is the global batch and must be "
                f"divisible by the number of processes ({self.world_size}), so that each one "
                f"trains on the same share; use {lower or self.world_size} or "
                f"{lower + self.world_size}"
            )
        return global_batch_size // self.world_size

    def shard(self, rows: np.ndarray, tokens: np.ndarray) -> Shard:
        """This process's contiguous share of a global batch. rows, tokens: (B,).

        ``tokens`` counts each row's positions that carry a loss. Weight = local tokens ·
        world size / global tokens: DDP averages gradients over processes, so the weighted
        mean losses add up to the global batch's mean loss. A short final batch may leave a
        process nothing; it then trains on a stand-in row with weight 0, because every process
        must take part in every gradient all-reduce.
        """
        if not self.is_distributed:
            return Shard(rows, 1.0)
        mine = np.array_split(np.arange(rows.shape[0]), self.world_size)[self.rank]  # (b,)
        if mine.size == 0:
            return Shard(rows[:1], 0.0, stand_in=True)
        weight = float(tokens[mine].sum()) * self.world_size / float(tokens.sum())
        return Shard(rows[mine], weight)

    def wrap(self, module: nn.Module) -> nn.Module:
        """DistributedDataParallel around ``module`` (itself when single-process).

        ``find_unused_parameters`` stays off: experts are stacked (E, …) tensors, so a layer's
        expert weights take part in every step where any token is routed, even when one
        expert gets no token (its slice of the gradient is zero), and every other parameter
        is used on every step (DDP's own check agrees: with the flag on, it warns that it
        found no unused parameter). The only buffers are the routers' balancing biases
        (``moe_balance: bias``), which every process updates alike from all-reduced loads, so
        DDP's per-step buffer broadcast from rank 0 changes nothing.
        """
        if not self.is_distributed:
            return module
        device_ids = [self.local_rank] if self.backend == "nccl" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum each value over all processes (float64)."""
        if not self.is_distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def decide(self, flag: bool) -> bool:
        """Rank 0's flag, on every process (e.g. "stop early")."""
        if not self.is_distributed:
            return flag
        tensor = torch.tensor([int(flag)], dtype=torch.int64, device=self.device)
        dist.broadcast(tensor, src=0)
        return bool(tensor.item())

    def run_on_main(self, work: Callable[[], T]) -> T:
        """Run ``work`` on rank 0 and hand its result (or its error) to every process.

        The other processes wait meanwhile. Their copy is unpickled from rank 0's, so the
        result must be picklable; keep tensors in it on the CPU.
        """
        if not self.is_distributed:
            return work()
        message: list[Any] = [None]
        failure: BaseException | None = None
        if self.is_main:
            try:
                message[0] = ("ok", work())
            except MoerecError as exc:  # the same error, with the same one-line message
                failure, message[0] = exc, ("error", exc)
            except Exception as exc:
                failure = exc
                message[0] = ("error", DistributedError(f"rank 0 failed: {exc!r}"))
        dist.broadcast_object_list(message, src=0, device=self.device)
        if failure is not None:
            raise failure
        status, payload = message[0]
        if status == "error":
            raise payload
        return payload


SINGLE_PROCESS = DistContext()


def torchrun_environment(environ: Mapping[str, str]) -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's variables, or None outside torchrun."""
    present = [name for name in _TORCHRUN_VARIABLES if name in environ]
    if not present:
        return None
    if len(present) < len(_TORCHRUN_VARIABLES):
        missing = sorted(set(_TORCHRUN_VARIABLES) - set(present))
        raise DistributedError(
            f"{', '.join(missing)} not set: start data-parallel training with torchrun, which "
            "sets RANK, WORLD_SIZE and LOCAL_RANK (or unset them to train in one process)"
        )
    try:
        rank, world, local = (int(environ[name]) for name in _TORCHRUN_VARIABLES)
    except ValueError:
        raise DistributedError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
    if not (0 <= rank < world and local >= 0):
        raise DistributedError(f"RANK {rank} is outside WORLD_SIZE {world}")
    return rank, world, local


@contextmanager
def distributed_session(environ: Mapping[str, str] | None = None) -> Iterator[DistContext]:
    """Join torchrun's process group for the duration of the block; leave it afterwards.

    Outside torchrun (or with one process) nothing is initialised: the single-process context.
    The rendezvous address comes from torchrun (MASTER_ADDR, MASTER_PORT: ``env://``).
    """
    found = torchrun_environment(os.environ if environ is None else environ)
    if found is None or found[1] == 1:
        yield SINGLE_PROCESS
        return
    rank, world, local = found
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    try:
        yield DistContext(rank=rank, world_size=world, local_rank=local, backend=backend)
    finally:
        dist.destroy_process_group()


def reduce_routing(
    summary: RoutingSummary, ctx: DistContext, num_layers: int, num_experts: int
) -> RoutingSummary:
    """Every process's routing totals added up (one all-reduce of an (L, E + 4) table).

    The sizes come from the config, not the summary, because a process may have seen no
    batch at all in a short epoch.
    """
    if not ctx.is_distributed or num_layers == 0:
        return summary
    table = torch.zeros(num_layers, num_experts + 4, dtype=torch.float64)  # (L, E + 4)
    for i, layer in enumerate(summary.layers):
        table[i, :num_experts] = layer.expert_counts.detach().cpu().double()
        table[i, num_experts:] = torch.tensor(
            [layer.tokens, layer.slots, layer.dropped, layer.entropy_sum], dtype=torch.float64
        )
    table = table.to(ctx.device)
    dist.all_reduce(table)
    table = table.cpu()
    return RoutingSummary(
        layers=[
            LayerRouting(
                expert_counts=row[:num_experts].round().long(),
                tokens=int(row[num_experts]),
                slots=int(row[num_experts + 1]),
                dropped=int(row[num_experts + 2]),
                entropy_sum=float(row[num_experts + 3]),
            )
            for row in table
        ]
    )
