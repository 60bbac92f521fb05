"""A deliberately plain MoE forward: one token, one slot at a time.

It exists only to be obviously right. Tests compare the fast sorted dispatch in ``moe.py``
against it; it is never used for training or serving.
"""

from __future__ import annotations

import torch
from torch import Tensor

from moerec.model.moe import MoEFeedForward, expert_capacity


def reference_moe_forward(layer: MoEFeedForward, x: Tensor) -> Tensor:
    """x: (N, D) -> (N, D), same routing and capacity rule as the fast path."""
    routing = layer.router(x)
    num_tokens, num_slots_per_token = routing.experts.shape
    capacity = expert_capacity(layer.capacity_factor, int(routing.mask.sum()), layer.num_experts)
    taken = [0] * layer.num_experts
    y = torch.zeros_like(x)
    for choice in range(num_slots_per_token):  # first choices outrank second choices
        for token in range(num_tokens):
            if not routing.mask[token, choice]:
                continue
            expert = int(routing.experts[token, choice])
            if capacity is not None and taken[expert] >= capacity:
                continue
            taken[expert] += 1
            out = layer.experts.expert_forward(expert, x[token : token + 1])  # (1, D)
            y[token] += routing.weights[token, choice].to(x.dtype) * out[0]
    if layer.shared_experts is not None:
        y = y + layer.shared_experts(x)
    return y
