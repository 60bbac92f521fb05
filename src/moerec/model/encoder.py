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


def rotary_tables(max_len: int, head_size: int) -> tuple[Tensor, Tensor]:
    """RoPE's (cos, sin), each (max_len, head_size): slot t turns pair i by t / 10000^(2i/hs).

    Rotating queries and keys by their slots makes each attention score depend on how far apart
    the two items are, not where they sit: a position in training and the last position in
    serving then read their histories the same way.
    """
    inverse_frequency = 1.0 / 10000 ** (torch.arange(0, head_size, 2).float() / head_size)
    angles = torch.arange(max_len).float()[:, None] * inverse_frequency[None, :]  # (L, hs/2)
    angles = torch.cat([angles, angles], dim=-1)  # (L, hs)
    return angles.cos(), angles.sin()


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: (B, H, T, hs), cos/sin: (T, hs) -> x with each channel pair (i, i + hs/2) rotated."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


class CausalSelfAttention(nn.Module):
    rotary_cos: Tensor
    rotary_sin: Tensor

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        attention_dropout: float,
        rotary_max_len: int = 0,
    ) -> None:
        """``rotary_max_len`` > 0 turns on RoPE for histories up to that long."""
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.attention_dropout = Dropout(attention_dropout)
        self.rotary = rotary_max_len > 0
        if self.rotary:
            cos, sin = rotary_tables(rotary_max_len, hidden_size // num_heads)
            # Not saved: rebuilt from the config, so artefacts stay free of derived tables.
            self.register_buffer("rotary_cos", cos, persistent=False)
            self.register_buffer("rotary_sin", sin, persistent=False)

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
        if self.rotary:
            cos, sin = self.rotary_cos[:seq_len], self.rotary_sin[:seq_len]  # (T, hs)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
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


# Values the filter's kernel cache may hold per block: all shapes of hidden size 64 and
# length 50 (2.8M), not every shape of much larger models.
_KERNEL_CACHE = 4_000_000


class CausalFilter(nn.Module):
    """BSARec's frequency mixing beside attention, made causal.

    BSARec splits a history into its low frequencies (an FFT over the whole sequence, which lets
    every position see the future) and the rest, and re-weights the rest by a learned beta. Here
    the low part of position t is a weighted mean of the items up to t, weight decay^age per
    channel (an exponential moving average over non-padding items only), so that every position
    can be trained at once, as the rest of the model is:

        low_t = sum_{s<=t} decay^(t-s) x_s / sum_{s<=t} decay^(t-s)
        out_t = low_t + beta (x_t - low_t)

    beta > 1 sharpens towards the latest item, beta < 1 smooths towards the history's mean.
    Decays start spread over 0.3..0.95 (short to long memory) and beta at 1; both are learned
    per channel, and neither draws random numbers, so adding the filter leaves every other
    weight's initial value unchanged.
    """

    age: Tensor

    def __init__(self, hidden_size: int, max_len: int) -> None:
        super().__init__()
        self.decay_logit = nn.Parameter(torch.linspace(0.3, 0.95, hidden_size).logit())  # (D,)
        self.beta = nn.Parameter(torch.ones(hidden_size))  # (D,)
        slots = torch.arange(max_len)
        self.register_buffer("age", slots[:, None] - slots[None, :], persistent=False)  # (L, L)
        self._kernels: dict[tuple[int, bool], Tensor] = {}
        self._kernels_stamp: tuple[int, int] | None = None

    def kernel(self, seq_len: int, last_only: bool = False) -> Tensor:
        """(D, T or 1, T): decay^(t - s) where s <= t, else 0.

        Without gradients (serving, evaluation) a kernel depends on the decays and the shape
        alone, so it is kept per shape until the decays change (in place or replaced): that
        saves several operations per block on every forward pass. Each shape is built exactly
        as with gradients, so cached and fresh kernels agree bit for bit. Parameters made under
        ``torch.inference_mode`` keep no version to watch, so those are never cached.
        """
        if torch.is_grad_enabled() or self.decay_logit.is_inference():
            return self._build_kernel(seq_len, last_only)
        stamp = (self.decay_logit._version, self.decay_logit.data_ptr())
        if stamp != self._kernels_stamp:
            self._kernels, self._kernels_stamp = {}, stamp
        kernel = self._kernels.get((seq_len, last_only))
        if kernel is None:
            kernel = self._build_kernel(seq_len, last_only)
            if sum(k.numel() for k in self._kernels.values()) + kernel.numel() <= _KERNEL_CACHE:
                self._kernels[seq_len, last_only] = kernel
        return kernel

    def _build_kernel(self, seq_len: int, last_only: bool) -> Tensor:
        age = self.age[:seq_len, :seq_len]  # (T, T): t - s
        if last_only:
            age = age[-1:]  # (1, T)
        decay = self.decay_logit.sigmoid()[:, None, None]  # (D, 1, 1)
        return decay ** age.clamp(min=0) * (age >= 0)  # (D, T or 1, T), causal

    def forward(self, x: Tensor, token_mask: Tensor, last_only: bool = False) -> Tensor:
        """x: (B, T, D), token_mask: (B, T) -> (B, T, D), or (B, 1, D) with ``last_only``."""
        kernel = self.kernel(x.shape[1], last_only)  # (D, T or 1, T)
        present = token_mask.to(x.dtype)  # (B, T)
        total = torch.einsum("dts,bsd->btd", kernel, x * present[..., None])
        weight = torch.einsum("dts,bs->btd", kernel, present)
        low = total / weight.clamp_min(1e-12)  # (B, T or 1, D); padding rows come out 0
        latest = x[:, -1:] if last_only else x
        return low + self.beta * (latest - low)


class FourierFilter(nn.Module):
    """BSARec's filter as published: the low part of a history is what survives when an FFT
    over the whole ``max_len`` window keeps only its ``cutoff`` lowest frequencies, and

        out = low + beta (x - low)

    Every position's low part is computed from the whole window, the items after it included,
    so a model with this filter may only be trained on its last position (prefix examples).
    Histories are zero-filled on the left to ``max_len`` first, so the cutoff means the same
    frequency whatever width a batch was trimmed to. beta starts at 1 (BSARec draws it from
    N(0, 1), squared); it is learned per channel.
    """

    mask: Tensor

    def __init__(self, hidden_size: int, max_len: int, cutoff: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.beta = nn.Parameter(torch.ones(hidden_size))  # (D,)
        keep = torch.zeros(max_len // 2 + 1, 1)
        keep[:cutoff] = 1.0
        self.register_buffer("mask", keep, persistent=False)  # (L/2 + 1, 1)

    def forward(self, x: Tensor, token_mask: Tensor, last_only: bool = False) -> Tensor:
        """x: (B, T, D), token_mask: (B, T) -> (B, T, D), or (B, 1, D) with ``last_only``."""
        seq_len = x.shape[1]
        x = x * token_mask[..., None].to(x.dtype)  # padding carries no signal
        window = F.pad(x, (0, 0, self.max_len - seq_len, 0)).float()  # (B, L, D)
        spectrum = torch.fft.rfft(window, dim=1, norm="ortho") * self.mask
        low = torch.fft.irfft(spectrum, n=self.max_len, dim=1, norm="ortho")[:, -seq_len:]
        low = low.to(x.dtype)  # (B, T, D)
        if last_only:
            x, low = x[:, -1:], low[:, -1:]
        return low + self.beta * (x - low)


def build_filter(config: ModelConfig) -> CausalFilter | FourierFilter | None:
    if config.filter_mix == 0:
        return None
    if config.filter_kind == "fourier":
        return FourierFilter(config.hidden_size, config.max_len, config.filter_cutoff)
    return CausalFilter(config.hidden_size, config.max_len)


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
    """Pre-norm block: x + attn(LN(x)) (mixed with a filter of LN(x) when ``filter_mix`` > 0),
    then x + FFN(LN(x)) on non-padding tokens only. Post-norm (``block_norm: post``):
    LN(x + attn(x)), then LN(x + FFN(x)), the same layers in another order."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(config.hidden_size)
        self.attn = CausalSelfAttention(
            config.hidden_size,
            config.num_heads,
            config.attention_dropout,
            rotary_max_len=config.max_len if config.position_encoding == "rotary" else 0,
        )
        self.norm_ffn = nn.LayerNorm(config.hidden_size)
        self.ffn = build_feed_forward(config)
        self.dropout = Dropout(config.dropout)
        self.filter_mix = config.filter_mix
        self.filter = build_filter(config)
        self.post_norm = config.block_norm == "post"

    def forward(
        self, x: Tensor, mask: Tensor, token_mask: Tensor, last_only: bool = False
    ) -> tuple[Tensor, RoutingStats | None]:
        """x: (B, T, D), mask: (B, 1, T, T), token_mask: (B, T) -> (B, T, D), routing stats.

        With ``last_only`` the block computes the last position alone: -> (B, 1, D).
        """
        mixed = x if self.post_norm else self.norm_attn(x)
        attended = self.attn(mixed, mask, last_only)  # (B, T or 1, D)
        if self.filter is not None:
            filtered = self.filter(mixed, token_mask, last_only)  # (B, T or 1, D)
            attended = (1 - self.filter_mix) * attended + self.filter_mix * filtered
        if last_only:
            x, token_mask = x[:, -1:], token_mask[:, -1:]
        x = x + self.dropout(attended)
        if self.post_norm:
            x = self.norm_attn(x)
        tokens = (x if self.post_norm else self.norm_ffn(x))[token_mask]  # (N, D): no padding
        y, stats = self.ffn(tokens)  # (N, D)
        update = x.new_zeros(x.shape)  # (B, T, D)
        update[token_mask] = y
        x = x + self.dropout(update)
        return (self.norm_ffn(x) if self.post_norm else x), stats
