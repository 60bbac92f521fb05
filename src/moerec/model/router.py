"""The router: which experts each token uses, with what weight, and the losses that keep it fair.

Dimension letters used in shapes below:
    N  tokens (non-padding positions of the batch, flattened)
    D  model width
    E  experts
    K  expert slots per token (k for top-k routing, max_k for top-p routing)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

BALANCE_MODES = ("aux_loss", "bias")


@dataclass(frozen=True)
class Routing:
    """The router's decision for N tokens.

    Unused slots (top-p routing chose fewer than K experts) have ``mask`` False, weight 0 and
    an arbitrary expert index; dispatch skips them.
    """

    logits: Tensor  # (N, E) fp32
    probs: Tensor  # (N, E) fp32, softmax over all experts
    experts: Tensor  # (N, K) long, by decreasing probability (biased score with bias balancing)
    weights: Tensor  # (N, K) fp32, renormalised over the used slots
    mask: Tensor  # (N, K) bool, slot in use


class Router(nn.Module):
    """Linear scores in fp32, softmax, then top-k or top-p selection with renormalised weights
    (a token routed to a single expert keeps its raw probability as weight).

    fp32 matters because the softmax over experts and the z-loss are sensitive to rounding under
    mixed precision (Switch Transformer, ST-MoE).

    ``balance="bias"`` is DeepSeek-V3's auxiliary-loss-free balancing: a per-expert bias is added
    to the probabilities for choosing experts only (the weights stay the unbiased probabilities),
    and every training-mode forward pass moves it by ``bias_update_rate · sign(mean load −
    load)``, so the next batch sends fewer tokens to overloaded experts. The update happens in
    the forward pass, so it follows every micro-batch, not every optimiser step; under
    torch.distributed the loads are summed over all processes first (every process must run the
    same training forward passes, as DDP requires anyway), so every copy keeps the same bias.
    """

    expert_bias: Tensor | None

    def __init__(
        self,
        hidden_size: int,
        num_experts: int,
        mode: str = "topk",
        top_k: int = 2,
        top_p: float = 0.6,
        min_k: int = 2,
        max_k: int = 4,
        balance: str = "aux_loss",
        bias_update_rate: float = 0.001,
    ) -> None:
        super().__init__()
        if mode not in ("topk", "topp"):
            raise ValueError(f"router mode must be 'topk' or 'topp', got {mode!r}")
        if balance not in BALANCE_MODES:
            raise ValueError(f"balance must be 'aux_loss' or 'bias', got {balance!r}")
        self.num_experts = num_experts
        self.mode = mode
        self.top_k = top_k
        self.top_p = top_p
        self.min_k = min_k
        self.max_k = max_k
        self.balance = balance
        self.bias_update_rate = bias_update_rate
        self.proj = nn.Linear(hidden_size, num_experts, bias=False, dtype=torch.float32)
        # A buffer, not a parameter: the optimiser must not touch it, but the state dict must
        # carry it. None (absent from the state dict) unless balancing by bias, so that models
        # saved before this option load strictly.
        self.register_buffer(
            "expert_bias",
            torch.zeros(num_experts, dtype=torch.float32) if balance == "bias" else None,
        )

    @property
    def slots(self) -> int:
        """K: expert slots per token."""
        return self.max_k if self.mode == "topp" else self.top_k

    def forward(self, x: Tensor) -> Routing:
        """x: (N, D) -> Routing for the N tokens."""
        # Autocast would silently run this matmul in bf16/fp16, so it is switched off here; the
        # weight is upcast too in case the whole model was cast with ``.to(torch.bfloat16)``.
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = F.linear(x.float(), self.proj.weight.float())  # (N, E) fp32
        probs = logits.softmax(dim=-1)  # (N, E)
        bias = self.expert_bias
        if bias is None:
            top_probs, experts = probs.topk(self.slots, dim=-1)  # (N, K) each, sorted descending
        else:
            with torch.no_grad():  # the bias picks experts; it never reaches a gradient
                biased = probs + bias.float()  # (N, E)
                experts = biased.topk(self.slots, dim=-1).indices  # (N, K)
            top_probs = probs.gather(1, experts)  # (N, K) unbiased, in biased order
        if self.mode == "topp":
            mask = top_p_mask(top_probs, self.top_p, self.min_k)  # (N, K)
        else:
            mask = torch.ones_like(top_probs, dtype=torch.bool)
        if bias is not None and self.training:
            self._update_bias(bias, experts, mask)
        kept = top_probs * mask  # (N, K)
        # Renormalise over the chosen experts (Mixtral) — except for a token with a single
        # expert, which keeps its raw probability (Switch): p/p = 1 would give the router no
        # gradient from the task loss.
        several = mask.sum(dim=-1, keepdim=True) > 1  # (N, 1)
        total = torch.where(several, kept.sum(dim=-1, keepdim=True), torch.ones_like(kept[:, :1]))
        weights = kept / total.clamp_min(1e-9)  # (N, K)
        return Routing(logits=logits, probs=probs, experts=experts, weights=weights, mask=mask)

    @torch.no_grad()
    def _update_bias(self, bias: Tensor, experts: Tensor, mask: Tensor) -> None:
        """bias += rate · sign(mean load − load), loads counted over this pass's used slots."""
        load = torch.bincount(experts[mask], minlength=self.num_experts).float()  # (E,)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(load)  # every process must apply the same step
        step = self.bias_update_rate * torch.sign(load.mean() - load)  # (E,)
        bias.add_(step.to(bias.dtype))


def top_p_mask(sorted_probs: Tensor, top_p: float, min_k: int) -> Tensor:
    """Slots of the smallest prefix whose probability mass reaches ``top_p``, at least ``min_k``.

    sorted_probs: (N, K) in routing order (decreasing probability; with bias balancing,
    decreasing biased score, so the prefix follows the bias while its mass stays the true
    probability); K is already the upper clamp (max_k).
    """
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # (N, K) mass of earlier slots
    mask = mass_before < top_p  # a slot is needed while the mass so far is short of p
    mask[:, :min_k] = True
    return mask


def balance_loss(probs: Tensor, experts: Tensor, mask: Tensor) -> Tensor:
    """Switch Transformer load-balance loss ``E * sum_i f_i * P_i`` over non-padding tokens.

    f_i: fraction of used slots sent to expert i; P_i: mean router probability of expert i.
    Equals 1 for perfectly uniform routing; grows as routing concentrates.
    probs: (N, E); experts, mask: (N, K).
    """
    num_experts = probs.shape[-1]
    if probs.shape[0] == 0:
        return probs.new_zeros(())
    counts = torch.zeros(num_experts, dtype=probs.dtype, device=probs.device)
    counts.scatter_add_(0, experts[mask], torch.ones_like(experts[mask], dtype=probs.dtype))
    fraction = counts / counts.sum().clamp_min(1.0)  # (E,)
    mean_prob = probs.mean(dim=0)  # (E,)
    return num_experts * (fraction * mean_prob).sum()


def z_loss(logits: Tensor) -> Tensor:
    """ST-MoE router z-loss: mean squared log-partition; keeps router logits small and stable."""
    if logits.shape[0] == 0:
        return logits.new_zeros(())
    return torch.logsumexp(logits, dim=-1).square().mean()
