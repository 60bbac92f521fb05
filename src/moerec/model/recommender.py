"""The sequential recommender: a user's recent items → scores for every item in the catalogue.

Histories are left-padded with item id 0, so the most recent item is always the last column and
always gets the last position embedding, whatever the history's length.

Shapes: B batch, T positions, D width, V catalogue size + 1 (column 0 is padding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from moerec.config import ModelConfig
from moerec.model.dropout import Dropout
from moerec.model.encoder import Block, attention_mask
from moerec.model.experts import Experts
from moerec.model.moe import RoutingStats

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

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.num_items < 1:
            raise ValueError("ModelConfig.num_items must be set from the data before building")
        self.config = config
        self.item_embedding = nn.Embedding(
            config.num_items + 1, config.hidden_size, padding_idx=PADDING_ID
        )
        self.position_embedding = nn.Embedding(config.max_len, config.hidden_size)
        self.embedding_dropout = Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size)
        self.apply(self._init_weights)

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

    def forward(self, item_seq: Tensor, last_only: bool = False) -> EncoderOutput:
        """item_seq: (B, T) left-padded item ids, T ≤ max_len -> EncoderOutput.

        ``last_only`` (inference) runs the final block for the last position only, so
        ``hidden`` is (B, 1, D) and the final layer's routing covers each user's last item.
        Every row must then end with an item, as left-padded histories do.
        """
        seq_len = item_seq.shape[1]
        if seq_len > self.config.max_len:
            item_seq = item_seq[:, -self.config.max_len :]
            seq_len = self.config.max_len
        token_mask = item_seq != PADDING_ID  # (B, T)
        positions = torch.arange(
            self.config.max_len - seq_len, self.config.max_len, device=item_seq.device
        )  # (T,) right-aligned
        x = self.item_embedding(item_seq) + self.position_embedding(positions)  # (B, T, D)
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

    def score(self, hidden: Tensor) -> Tensor:
        """hidden: (..., D) -> logits (..., V) over the whole catalogue; padding gets -inf."""
        logits = hidden @ self.item_embedding.weight.T  # (..., V)
        logits[..., PADDING_ID] = float("-inf")
        return logits

    def score_range(self, hidden: Tensor, start: int, stop: int) -> Tensor:
        """hidden: (B, D) -> logits (B, stop - start) of item ids start..stop-1; padding -inf.

        One slice of ``score``: rankers walk the catalogue in such chunks so that no
        (B, V) matrix exists at once. The whole range is ``score`` itself, bit for bit.
        """
        if start == 0 and stop == self.item_embedding.num_embeddings:
            return self.score(hidden)
        logits = hidden @ self.item_embedding.weight[start:stop].T  # (B, stop - start)
        if start == PADDING_ID:
            logits[:, 0] = float("-inf")
        return logits

    def score_items(self, hidden: Tensor, items: Tensor) -> Tensor:
        """hidden: (M, D), items: (N,) ids -> logits (M, N) of those items only.

        Reads N rows of the item table, so its cost does not grow with the catalogue.
        """
        return hidden @ self.item_embedding(items).T  # (M, N)

    def score_pairs(self, hidden: Tensor, items: Tensor) -> Tensor:
        """hidden: (M, D), items: (M,) ids -> (M,) logit of each row's own item."""
        return (hidden * self.item_embedding(items)).sum(dim=-1)  # (M,)

    def item_logits(self, hidden: Tensor) -> Tensor:
        """hidden: (..., D) -> logits (..., V - 1) over real items only: column j is item j + 1.

        The training loss uses this form: no -inf padding column to trip label smoothing.
        """
        return hidden @ self.item_embedding.weight[1:].T  # (..., V - 1)

    def encode_users(self, item_seq: Tensor) -> tuple[Tensor, EncoderOutput]:
        """The user representation: the last position's hidden state. -> (B, D), EncoderOutput.

        Only the last position is computed in the final block; histories must be non-empty.
        """
        out = self(item_seq, last_only=True)
        return out.hidden[:, -1], out
