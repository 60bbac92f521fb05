"""What a model costs: parameters (total, expert, active per token) and measured FLOPs per request.

The point of a MoE model is that it holds many parameters but spends the compute of few. Counting
FLOPs from a formula would just restate that claim, so FLOPs here are MEASURED: one real request
(encode a full-length history, score the catalogue) runs under ``FlopCounterMode``, and the
feed-forward share is read from its per-module breakdown. A dispatch bug that ran every expert on
every token would show up here as E/k times the expected feed-forward FLOPs.

"Feed-forward" means each block's ``.ffn`` module: for a MoE layer that is router + experts, for a
dense model the dense FFN. It is exactly the part in which a MoE model and its dense baselines
differ, so ``total_params - ffn_params`` is the same for all three variants.

Shared experts (``moe_num_shared_experts``) are part of ``.ffn`` but not of its routed
``Experts``: every token uses them, so they count in full towards the active parameters, and
their FLOPs are measured like any other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from moerec.model import DenseFeedForward, MoEFeedForward, SequentialRecommender
from moerec.model.experts import Experts

_HISTORY_SEED = 20240601  # fixed, so the default request (and its routing) is reproducible


@dataclass(frozen=True)
class ModelCost:
    total_params: int  # all parameters (shared/tied ones counted once)
    expert_params: int  # parameters inside routed Experts modules (all E; shared ones excluded)
    active_params_per_token: float  # total - routed + routed * (routed experts per token / E)
    ffn_params: int  # feed-forward params (router + routed and shared experts, or dense FFN)
    flops_per_request: int  # measured: encode one max_len history + score the catalogue
    ffn_flops_per_request: int  # the part of flops_per_request spent inside the .ffn modules
    experts_per_token: float  # routed, measured on that request, mean over layers; 1.0 dense

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def default_history(model: SequentialRecommender) -> Tensor:
    """A deterministic full-length history (max_len,) of real item ids 1..num_items."""
    config = model.config
    generator = torch.Generator().manual_seed(_HISTORY_SEED)
    return torch.randint(1, config.num_items + 1, (config.max_len,), generator=generator)


def _sdpa_cpu_flops(
    query_shape: tuple[int, ...],
    key_shape: tuple[int, ...],
    value_shape: tuple[int, ...],
    *args: Any,
    out_shape: Any = None,
    **kwargs: Any,
) -> int:
    """FLOPs of softmax(QKᵀ)V, the two batched matmuls. Shapes: (B, H, T, hs).

    torch's counter knows the CUDA attention kernels but not the CPU flash kernel, which would
    make attention free on CPU and understate how cost grows with history length.
    """
    batch, heads, q_len, head_dim = query_shape
    k_len = key_shape[2]
    v_dim = value_shape[3]
    scores = 2 * batch * heads * q_len * k_len * head_dim  # QKᵀ
    mix = 2 * batch * heads * q_len * k_len * v_dim  # (softmax) V
    return scores + mix


def _custom_flop_formulas() -> dict[Any, Any]:
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {} if op is None else {op: _sdpa_cpu_flops}


def _ffn_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Outermost feed-forward modules by qualified name (nested ones would double-count)."""
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if not isinstance(module, (MoEFeedForward, DenseFeedForward)):
            continue
        if any(name.startswith(outer + ".") for outer in found):
            continue
        found[name] = module
    return found


def _count_params(modules: list[nn.Module]) -> int:
    """Parameters of several modules, each tensor once even if modules share it."""
    unique = {id(p): p for module in modules for p in module.parameters()}
    return sum(p.numel() for p in unique.values())


def measure_cost(model: SequentialRecommender, history: Tensor | None = None) -> ModelCost:
    """Count parameters and measure the FLOPs of one request on ``history`` (1-D item ids).

    The request is a batch of one unpadded history in eval mode (no dropout, eval capacity), then
    the last position scored against the whole catalogue — what serving one user costs. The
    model's train/eval flags are restored afterwards, module by module.
    """
    if history is None:
        history = default_history(model)
    if history.dim() != 1 or history.numel() == 0:
        raise ValueError(f"history must be 1-D, non-empty item ids, got {tuple(history.shape)}")
    device = next(model.parameters()).device
    item_seq = history.to(device=device, dtype=torch.long)[None, :]  # (1, T)

    ffn_modules = _ffn_modules(model)
    modes = {module: module.training for module in model.modules()}
    model.eval()
    counter = FlopCounterMode(display=False, custom_mapping=_custom_flop_formulas())
    try:
        with torch.no_grad(), counter:
            user, out = model.encode_users(item_seq)  # (1, D)
            model.score(user)  # (1, V)
    finally:
        for module, training in modes.items():
            module.training = training

    flops_by_module = counter.get_flop_counts()
    # The tracker names modules "<RootClass>.<qualified name>"; a parent's entry already
    # includes its children's FLOPs, so only the outermost FFN modules are summed.
    root = type(model).__name__
    ffn_flops = sum(sum(flops_by_module.get(f"{root}.{name}", {}).values()) for name in ffn_modules)

    # Routed experts only: a shared expert serves every token, so it stays in the always-active
    # remainder (total - routed) rather than being scaled by k/E.
    expert_modules = [m for m in model.modules() if isinstance(m, Experts)]
    total_params = _count_params([model])
    expert_params = _count_params(list(expert_modules))
    if out.routing:
        experts_per_token = sum(s.experts_per_token for s in out.routing) / len(out.routing)
        num_experts = expert_modules[0].num_experts
        active = total_params - expert_params + expert_params * experts_per_token / num_experts
    else:
        experts_per_token = 1.0
        active = float(total_params - expert_params)

    return ModelCost(
        total_params=total_params,
        expert_params=expert_params,
        active_params_per_token=float(active),
        ffn_params=_count_params(list(ffn_modules.values())),
        flops_per_request=int(counter.get_total_flops()),
        ffn_flops_per_request=int(ffn_flops),
        experts_per_token=float(experts_per_token),
    )
