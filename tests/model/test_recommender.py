"""The whole recommender: shapes, padding and causality invariants, dense baselines, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moerec.config import ModelConfig, dense_variant
from moerec.model import PADDING_ID, DenseFeedForward, MoEFeedForward, SequentialRecommender
from moerec.model.experts import Experts

NUM_ITEMS = 40
MAX_LEN = 12


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def config() -> ModelConfig:
    return ModelConfig(
        num_items=NUM_ITEMS,
        max_len=MAX_LEN,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        ffn_hidden_size=32,
        dropout=0.1,
        attention_dropout=0.1,
        moe_num_experts=4,
        moe_top_k=2,
    )


@pytest.fixture
def model(config) -> SequentialRecommender:
    return SequentialRecommender(config).eval()


@pytest.fixture
def history() -> Tensor:
    return torch.randint(1, NUM_ITEMS + 1, (7,))  # (L,) one user's items, oldest first


def left_pad(history: Tensor, length: int) -> Tensor:
    """(L,) -> (length,) with PADDING_ID in front."""
    padding = torch.full((length - len(history),), PADDING_ID, dtype=history.dtype)
    return torch.cat([padding, history])


def ffn_params(model: SequentialRecommender) -> int:
    return sum(p.numel() for block in model.blocks for p in block.ffn.parameters())


def expert_params(model: SequentialRecommender) -> int:
    return sum(p.numel() for m in model.modules() if isinstance(m, Experts) for p in m.parameters())


def test_forward_shapes(model, config):
    items = torch.randint(0, NUM_ITEMS + 1, (3, MAX_LEN))  # (B, T)
    out = model(items)
    assert out.hidden.shape == (3, MAX_LEN, config.hidden_size)
    assert out.token_mask.shape == (3, MAX_LEN)
    assert torch.equal(out.token_mask, items != PADDING_ID)
    assert out.aux_loss.shape == ()
    assert len(out.routing) == config.num_layers
    user, _ = model.encode_users(items)
    torch.testing.assert_close(user, out.hidden[:, -1], atol=1e-5, rtol=1e-5)


def test_last_only_forward_equals_the_full_forward_at_the_last_position(model):
    items = torch.randint(1, NUM_ITEMS + 1, (4, MAX_LEN))  # (B, T)
    items[0, :5] = PADDING_ID
    full = model(items)
    last = model(items, last_only=True)
    assert last.hidden.shape == (4, 1, full.hidden.shape[-1])
    torch.testing.assert_close(last.hidden[:, 0], full.hidden[:, -1], atol=1e-5, rtol=1e-5)
    for (e_full, w_full, _), (e_last, w_last, _) in zip(
        full.last_position_routing(), last.last_position_routing(), strict=True
    ):
        assert torch.equal(e_full, e_last)
        torch.testing.assert_close(w_full, w_last, atol=1e-5, rtol=1e-5)


def test_histories_longer_than_max_len_keep_the_most_recent_items(model):
    items = torch.randint(1, NUM_ITEMS + 1, (2, MAX_LEN + 5))
    long_out = model(items)
    torch.testing.assert_close(long_out.hidden, model(items[:, -MAX_LEN:]).hidden)


def test_score_covers_the_catalogue_and_masks_padding(model):
    hidden = torch.randn(3, 5, 32)  # (B, T, D)
    logits = model.score(hidden)
    assert logits.shape == (3, 5, NUM_ITEMS + 1)
    assert torch.isneginf(logits[..., PADDING_ID]).all()
    assert torch.isfinite(logits[..., 1:]).all()
    torch.testing.assert_close(logits[..., 1:], hidden @ model.item_embedding.weight[1:].T)


def test_left_padding_does_not_change_the_user_representation(model, history):
    reference, _ = model.encode_users(history[None])  # (1, D) no padding at all
    for length in (9, MAX_LEN):
        padded, _ = model.encode_users(left_pad(history, length)[None])
        torch.testing.assert_close(padded, reference, atol=1e-5, rtol=1e-5)
    # Sharing a batch with a longer history (so padding differs per row) changes nothing either.
    other = torch.randint(1, NUM_ITEMS + 1, (MAX_LEN,))
    batch = torch.stack([left_pad(history, MAX_LEN), other])  # (2, T)
    users, _ = model.encode_users(batch)
    torch.testing.assert_close(users[:1], reference, atol=1e-5, rtol=1e-5)
    # Every real position agrees, not only the last one.
    real = model(batch).hidden[0, -len(history) :]  # (L, D)
    torch.testing.assert_close(real, model(history[None]).hidden[0], atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_routing_stats(model, history):
    unpadded = model(history[None])
    padded = model(left_pad(history, MAX_LEN)[None])
    for plain, with_padding in zip(unpadded.routing, padded.routing, strict=True):
        assert with_padding.num_tokens == len(history)
        assert torch.equal(with_padding.expert_counts, plain.expert_counts)
        torch.testing.assert_close(with_padding.balance_loss, plain.balance_loss)
        torch.testing.assert_close(with_padding.z_loss, plain.z_loss)
    torch.testing.assert_close(padded.aux_loss, unpadded.aux_loss)


def test_later_items_do_not_change_earlier_positions(model, history):
    items = left_pad(history, MAX_LEN)[None]  # (1, T)
    changed = items.clone()
    changed[0, -1] = items[0, -1] % NUM_ITEMS + 1  # a different real item
    before, after = model(items).hidden, model(changed).hidden
    torch.testing.assert_close(after[:, :-1], before[:, :-1])
    assert not torch.allclose(after[:, -1], before[:, -1])


@pytest.mark.parametrize(("variant", "width"), [("dense-active", 2), ("dense-params", 4)])
def test_dense_variants_have_no_router_and_the_matching_ffn_size(config, variant, width):
    dense = SequentialRecommender(dense_variant(config, variant)).eval()
    moe = SequentialRecommender(config)
    out = dense(torch.randint(1, NUM_ITEMS + 1, (2, MAX_LEN)))
    assert out.routing == []
    assert out.aux_loss.item() == 0.0
    assert all(isinstance(block.ffn, DenseFeedForward) for block in dense.blocks)
    hidden, inner = config.hidden_size, config.ffn_hidden_size * width
    assert ffn_params(dense) == config.num_layers * (2 * hidden * inner + inner + hidden)
    # E experts of width F hold (E-1)·D more biases than one FFN of width E·F: close, not equal.
    moe_experts = expert_params(moe)
    ratio = width / config.moe_num_experts
    assert ffn_params(dense) == pytest.approx(ratio * moe_experts, rel=0.03)
    # Everything outside the feed-forward is identical.
    outside = sum(p.numel() for p in dense.parameters()) - ffn_params(dense)
    assert outside == sum(p.numel() for p in moe.parameters()) - ffn_params(moe)


def test_aux_loss_sends_gradient_to_every_router(config):
    model = SequentialRecommender(config).train()
    out = model(torch.randint(0, NUM_ITEMS + 1, (4, MAX_LEN)))
    assert out.aux_loss.item() > 0
    out.aux_loss.backward()
    routers = [block.ffn.router for block in model.blocks if isinstance(block.ffn, MoEFeedForward)]
    assert len(routers) == config.num_layers
    for router in routers:
        assert router.proj.weight.grad is not None
        assert router.proj.weight.grad.abs().sum() > 0


def test_aux_loss_is_the_weighted_sum_of_layer_losses(config):
    model = SequentialRecommender(config).eval()
    out = model(torch.randint(1, NUM_ITEMS + 1, (4, MAX_LEN)))
    expected = sum(
        config.moe_balance_coef * s.balance_loss + config.moe_z_coef * s.z_loss for s in out.routing
    )
    torch.testing.assert_close(out.aux_loss, expected)


def next_item_loss(model: SequentialRecommender, items: Tensor) -> Tensor:
    """Full-catalogue cross-entropy of predicting items[:, t+1] from positions ≤ t."""
    out = model(items[:, :-1])
    logits = model.score(out.hidden)  # (B, T-1, V)
    targets = items[:, 1:]  # (B, T-1)
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=PADDING_ID)
    return ce + out.aux_loss


@pytest.mark.parametrize("router_mode", ["topk", "topp"])
def test_tiny_model_overfits_a_fixed_batch(config, router_mode):
    config = config.model_copy(
        update={"dropout": 0.0, "attention_dropout": 0.0, "moe_router": router_mode}
    )
    model = SequentialRecommender(config).train()
    items = torch.randint(1, NUM_ITEMS + 1, (8, MAX_LEN + 1))  # (B, T+1)
    items[:3, :4] = PADDING_ID  # some short histories
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = next_item_loss(model, items)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize(
    "changes",
    [
        {"moe_top_k": 1},
        {"moe_top_k": 3},
        {"moe_router": "topp", "moe_top_p": 0.5, "moe_min_k": 1, "moe_max_k": 4},
        {"moe_capacity_factor_eval": 1.0},
    ],
)
def test_rerouting_a_trained_model_equals_building_it_with_that_routing(config, model, changes):
    """Same weights, new routing: exactly the model a config with that routing would build."""
    batch = torch.randint(1, NUM_ITEMS + 1, (5, MAX_LEN))
    rebuilt = SequentialRecommender(config.model_copy(update=changes)).eval()
    rebuilt.load_state_dict(model.state_dict())
    before = model(batch).hidden

    new_config = model.reroute(changes)

    assert new_config == rebuilt.config
    assert model.config == new_config
    with torch.no_grad():
        out, expected = model(batch), rebuilt(batch)
    torch.testing.assert_close(out.hidden, expected.hidden)
    for ours, theirs in zip(out.routing, expected.routing, strict=True):
        assert torch.equal(ours.expert_counts, theirs.expert_counts)
    if changes.get("moe_top_k", 2) != 2:
        assert not torch.allclose(out.hidden, before)  # the change took effect
        assert out.routing[0].experts.shape[1] == changes["moe_top_k"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"moe_top_k": 5}, "cannot exceed moe_num_experts"),
        ({"moe_top_k": 0}, "greater than or equal to 1"),
        ({"ffn_hidden_size": 64}, "ffn_hidden_size cannot change on a trained model"),
        ({"moe_num_experts": 8}, "train a new model instead"),
    ],
)
def test_rerouting_refuses_what_the_weights_cannot_do(model, changes, message):
    routers = [(b.ffn.router.mode, b.ffn.router.top_k) for b in model.blocks]
    with pytest.raises(ValueError, match=message):
        model.reroute(changes)
    assert [(b.ffn.router.mode, b.ffn.router.top_k) for b in model.blocks] == routers
    assert model.config.moe_top_k == 2


def test_a_dense_model_has_no_routing_to_change(config):
    dense = SequentialRecommender(dense_variant(config, "dense-active"))
    with pytest.raises(ValueError, match="dense model has no router"):
        dense.reroute({"moe_top_k": 1})
