"""Routing statistics accumulated over many batches: expert load, entropy, experts per token."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from moerec.model import RoutingStats


@dataclass
class LayerRouting:
    expert_counts: torch.Tensor  # (E,) slots routed to each expert
    tokens: int = 0
    slots: int = 0
    dropped: int = 0
    entropy_sum: float = 0.0

    @property
    def load(self) -> list[float]:
        """Fraction of slots each expert received (sums to 1)."""
        total = float(self.expert_counts.sum())
        return [float(c) / total if total else 0.0 for c in self.expert_counts]

    @property
    def imbalance(self) -> float:
        """Busiest expert's load over the mean load (1.0 = perfectly balanced)."""
        load = self.load
        return max(load) * len(load) if load else 0.0

    def to_dict(self) -> dict[str, object]:
        num_experts = self.expert_counts.numel()
        return {
            "load": [round(x, 5) for x in self.load],
            "imbalance": round(self.imbalance, 4),
            "experts_per_token": self.slots / self.tokens if self.tokens else 0.0,
            "entropy": self.entropy_sum / self.tokens if self.tokens else 0.0,
            "max_entropy": math.log(num_experts),
            "dropped_fraction": self.dropped / self.slots if self.slots else 0.0,
        }


@dataclass
class RoutingSummary:
    """Per-layer totals; ``add`` takes one forward pass's RoutingStats list."""

    layers: list[LayerRouting] = field(default_factory=list)

    def add(self, stats: list[RoutingStats]) -> None:
        if not self.layers:
            self.layers = [
                LayerRouting(expert_counts=torch.zeros_like(s.expert_counts, device="cpu"))
                for s in stats
            ]
        for layer, s in zip(self.layers, stats, strict=True):
            layer.expert_counts += s.expert_counts.cpu()  # totals on the CPU, like the metrics
            layer.tokens += s.num_tokens
            layer.slots += s.num_slots
            layer.dropped += int(s.dropped_slots)
            layer.entropy_sum += float(s.entropy_sum)

    @property
    def experts_per_token(self) -> float:
        """Mean over layers; 1.0 for a dense model."""
        if not self.layers:
            return 1.0
        return sum(layer.slots / max(layer.tokens, 1) for layer in self.layers) / len(self.layers)

    def to_dict(self) -> dict[str, object]:
        return {
            "experts_per_token": self.experts_per_token,
            "layers": [layer.to_dict() for layer in self.layers],
        }
