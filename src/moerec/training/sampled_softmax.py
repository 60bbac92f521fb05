"""Sampled softmax with logQ correction: the training loss for catalogues too large to score.

Each position's softmax runs over its own next item and N negatives shared by the whole batch,
so one (M, N) matmul against N gathered rows of the item table replaces the (M, V) logits of
the full cross-entropy: a step's memory and time no longer grow with the catalogue, except for
the item table's gradient and optimiser update.

Correction (Bengio & Senécal 2008; Yi et al. 2019, "Sampling-bias-corrected neural modeling for
large corpus item recommendations"): a sampler that favours some items puts them among the
negatives more often than a softmax over the catalogue would weigh them. Subtracting log Q(j),
the expected number of copies of item j in the sample, from every candidate's logit (the
positive's included, as TensorFlow's ``sampled_softmax_loss`` does) removes that bias; with
every item drawn exactly once (Q = 1) the loss is the full cross-entropy.

Accidental hits: a negative equal to the position's own next item would count as both right
and wrong, so its logit becomes -inf (TensorFlow's ``remove_accidental_hits``).

Shapes: M positions that carry a loss, N negatives, D width, V catalogue size (ids 1..V).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from moerec.config import TrainConfig

if TYPE_CHECKING:
    from moerec.model import SequentialRecommender


@dataclass(frozen=True)
class NegativeSample:
    """One step's shared negatives and the log expected counts the correction subtracts."""

    items: Tensor  # (N,) item ids, shared by every position
    log_q: Tensor  # (N,) log expected count of each negative's item in the sample
    positive_log_q: Tensor  # (M,) the same for each position's own next item


def batch_counts(positives: Tensor, items: Tensor) -> Tensor:
    """How often each of ``items`` occurs among ``positives``. (M,), (N,) -> (N,) int64."""
    unique, counts = torch.unique(positives, return_counts=True)  # sorted (U,), (U,)
    where = torch.searchsorted(unique, items).clamp(max=unique.shape[0] - 1)  # (N,)
    return torch.where(unique[where] == items, counts[where], 0)


class NegativeSampler:
    """Draws the negatives of each step from a generator of its own.

    The generator of draw t is seeded from (seed, rank, t): every process of a data-parallel
    job samples its own negatives, a run is reproducible, and resuming needs only ``draws``.

    - ``uniform``: N items drawn with replacement, all alike: Q(j) = N / V.
    - ``popularity``: N items drawn with replacement by training frequency p(j): Q(j) = N p(j).
    - ``in-batch``: the next items of n = min(N, M) positions drawn without replacement from
      the batch (all of them when M ≤ N), so items come as often as they are positives:
      Q(j) = n c(j) / M, with c(j) the copies of j among the batch's M next items.
    - ``mixed``: half the negatives in-batch, the rest uniform (mixed negative sampling, Yang
      et al. 2020): Q(j) is the sum of both parts' expected counts.
    """

    def __init__(
        self,
        kind: str,
        num_items: int,
        num_negatives: int,
        seed: int,
        rank: int = 0,
        item_counts: np.ndarray | None = None,
    ) -> None:
        if num_items < 1 or num_negatives < 1:
            raise ValueError("a negative sampler needs at least one item and one negative")
        self.kind = kind
        self.num_items = num_items
        self.num_negatives = num_negatives
        self.seed = seed
        self.rank = rank
        self.draws = 0
        self._probability: Tensor | None = None
        self._cdf: Tensor | None = None
        if kind == "popularity":
            if item_counts is None or item_counts.shape[0] != num_items + 1:
                raise ValueError("popularity sampling needs item_counts of shape (V + 1,)")
            counts = torch.from_numpy(np.asarray(item_counts, dtype=np.float64)).clone()
            counts[0] = 0.0  # padding is never a negative
            if counts.sum() <= 0:
                raise ValueError("popularity sampling needs at least one counted item")
            self._probability = counts / counts.sum()  # (V + 1,)
            self._cdf = self._probability[1:].cumsum(0)  # (V,) over ids 1..V
        elif kind not in ("uniform", "in-batch", "mixed"):
            raise ValueError(f"unknown negative sampler {kind!r}")

    def _generator(self) -> torch.Generator:
        sequence = np.random.SeedSequence((self.seed, self.rank, self.draws))
        self.draws += 1
        return torch.Generator().manual_seed(int(sequence.generate_state(1, np.uint64)[0]))

    def sample(self, positives: Tensor) -> NegativeSample:
        """Negatives for one step whose positions have next items ``positives``. (M,) ids."""
        generator = self._generator()
        device = positives.device
        m, n, v = positives.shape[0], self.num_negatives, self.num_items
        in_batch = {"in-batch": min(n, m), "mixed": min(n // 2, m)}.get(self.kind, 0)
        drawn = n - in_batch if self.kind in ("uniform", "popularity", "mixed") else 0
        parts: list[Tensor] = []
        if in_batch:
            picks = torch.randperm(m, generator=generator)[:in_batch].to(device)  # (n_b,)
            parts.append(positives[picks])
        if drawn and self._cdf is not None:  # popularity
            u = torch.rand(drawn, dtype=torch.float64, generator=generator) * self._cdf[-1]
            ids = torch.searchsorted(self._cdf, u, right=True).clamp(max=v - 1) + 1  # (n_d,)
            parts.append(ids.to(device))
        elif drawn:
            parts.append(torch.randint(1, v + 1, (drawn,), generator=generator).to(device))
        items = torch.cat(parts)  # (N,)

        def expected_count(ids: Tensor) -> Tensor:
            count = torch.zeros(ids.shape[0], dtype=torch.float64, device=device)
            if in_batch:
                count += in_batch * batch_counts(positives, ids).double() / m
            if drawn and self._probability is not None:
                count += drawn * self._probability.to(device)[ids]
            elif drawn:
                count += drawn / v
            return count

        return NegativeSample(
            items=items,
            log_q=expected_count(items).log().float(),
            positive_log_q=expected_count(positives).log().float(),
        )


def sampled_softmax_loss(
    positive_logits: Tensor,
    negative_logits: Tensor,
    positives: Tensor,
    sample: NegativeSample,
    logq_correction: bool = True,
) -> Tensor:
    """Mean cross-entropy of each positive against the shared negatives.

    positive_logits: (M,), negative_logits: (M, N) raw scores, positives: (M,) ids -> ().
    """
    if logq_correction:
        positive_logits = positive_logits - sample.positive_log_q.to(positive_logits.dtype)
        negative_logits = negative_logits - sample.log_q.to(negative_logits.dtype)  # (M, N)
    hits = sample.items.unsqueeze(0) == positives.unsqueeze(1)  # (M, N)
    negative_logits = negative_logits.masked_fill(hits, float("-inf"))
    logits = torch.cat([positive_logits.unsqueeze(1), negative_logits], dim=1)  # (M, 1 + N)
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)  # (M,)
    return F.cross_entropy(logits, labels)


class SampledSoftmax:
    """The sampled loss of a model's tied head: a sampler plus the correction switch."""

    def __init__(self, sampler: NegativeSampler, logq_correction: bool = True) -> None:
        self.sampler = sampler
        self.logq_correction = logq_correction

    def __call__(self, model: SequentialRecommender, hidden: Tensor, positives: Tensor) -> Tensor:
        """hidden: (M, D) states, positives: (M,) next-item ids -> () mean loss."""
        sample = self.sampler.sample(positives)
        return sampled_softmax_loss(
            model.score_pairs(hidden, positives),  # (M,)
            model.score_items(hidden, sample.items),  # (M, N)
            positives,
            sample,
            self.logq_correction,
        )


def build_sampled_softmax(
    config: TrainConfig, num_items: int, train_items: np.ndarray, rank: int = 0
) -> SampledSoftmax:
    """The sampled loss ``config`` asks for; ``train_items`` gives popularity its counts."""
    counts = (
        np.bincount(train_items, minlength=num_items + 1)
        if config.negative_sampler == "popularity"
        else None
    )
    sampler = NegativeSampler(
        config.negative_sampler, num_items, config.num_negatives, config.seed, rank, counts
    )
    return SampledSoftmax(sampler, config.logq_correction)
