"""The sequential recommender: a user's recent items → scores for every item in the catalogue.

Histories are left-padded with item id 0, so the most recent item is always the last column and
always gets the last position embedding, whatever the history's length.

With ``item_feature_mode: sum`` an item's vector, in the input and in the tied head alike, is
its own embedding plus the mean of its attributes' embeddings: items that share attributes
share part of their vector, so a rarely seen item is scored partly by what its attributes
learnt from the others. The attribute table travels in the state dict as a buffer.

Shapes: B batch, T positions, D width, V catalogue size + 1 (column 0 is padding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor, nn

from moerec.config import (
    GAP_BUCKETS,
    HOUR_BUCKETS,
    INFERENCE_ROUTING_FIELDS,
    ModelConfig,
    validation_problems,
)
from moerec.model.dropout import Dropout
from moerec.model.encoder import Block, attention_mask
from moerec.model.experts import Experts
from moerec.model.moe import MoEFeedForward, RoutingStats

PADDING_ID = 0


@dataclass(frozen=True)
class EncoderOutput:
    hidden: Tensor  # (B, T, D) final-norm hidden state of every position
    token_mask: Tensor  # (B, T) True where an item (not padding) sits
    aux_loss: Tensor  # () weighted balance + z-loss, summed over MoE layers
    routing: list[RoutingStats]  # one per MoE layer (empty for a dense model)
    last_position: list[Tensor]  # per MoE layer, (B,) row of each user's last item in its stats

    def last_position_routing(self) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per MoE layer: (experts, weights, mask), each (B, K), of each user's last item."""
        return [
            (s.experts[rows], s.weights[rows], s.mask[rows])
            for s, rows in zip(self.routing, self.last_position, strict=True)
        ]


class SequentialRecommender(nn.Module):
    """Item + position embeddings → N causal blocks (MoE FFN) → head tied to item embeddings."""

    def __init__(self, config: ModelConfig, item_attributes: Tensor | None = None) -> None:
        """``item_attributes``: (num_items + 1, max_item_attributes) attribute ids per item,
        0-padded, for ``item_feature_mode`` other than "none". Left out, the table is zeros
        until ``load_state_dict`` fills it (rebuilding a saved model)."""
        super().__init__()
        if config.num_items < 1:
            raise ValueError("ModelConfig.num_items must be set from the data before building")
        self.config = config
        self.item_embedding = nn.Embedding(
            config.num_items + 1, config.hidden_size, padding_idx=PADDING_ID
        )
        self.position_embedding = (
            nn.Embedding(config.max_len, config.hidden_size)
            if config.position_encoding == "absolute"
            else None
        )
        self.embedding_dropout = Dropout(config.dropout)
        # A LayerNorm draws no random numbers: its place here shifts no other weight's draw.
        self.embedding_norm = nn.LayerNorm(config.hidden_size) if config.embedding_norm else None
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        # Post-norm blocks end normalised already (as BERT's do), so they get no final norm.
        self.final_norm = (
            nn.LayerNorm(config.hidden_size) if config.block_norm == "pre" else nn.Identity()
        )
        self.apply(self._init_weights)
        # Built after the other weights are drawn, so that with the same seed every weight the
        # feature-free model has is drawn identically: the two differ only by the features.
        self.attribute_embedding: nn.Embedding | None = None
        if config.item_feature_mode == "none":
            if item_attributes is not None:
                raise ValueError("item_attributes given, but model.item_feature_mode is 'none'")
        else:
            self._build_item_features(config, item_attributes)
        # Same reason: drawn last, so the weights a model without time context has match.
        self.time_embeddings: nn.ModuleList | None = None
        if config.time_context:
            sizes = (GAP_BUCKETS, HOUR_BUCKETS, GAP_BUCKETS, HOUR_BUCKETS)  # own, then next
            self.time_embeddings = nn.ModuleList(
                nn.Embedding(n, config.hidden_size, padding_idx=0) for n in sizes
            )
            self.time_embeddings.apply(self._init_weights)

    def _build_item_features(self, config: ModelConfig, item_attributes: Tensor | None) -> None:
        if config.num_attributes < 1 or config.max_item_attributes < 1:
            raise ValueError(
                "ModelConfig.num_attributes and max_item_attributes must be set from the item "
                f"features before building a model with item_feature_mode "
                f"{config.item_feature_mode!r}"
            )
        shape = (config.num_items + 1, config.max_item_attributes)
        if item_attributes is None:
            item_attributes = torch.zeros(shape, dtype=torch.long)
        elif tuple(item_attributes.shape) != shape:
            raise ValueError(
                f"item_attributes has shape {tuple(item_attributes.shape)}, expected {shape} "
                "(num_items + 1, max_item_attributes)"
            )
        item_attributes = item_attributes.to(torch.long)
        if item_attributes.numel() and (
            int(item_attributes.min()) < 0 or int(item_attributes.max()) > config.num_attributes
        ):
            raise ValueError(f"item_attributes must hold ids 0..{config.num_attributes}")
        if bool(item_attributes[PADDING_ID].any()):
            raise ValueError("the padding item (row 0 of item_attributes) cannot have attributes")
        self.attribute_embedding = nn.Embedding(
            config.num_attributes + 1, config.hidden_size, padding_idx=PADDING_ID
        )
        self._init_weights(self.attribute_embedding)
        self.register_buffer("item_attributes", item_attributes.clone())

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, Experts):
            nn.init.normal_(module.w_in, std=0.02)
            nn.init.normal_(module.w_out, std=0.02)

    def forward(
        self, item_seq: Tensor, last_only: bool = False, context: Tensor | None = None
    ) -> EncoderOutput:
        """item_seq: (B, T) left-padded item ids, T ≤ max_len -> EncoderOutput.

        ``last_only`` (inference) runs the final block for the last position only, so
        ``hidden`` is (B, 1, D) and the final layer's routing covers each user's last item.
        Every row must then end with an item, as left-padded histories do.

        ``context`` (models with ``time_context``): (B, T + 1, 2) (gap id, hour id) of each
        input event and, in the last column, of the event each position predicts (the
        target in training, the request in serving). Position t reads its own event's ids
        and those of event t + 1: when the next event happens, never what it is. None reads
        as unknown (id 0) everywhere.
        """
        seq_len = item_seq.shape[1]
        if seq_len > self.config.max_len:
            item_seq = item_seq[:, -self.config.max_len :]
            if context is not None:
                context = context[:, -(self.config.max_len + 1) :]
            seq_len = self.config.max_len
        token_mask = item_seq != PADDING_ID  # (B, T)
        x = self.item_vectors(item_seq)  # (B, T, D)
        if self.position_embedding is not None:
            positions = torch.arange(
                self.config.max_len - seq_len, self.config.max_len, device=item_seq.device
            )  # (T,) right-aligned
            x = x + self.position_embedding(positions)
        if self.time_embeddings is not None and context is not None:
            x = x + self._time_vectors(context, seq_len)
        if self.embedding_norm is not None:
            x = self.embedding_norm(x)
        x = self.embedding_dropout(x)
        mask = attention_mask(token_mask)  # (B, 1, T, T)
        aux_loss = x.new_zeros(())
        routing: list[RoutingStats] = []
        last_position: list[Tensor] = []
        all_rows = token_mask.sum(dim=1).cumsum(0) - 1  # (B,) flat row of each last item
        for i, block in enumerate(self.blocks):
            final_only = last_only and i == len(self.blocks) - 1
            x, stats = block(x, mask, token_mask, final_only)
            if stats is not None:
                routing.append(stats)
                last_position.append(
                    torch.arange(x.shape[0], device=x.device) if final_only else all_rows
                )
                aux_loss = (
                    aux_loss
                    + self.config.moe_balance_coef * stats.balance_loss
                    + self.config.moe_z_coef * stats.z_loss
                )
        hidden = self.final_norm(x)  # (B, T, D), or (B, 1, D) with last_only
        return EncoderOutput(
            hidden=hidden,
            token_mask=token_mask,
            aux_loss=aux_loss,
            routing=routing,
            last_position=last_position,
        )

    def _time_vectors(self, context: Tensor, seq_len: int) -> Tensor:
        """context: (B, T + 1, 2) -> (B, T, D): own and next event's gap and hour vectors."""
        if context.shape[1] != seq_len + 1 or context.shape[-1] != 2:
            raise ValueError(
                f"context has shape {tuple(context.shape)}, expected (B, {seq_len + 1}, 2): "
                "one (gap, hour) pair per input event and one for the predicted event"
            )
        if self.time_embeddings is None:
            raise ValueError("context given to a model built without model.time_context")
        own_gap, own_hour, next_gap, next_hour = self.time_embeddings
        own, following = context[:, :-1], context[:, 1:]  # (B, T, 2) each
        return (
            own_gap(own[..., 0])
            + own_hour(own[..., 1])
            + next_gap(following[..., 0])
            + next_hour(following[..., 1])
        )

    def _attribute_means(self, embedding: nn.Embedding, rows: Tensor | slice) -> Tensor:
        """Mean attribute embedding of the items in ``rows`` of the attribute table; zero for
        an item without attributes. -> (N, D)"""
        return F.embedding_bag(
            self.get_buffer("item_attributes")[rows],  # (N, A)
            embedding.weight,
            mode="mean",
            padding_idx=PADDING_ID,  # padding slots are left out of the mean
        )

    def item_vectors(self, items: Tensor) -> Tensor:
        """items: (...) ids -> (..., D): each item's vector, as the input and the head see it."""
        vectors = self.item_embedding(items)
        if self.attribute_embedding is None:
            return vectors
        means = self._attribute_means(self.attribute_embedding, items.reshape(-1))  # (N, D)
        return vectors + means.view(vectors.shape)

    def item_table(self, start: int = 0, stop: int | None = None) -> Tensor:
        """Item vectors of ids start..stop-1 (the whole (V, D) table by default): the tied
        head's weights. Computed once per call, so score it against every position at once."""
        weight = self.item_embedding.weight
        if self.attribute_embedding is None:
            return weight if start == 0 and stop is None else weight[start:stop]
        rows = slice(start, stop)
        return weight[rows] + self._attribute_means(self.attribute_embedding, rows)

    def score(self, hidden: Tensor, table: Tensor | None = None) -> Tensor:
        """hidden: (..., D) -> logits (..., V) over the whole catalogue; padding gets -inf.

        ``table``, here and in the other scoring methods: the ``item_table()`` computed
        beforehand, for a model that no longer changes (a predictor); None computes it.
        """
        logits = hidden @ (self.item_table() if table is None else table).T  # (..., V)
        logits[..., PADDING_ID] = float("-inf")
        return logits

    def score_range(
        self, hidden: Tensor, start: int, stop: int, table: Tensor | None = None
    ) -> Tensor:
        """hidden: (B, D) -> logits (B, stop - start) of item ids start..stop-1; padding -inf.

        One slice of ``score``: rankers walk the catalogue in such chunks so that no
        (B, V) matrix exists at once. The whole range is ``score`` itself, bit for bit.
        """
        if start == 0 and stop == self.item_embedding.num_embeddings:
            return self.score(hidden, table)
        rows = self.item_table(start, stop) if table is None else table[start:stop]
        logits = hidden @ rows.T  # (B, stop - start)
        if start == PADDING_ID:
            logits[:, 0] = float("-inf")
        return logits

    def score_items(self, hidden: Tensor, items: Tensor, table: Tensor | None = None) -> Tensor:
        """hidden: (M, D), items: (N,) ids -> logits (M, N) of those items only.

        Reads N rows of the item table, so its cost does not grow with the catalogue.
        """
        vectors = self.item_vectors(items) if table is None else table[items]  # (N, D)
        return hidden @ vectors.T  # (M, N)

    def score_pairs(self, hidden: Tensor, items: Tensor) -> Tensor:
        """hidden: (M, D), items: (M,) ids -> (M,) logit of each row's own item."""
        return (hidden * self.item_vectors(items)).sum(dim=-1)  # (M,)

    def item_logits(self, hidden: Tensor) -> Tensor:
        """hidden: (..., D) -> logits (..., V - 1) over real items only: column j is item j + 1.

        The training loss uses this form: no -inf padding column to trip label smoothing.
        """
        return hidden @ self.item_table(1).T  # (..., V - 1)

    def reroute(self, changes: dict[str, Any]) -> ModelConfig:
        """Change the trained MoE's routing at inference (``INFERENCE_ROUTING_FIELDS`` only,
        e.g. ``{"moe_top_k": 3}``) in every MoE layer; returns the config now in force.

        Raises ValueError for a dense model, for a field that would need retraining, or for
        values the config does not accept (e.g. more experts per token than there are).
        """
        if not self.config.is_moe:
            raise ValueError("a dense model has no router to change")
        fixed = sorted(set(changes) - set(INFERENCE_ROUTING_FIELDS))
        if fixed:
            raise ValueError(
                f"{', '.join(fixed)} cannot change on a trained model (only "
                f"{', '.join(INFERENCE_ROUTING_FIELDS)} can); train a new model instead"
            )
        try:
            config = ModelConfig.model_validate({**self.config.model_dump(), **changes})
        except ValidationError as exc:
            raise ValueError(f"routing: {validation_problems(exc)}") from None
        for block in self.blocks:
            if isinstance(block.ffn, MoEFeedForward):
                block.ffn.set_routing(
                    config.moe_router,
                    config.moe_top_k,
                    config.moe_top_p,
                    config.moe_min_k,
                    config.moe_max_k,
                    config.moe_capacity_factor_eval,
                )
        self.config = config
        return config

    def encode_users(
        self, item_seq: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, EncoderOutput]:
        """The user representation: the last position's hidden state. -> (B, D), EncoderOutput.

        Only the last position is computed in the final block; histories must be non-empty.
        ``context``: as in ``forward``, its last column the request's.
        """
        out = self(item_seq, last_only=True, context=context)
        return out.hidden[:, -1], out
