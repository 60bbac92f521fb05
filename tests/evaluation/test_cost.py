"""Measured cost: parameter accounting and FLOPs that show the MoE only pays for k of E experts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from moerec.config import ModelConfig, dense_variant
from moerec.evaluation.cost import ModelCost, measure_cost
from moerec.model import SequentialRecommender

NUM_ITEMS = 100
HIDDEN = 32
FFN = 128
LAYERS = 2
EXPERTS = 8
TOP_K = 2


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def config() -> ModelConfig:
    return ModelConfig(
        num_items=NUM_ITEMS,
        max_len=16,
        hidden_size=HIDDEN,
        num_layers=LAYERS,
        num_heads=2,
        ffn_hidden_size=FFN,
        moe_num_experts=EXPERTS,
        moe_top_k=TOP_K,
    )


@pytest.fixture
def moe_model(config) -> SequentialRecommender:
    return SequentialRecommender(config)


def build(config: ModelConfig, variant: str = "moe", **updates: object) -> SequentialRecommender:
    return SequentialRecommender(dense_variant(config.model_copy(update=updates), variant))


def test_total_params_counts_every_parameter_once(moe_model):
    cost = measure_cost(moe_model)
    assert cost.total_params == sum(p.numel() for p in moe_model.parameters())
    # A second module holding the same tensor (a tied head) must not be counted twice.
    moe_model.tied_head = nn.Linear(HIDDEN, NUM_ITEMS + 1, bias=False)
    moe_model.tied_head.weight = moe_model.item_embedding.weight
    assert measure_cost(moe_model).total_params == cost.total_params


def test_expert_and_ffn_params_match_the_architecture(moe_model):
    cost = measure_cost(moe_model)
    one_expert = 2 * HIDDEN * FFN + FFN + HIDDEN  # w_in, b_in, w_out, b_out
    assert cost.expert_params == LAYERS * EXPERTS * one_expert
    router = HIDDEN * EXPERTS
    assert cost.ffn_params == cost.expert_params + LAYERS * router
    used = cost.expert_params * TOP_K / EXPERTS
    assert cost.active_params_per_token == pytest.approx(
        cost.total_params - cost.expert_params + used
    )


@pytest.mark.parametrize("variant", ["dense-active", "dense-params"])
def test_dense_model_is_fully_active_and_differs_only_in_ffn(config, moe_model, variant):
    dense_cost = measure_cost(build(config, variant))
    moe_cost = measure_cost(moe_model)
    assert dense_cost.expert_params == 0
    assert dense_cost.active_params_per_token == dense_cost.total_params
    assert dense_cost.experts_per_token == 1.0
    outside_ffn = dense_cost.total_params - dense_cost.ffn_params
    assert outside_ffn == moe_cost.total_params - moe_cost.ffn_params


def test_dense_flops_match_hand_count(config):
    """Every matmul accounted for, attention included (CPU SDPA is not counted by torch).

    The final block computes only the last position's query, output projection and FFN.
    """
    model = build(config, "dense-active")
    width = FFN * TOP_K
    seq = config.max_len

    def layer(queries: int) -> int:
        return (
            2 * seq * HIDDEN * 3 * HIDDEN  # qkv projection (keys/values of every position)
            + 2 * queries * HIDDEN * HIDDEN  # output projection
            + 2 * 2 * queries * seq * HIDDEN  # QKᵀ and (softmax)V over all heads
        )

    def ffn(tokens: int) -> int:
        return 2 * 2 * tokens * HIDDEN * width  # two linear layers

    scoring = 2 * HIDDEN * (NUM_ITEMS + 1)  # last position against the catalogue
    cost = measure_cost(model)
    assert cost.ffn_flops_per_request == (LAYERS - 1) * ffn(seq) + ffn(1)
    full = (LAYERS - 1) * (layer(seq) + ffn(seq))
    assert cost.flops_per_request == full + layer(1) + ffn(1) + scoring


def test_moe_ffn_flops_are_router_plus_k_expert_passes_per_token(moe_model, config):
    cost = measure_cost(moe_model)
    tokens = (LAYERS - 1) * config.max_len + 1  # the final block routes the last item only
    router = 2 * tokens * HIDDEN * EXPERTS
    experts = TOP_K * tokens * 2 * 2 * HIDDEN * FFN  # k expert FFNs per token, no more
    assert cost.ffn_flops_per_request == router + experts
    assert cost.experts_per_token == TOP_K


def test_moe_ffn_flops_are_k_over_e_of_dense_params_and_match_dense_active(config, moe_model):
    moe = measure_cost(moe_model)
    dense_params = measure_cost(build(config, "dense-params"))
    dense_active = measure_cost(build(config, "dense-active"))
    ratio = moe.ffn_flops_per_request / dense_params.ffn_flops_per_request
    assert ratio == pytest.approx(TOP_K / EXPERTS, rel=0.03)
    assert moe.ffn_flops_per_request == pytest.approx(dense_active.ffn_flops_per_request, rel=0.03)
    # Outside the FFN the three models do identical work.
    moe_rest = moe.flops_per_request - moe.ffn_flops_per_request
    assert moe_rest == dense_params.flops_per_request - dense_params.ffn_flops_per_request
    assert moe_rest == dense_active.flops_per_request - dense_active.ffn_flops_per_request


def test_top_p_experts_per_token_is_measured(config):
    model = build(config, moe_router="topp", moe_top_p=0.5, moe_min_k=1, moe_max_k=4)
    with torch.no_grad():
        for block in model.blocks:
            block.ffn.router.proj.weight.normal_(std=1.0)  # uneven routing: counts vary by token
    cost = measure_cost(model)
    assert 1.0 <= cost.experts_per_token <= 4.0
    assert cost.experts_per_token != int(cost.experts_per_token)
    expected_active = (
        cost.total_params
        - cost.expert_params
        + cost.expert_params * cost.experts_per_token / EXPERTS
    )
    assert cost.active_params_per_token == pytest.approx(expected_active)


def test_flops_are_positive_and_grow_with_max_len(config):
    short = measure_cost(build(config, max_len=16))
    long = measure_cost(build(config, max_len=32))
    assert short.flops_per_request > 0
    assert short.ffn_flops_per_request > 0
    # Per-token work doubles in every block but the final one (last position only).
    assert long.flops_per_request > 1.5 * short.flops_per_request
    routed = lambda seq: (LAYERS - 1) * seq + 1  # noqa: E731 tokens through an FFN
    assert long.ffn_flops_per_request * routed(16) == short.ffn_flops_per_request * routed(32)


def test_a_shorter_history_costs_less(moe_model):
    full = measure_cost(moe_model)
    half = measure_cost(moe_model, torch.arange(1, 9))
    assert half.flops_per_request < full.flops_per_request
    routed = lambda seq: (LAYERS - 1) * seq + 1  # noqa: E731 tokens through an FFN
    max_len = moe_model.config.max_len
    assert half.ffn_flops_per_request * routed(max_len) == full.ffn_flops_per_request * routed(8)


def test_default_history_is_deterministic(moe_model):
    assert measure_cost(moe_model) == measure_cost(moe_model)


@pytest.mark.parametrize("training", [True, False])
def test_training_mode_is_restored(moe_model, training):
    moe_model.train(training)
    moe_model.blocks[0].train(not training)  # a mixed state must come back exactly
    before = {name: m.training for name, m in moe_model.named_modules()}
    measure_cost(moe_model)
    assert {name: m.training for name, m in moe_model.named_modules()} == before


def test_measurement_leaves_no_gradients(moe_model):
    measure_cost(moe_model)
    assert all(p.grad is None for p in moe_model.parameters())


@pytest.mark.parametrize("shape", [(2, 5), (0,)], ids=["batch", "empty"])
def test_rejects_anything_but_one_non_empty_history(moe_model, shape):
    with pytest.raises(ValueError, match="1-D, non-empty"):
        measure_cost(moe_model, torch.ones(shape, dtype=torch.long))


def test_to_dict_has_every_field(moe_model):
    cost = measure_cost(moe_model)
    as_dict = cost.to_dict()
    assert set(as_dict) == set(ModelCost.__dataclass_fields__)
    assert as_dict["total_params"] == cost.total_params
    assert all(isinstance(v, int | float) for v in as_dict.values())
