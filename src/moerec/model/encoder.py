"""Causal Transformer blocks whose feed-forward is dense or a sparse MoE layer.

Shapes: B batch, T positions, D width, H heads, hs = D / H, N non-padding tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moerec.config import ModelConfig
from moerec.model.dropout import Dropout
from moerec.model.moe import DenseFeedForward, MoEFeedForward, RoutingStats


def attention_mask(token_mask: Tensor) -> Tensor:
    """Causal mask that also hides padding keys. token_mask: (B, T) -> (B, 1, T, T) bool.

    A position always sees itself, so padding rows are never empty (an all-masked row would make
    the softmax NaN); padding outputs are discarded anyway.
    """
    _, seq_len = token_mask.shape
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=token_mask.device).tril()
    diagonal = torch.eye(seq_len, dtype=torch.bool, device=token_mask.device)
    visible = causal & token_mask[:, None, None, :]  # (B, 1, T, T)
    return visible | diagonal


class CausalSelfAttention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, attention_dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.attention_dropout = Dropout(attention_dropout)

    def forward(self, x: Tensor, mask: Tensor, last_only: bool = False) -> Tensor:
        """x: (B, T, D), mask: (B, 1, T, T) -> (B, T, D), or (B, 1, D) with ``last_only``.

        ``last_only`` asks only the last position's question (its keys and values still come
        from every position): all that scoring a user needs from the final block.
        """
        batch, seq_len, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)  # 3 × (B, T, D)
        head_shape = (batch, seq_len, self.num_heads, width // self.num_heads)
        q = q.view(head_shape).transpose(1, 2)  # (B, H, T, hs)
        k = k.view(head_shape).transpose(1, 2)  # (B, H, T, hs)
        v = v.view(head_shape).transpose(1, 2)  # (B, H, T, hs)
        if last_only:
            q, mask = q[:, :, -1:], mask[:, :, -1:]  # (B, H, 1, hs), (B, 1, 1, T)
        if self.training and self.attention_dropout.p > 0:
            # SDPA's own dropout draws with bernoulli_, several times slower on CPU.
            scores = (q @ k.transpose(-2, -1)) * k.shape[-1] ** -0.5  # (B, H, T, T)
            weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
            y = self.attention_dropout(weights) @ v  # (B, H, T, hs)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, hs)
        y = y.transpose(1, 2).reshape(batch, q.shape[2], width)  # (B, T or 1, D)
        return self.proj(y)


def build_feed_forward(config: ModelConfig) -> MoEFeedForward | DenseFeedForward:
    """A one-expert model is dense: same width, no router (a 1-expert MoE equals it exactly)."""
    if not config.is_moe:
        return DenseFeedForward(config.hidden_size, config.ffn_hidden_size, config.dropout)
    return MoEFeedForward(
        hidden_size=config.hidden_size,
        ffn_hidden_size=config.ffn_hidden_size,
        num_experts=config.moe_num_experts,
        dropout=config.dropout,
        router_mode=config.moe_router,
        top_k=config.moe_top_k,
        top_p=config.moe_top_p,
        min_k=config.moe_min_k,
        max_k=config.moe_max_k,
        capacity_factor_train=config.moe_capacity_factor_train,
        capacity_factor_eval=config.moe_capacity_factor_eval,
        num_shared_experts=config.moe_num_shared_experts,
        balance=config.moe_balance,
        bias_update_rate=config.moe_bias_update_rate,
    )


class Block(nn.Module):
    """Pre-norm block: x + attn(LN(x)), then x + FFN(LN(x)) on non-padding tokens only."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(config.hidden_size)
        self.attn = CausalSelfAttention(
            config.hidden_size, config.num_heads, config.attention_dropout
        )
        self.norm_ffn = nn.LayerNorm(config.hidden_size)
        self.ffn = build_feed_forward(config)
        self.dropout = Dropout(config.dropout)

    def forward(
        self, x: Tensor, mask: Tensor, token_mask: Tensor, last_only: bool = False
    ) -> tuple[Tensor, RoutingStats | None]:
        """x: (B, T, D), mask: (B, 1, T, T), token_mask: (B, T) -> (B, T, D), routing stats.

        With ``last_only`` the block computes the last position alone: -> (B, 1, D).
        """
        attended = self.attn(self.norm_attn(x), mask, last_only)  # (B, T or 1, D)
        if last_only:
            x, token_mask = x[:, -1:], token_mask[:, -1:]
        x = x + self.dropout(attended)
        tokens = self.norm_ffn(x)[token_mask]  # (N, D): experts never see padding
        y, stats = self.ffn(tokens)  # (N, D)
        update = x.new_zeros(x.shape)  # (B, T, D)
        update[token_mask] = y
        return x + self.dropout(update), stats
