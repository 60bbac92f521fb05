"""The sparse Mixture-of-Experts feed-forward layer.

Dispatch (after megablocks): flatten every token's expert slots, sort the slots by expert, cut
the sorted list into one contiguous slice per expert, run each expert on its slice only, and
scatter the weighted results back with ``index_add_``. Memory is O(slots × D); no dense
(tokens × experts × capacity) one-hot tensor is ever built, and no expert touches a token that
was not routed to it. ``reference.py`` holds a per-token loop that must give the same answer.
Shared experts (DeepSeekMoE), when configured, run on every token beside the routed ones.

A handful of tokens at inference (one request: its history in the first block, one position
in the last) takes a shorter path: each slot's expert weights are gathered and all slots run in
one batched matmul. The sort, the per-expert loop and the scatter cost a fixed few dozen small
operations, which dominate there; the arithmetic is the same k experts per token.

Shapes: N tokens, D width, E experts, K slots per token, S kept slots (≤ N·K).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from moerec.model.experts import Experts, FeedForward
from moerec.model.router import Router, Routing, balance_loss, z_loss


@dataclass(frozen=True)
class RoutingStats:
    """What one MoE layer did on one batch. Returned explicitly; nothing is kept in globals.

    Counts are detached integers-as-tensors; the two losses carry gradients.
    """

    expert_counts: Tensor  # (E,) slots routed to each expert (demand, before capacity)
    dropped_slots: Tensor  # () slots over capacity, passed through the residual instead
    num_tokens: int
    num_slots: int  # used slots (= N·k for top-k routing)
    entropy_sum: Tensor  # () sum over tokens of the router distribution's entropy (nats)
    balance_loss: Tensor  # () Switch loss, 1.0 when balanced; 0 without gradients or with bias
    z_loss: Tensor  # (); 0 without gradients
    experts: Tensor  # (N, K) expert ids per token
    weights: Tensor  # (N, K) combine weights (0 for unused slots)
    mask: Tensor  # (N, K) slot in use

    @property
    def experts_per_token(self) -> float:
        return self.num_slots / max(self.num_tokens, 1)

    @property
    def entropy(self) -> float:
        return float(self.entropy_sum) / max(self.num_tokens, 1)


def expert_capacity(capacity_factor: float, num_slots: int, num_experts: int) -> int | None:
    """Slots each expert may take: ``ceil(cf · slots / E)``; None when cf == 0 (never drop)."""
    if capacity_factor <= 0:
        return None
    return max(1, math.ceil(capacity_factor * num_slots / num_experts))


# Inference gathers weights per slot instead of sorting while each gathered copy of an expert
# weight matrix (slots × D × F values) stays within this many values (2 MiB in fp32): 64 slots
# at D = 64, F = 128, where benchmarks/speed.py measured the gathered path taking about 40%
# less time per layer call. The sort's cost is fixed, the copies' grows with slots and expert
# size, so past some budget sorting is cheaper.
GATHER_BUDGET = 2**19


@dataclass(frozen=True)
class DispatchPlan:
    """Kept slots sorted by expert: expert e owns rows [offset_e, offset_e + sizes[e])."""

    tokens: Tensor  # (S,) token of each kept slot, grouped by expert
    weights: Tensor  # (S,) combine weight of each kept slot
    sizes: list[int]  # (E,) kept slots per expert
    demand: Tensor  # (E,) routed slots per expert before capacity


def plan_dispatch(routing: Routing, num_experts: int, capacity: int | None) -> DispatchPlan:
    """Sort used slots by expert; drop the lowest-priority overflow when capacity is set.

    Slots are flattened choice-major (every token's first choice, then every second choice…), and
    the sort is stable, so an expert over capacity drops second choices before first choices and,
    within a choice, later tokens before earlier ones (GShard's priority).
    """
    num_tokens, _ = routing.experts.shape
    slot_expert = routing.experts.T.reshape(-1)  # (K·N,) choice-major
    slot_weight = routing.weights.T.reshape(-1)  # (K·N,)
    slot_token = torch.arange(num_tokens, device=slot_expert.device).repeat(
        routing.experts.shape[1]
    )  # (K·N,)
    used = routing.mask.T.reshape(-1)  # (K·N,)
    slot_expert, slot_weight, slot_token = slot_expert[used], slot_weight[used], slot_token[used]

    order = torch.argsort(slot_expert, stable=True)  # (U,) grouped by expert
    sorted_expert = slot_expert[order]  # (U,)
    demand = torch.bincount(sorted_expert, minlength=num_experts)  # (E,)
    kept = demand
    if capacity is not None:
        starts = demand.cumsum(0) - demand  # (E,) first sorted row of each expert
        rank = torch.arange(order.numel(), device=order.device) - starts[sorted_expert]  # (U,)
        order = order[rank < capacity]  # (S,)
        kept = demand.clamp(max=capacity)
    return DispatchPlan(
        tokens=slot_token[order],
        weights=slot_weight[order],
        sizes=kept.tolist(),
        demand=demand,
    )


def run_experts(experts: Experts, x: Tensor, plan: DispatchPlan) -> Tensor:
    """Gather each expert's tokens, run it on its slice, scatter back weighted. x: (N, D)."""
    x_sorted = x[plan.tokens]  # (S, D)
    outputs = [
        experts.expert_forward(e, chunk)  # (n_e, D)
        for e, chunk in enumerate(x_sorted.split(plan.sizes))
        if chunk.shape[0]
    ]
    y = x.new_zeros(x.shape)  # (N, D)
    if outputs:
        y_sorted = torch.cat(outputs) * plan.weights.to(x.dtype).unsqueeze(1)  # (S, D)
        y.index_add_(0, plan.tokens, y_sorted)
    return y


class MoEFeedForward(nn.Module):
    """Router + E experts: each token is processed by its chosen experts only.

    With ``num_shared_experts`` S > 0 every token also passes through S always-on experts of the
    same width, added with weight 1 (DeepSeekMoE): common knowledge lives there once instead of
    in every routed expert. They are one FFN S·F wide, which computes exactly the sum of S
    F-wide experts (their output biases add up to one), as DeepSeek-V3's code stores them.
    Routing statistics stay about the routed experts.
    """

    def __init__(
        self,
        hidden_size: int,
        ffn_hidden_size: int,
        num_experts: int,
        dropout: float,
        router_mode: str = "topk",
        top_k: int = 2,
        top_p: float = 0.6,
        min_k: int = 2,
        max_k: int = 4,
        capacity_factor_train: float = 0.0,
        capacity_factor_eval: float = 0.0,
        num_shared_experts: int = 0,
        balance: str = "aux_loss",
        bias_update_rate: float = 0.001,
    ) -> None:
        super().__init__()
        if num_shared_experts < 0:
            raise ValueError(f"num_shared_experts must be >= 0, got {num_shared_experts}")
        self.num_experts = num_experts
        self.num_shared_experts = num_shared_experts
        self.router = Router(
            hidden_size,
            num_experts,
            router_mode,
            top_k,
            top_p,
            min_k,
            max_k,
            balance=balance,
            bias_update_rate=bias_update_rate,
        )
        self.experts = Experts(num_experts, hidden_size, ffn_hidden_size, dropout)
        # Created only when asked for, so a model without them has today's parameters and
        # draws today's random numbers at construction.
        self.shared_experts = (
            FeedForward(hidden_size, num_shared_experts * ffn_hidden_size, dropout)
            if num_shared_experts
            else None
        )
        self.capacity_factor_train = capacity_factor_train
        self.capacity_factor_eval = capacity_factor_eval
        # 0 turns the gathered path off
        self.gather_max_slots = GATHER_BUDGET // (hidden_size * ffn_hidden_size)

    @property
    def capacity_factor(self) -> float:
        return self.capacity_factor_train if self.training else self.capacity_factor_eval

    def set_routing(
        self,
        mode: str,
        top_k: int,
        top_p: float,
        min_k: int,
        max_k: int,
        capacity_factor_eval: float,
    ) -> None:
        """Route differently from now on, with the same weights: the router scores every
        expert, so any selection rule over its probabilities is defined on a trained layer.
        Values as ModelConfig validates them (``SequentialRecommender.reroute`` does)."""
        router = self.router
        router.mode, router.top_k, router.top_p = mode, top_k, top_p
        router.min_k, router.max_k = min_k, max_k
        self.capacity_factor_eval = capacity_factor_eval

    def forward(self, x: Tensor) -> tuple[Tensor, RoutingStats]:
        """x: (N, D) non-padding tokens -> (N, D), RoutingStats."""
        routing = self.router(x)
        if self._gathers(routing):
            y, demand = self._run_gathered(x, routing)
            num_slots = kept = routing.experts.numel()  # top-k: every slot used, none dropped
        else:
            num_slots = int(routing.mask.sum())
            capacity = expert_capacity(self.capacity_factor, num_slots, self.num_experts)
            plan = plan_dispatch(routing, self.num_experts, capacity)
            y = run_experts(self.experts, x, plan)
            demand, kept = plan.demand, sum(plan.sizes)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        return y, self._stats(routing, demand, kept, num_slots)

    def _gathers(self, routing: Routing) -> bool:
        """Whether to take the gathered path: inference, every slot used (top-k), nothing to
        drop, and few slots."""
        return (
            not self.training
            and not torch.is_grad_enabled()
            and self.router.mode == "topk"
            and self.capacity_factor <= 0
            and routing.experts.numel() <= self.gather_max_slots
        )

    def _run_gathered(self, x: Tensor, routing: Routing) -> tuple[Tensor, Tensor]:
        """(N, D) output and (E,) slots per expert, each slot run on its expert's gathered
        weights."""
        num_tokens, k = routing.experts.shape
        slot_expert = routing.experts.reshape(-1)  # (N·K,) token-major
        y_slots = self.experts.slots_forward(x.repeat_interleave(k, dim=0), slot_expert)
        weights = routing.weights.to(x.dtype).unsqueeze(-1)  # (N, K, 1)
        y = (y_slots.view(num_tokens, k, -1) * weights).sum(dim=1)  # (N, D)
        demand = torch.bincount(slot_expert, minlength=self.num_experts)  # (E,)
        return y, demand

    def _stats(
        self, routing: Routing, demand: Tensor, kept_slots: int, num_slots: int
    ) -> RoutingStats:
        with torch.no_grad():
            log_probs = routing.probs.clamp_min(1e-12).log()
            entropy_sum = -(routing.probs * log_probs).sum()
        # The losses exist to be back-propagated; without gradients (serving, evaluation)
        # they would be a dozen wasted operations per layer on every forward pass.
        needs_losses = torch.is_grad_enabled()
        zero = routing.logits.new_zeros(())
        # Bias balancing replaces the Switch loss (DeepSeek-V3): balance without a gradient
        # that competes with the task loss.
        balance = (
            balance_loss(routing.probs, routing.experts, routing.mask)
            if needs_losses and self.router.balance == "aux_loss"
            else None
        )
        return RoutingStats(
            expert_counts=demand,
            dropped_slots=demand.sum() - demand.new_tensor(kept_slots),
            num_tokens=routing.experts.shape[0],
            num_slots=num_slots,
            entropy_sum=entropy_sum,
            balance_loss=balance if balance is not None else zero,
            z_loss=z_loss(routing.logits) if needs_losses else zero,
            experts=routing.experts.detach(),
            weights=routing.weights.detach(),
            mask=routing.mask,
        )


class DenseFeedForward(nn.Module):
    """A dense FFN with the MoE layer's call signature, so blocks need no special case."""

    def __init__(self, hidden_size: int, ffn_hidden_size: int, dropout: float) -> None:
        super().__init__()
        self.ffn = FeedForward(hidden_size, ffn_hidden_size, dropout)

    def forward(self, x: Tensor) -> tuple[Tensor, RoutingStats | None]:
        """x: (N, D) -> (N, D), no routing."""
        return self.ffn(x), None
