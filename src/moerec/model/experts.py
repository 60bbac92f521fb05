"""Feed-forward networks: one dense FFN, and E experts stored as stacked weights."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moerec.model.dropout import Dropout


class FeedForward(nn.Module):
    """The dense position-wise FFN: Linear(D→F), GELU, dropout, Linear(F→D)."""

    def __init__(self, hidden_size: int, ffn_hidden_size: int, dropout: float) -> None:
        super().__init__()
        self.fc_in = nn.Linear(hidden_size, ffn_hidden_size)
        self.fc_out = nn.Linear(ffn_hidden_size, hidden_size)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., D) -> (..., D)."""
        return self.fc_out(self.dropout(F.gelu(self.fc_in(x))))


class Experts(nn.Module):
    """E independent FFNs with the dense FFN's shape, stored as (E, ...) tensors.

    Stacked storage lets dispatch slice expert e's weights without a ModuleList, and makes the
    parameter count exactly E times the dense FFN's.
    """

    def __init__(
        self, num_experts: int, hidden_size: int, ffn_hidden_size: int, dropout: float
    ) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.w_in = nn.Parameter(torch.empty(num_experts, hidden_size, ffn_hidden_size))
        self.b_in = nn.Parameter(torch.zeros(num_experts, ffn_hidden_size))
        self.w_out = nn.Parameter(torch.empty(num_experts, ffn_hidden_size, hidden_size))
        self.b_out = nn.Parameter(torch.zeros(num_experts, hidden_size))
        self.dropout = Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's init, per expert, for standalone use; SequentialRecommender re-initialises
        # every weight (experts included) with N(0, 0.02), as it does its dense layers.
        for w in (self.w_in, self.w_out):
            bound = 1.0 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound, bound)

    def expert_forward(self, e: int, x: Tensor) -> Tensor:
        """Run expert e on its tokens. x: (n_e, D) -> (n_e, D)."""
        h = F.gelu(torch.addmm(self.b_in[e], x, self.w_in[e]))  # (n_e, F)
        return torch.addmm(self.b_out[e], self.dropout(h), self.w_out[e])  # (n_e, D)

    def slots_forward(self, x: Tensor, experts: Tensor) -> Tensor:
        """Row i of x through expert ``experts[i]``, all rows in one batched matmul with each
        row's weights gathered; no dropout, so for inference only. x: (S, D) -> (S, D)."""

        def pick(weight: Tensor) -> Tensor:  # index_select: a quarter of indexing's overhead
            return weight.index_select(0, experts)

        rows = x.unsqueeze(1)  # (S, 1, D)
        h = F.gelu(torch.baddbmm(pick(self.b_in).unsqueeze(1), rows, pick(self.w_in)))
        return torch.baddbmm(pick(self.b_out).unsqueeze(1), h, pick(self.w_out)).squeeze(1)

    def load_dense(self, e: int, ffn: FeedForward) -> None:
        """Copy a dense FFN's weights into expert e (used to check 1-expert MoE == dense)."""
        with torch.no_grad():
            self.w_in[e].copy_(ffn.fc_in.weight.T)
            self.b_in[e].copy_(ffn.fc_in.bias)
            self.w_out[e].copy_(ffn.fc_out.weight.T)
            self.b_out[e].copy_(ffn.fc_out.bias)
