"""Router behaviour: which experts a token picks, with what weight, and the auxiliary losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from moerec.model.router import Router, balance_loss, top_p_mask, z_loss

HIDDEN = 16
EXPERTS = 8


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tokens() -> Tensor:
    return torch.randn(32, HIDDEN)  # (N, D)


def router_emitting(probs: list[list[float]], **kwargs) -> tuple[Router, Tensor]:
    """A router whose softmax output is exactly ``probs`` for the returned inputs.

    With D == E and an identity projection, logits = log(probs), so softmax gives probs back.
    """
    probs_t = torch.tensor(probs)  # (N, E)
    num_experts = probs_t.shape[1]
    router = Router(num_experts, num_experts, **kwargs)
    with torch.no_grad():
        router.proj.weight.copy_(torch.eye(num_experts))
    return router, probs_t.log()


@pytest.mark.parametrize("k", [2, 3])
def test_topk_weights_are_renormalised_chosen_probabilities(tokens, k):
    routing = Router(HIDDEN, EXPERTS, "topk", top_k=k)(tokens)
    chosen = routing.probs.gather(1, routing.experts)  # (N, k)
    torch.testing.assert_close(routing.weights.sum(-1), torch.ones(len(tokens)))
    torch.testing.assert_close(routing.weights, chosen / chosen.sum(-1, keepdim=True))
    assert routing.mask.all()


def test_a_single_expert_keeps_its_raw_probability_so_the_router_learns(tokens):
    router = Router(HIDDEN, EXPERTS, "topk", top_k=1)
    routing = router(tokens)
    chosen = routing.probs.gather(1, routing.experts)  # (N, 1)
    torch.testing.assert_close(routing.weights, chosen)
    routing.weights.sum().backward()
    assert router.proj.weight.grad is not None
    assert router.proj.weight.grad.abs().sum() > 0


def test_topk_picks_the_most_probable_experts_in_decreasing_order(tokens):
    routing = Router(HIDDEN, EXPERTS, "topk", top_k=3)(tokens)
    chosen = routing.probs.gather(1, routing.experts)  # (N, 3)
    assert (chosen[:, :-1] >= chosen[:, 1:]).all()
    unchosen = routing.probs.scatter(1, routing.experts, -1.0)  # chosen entries knocked out
    assert (chosen[:, -1] >= unchosen.max(-1).values).all()


def test_router_logits_are_fp32_for_bfloat16_input(tokens):
    router = Router(HIDDEN, EXPERTS)
    x = tokens.bfloat16()
    routing = router(x)
    assert routing.logits.dtype == torch.float32
    assert routing.probs.dtype == torch.float32
    assert routing.weights.dtype == torch.float32
    torch.testing.assert_close(routing.logits, F.linear(x.float(), router.proj.weight))


def test_router_logits_stay_fp32_under_autocast(tokens):
    router = Router(HIDDEN, EXPERTS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        routing = router(tokens.bfloat16())
    assert routing.logits.dtype == torch.float32
    torch.testing.assert_close(
        routing.logits, F.linear(tokens.bfloat16().float(), router.proj.weight)
    )


def test_router_cast_to_bfloat16_still_routes_in_fp32(tokens):
    router = Router(HIDDEN, EXPERTS).to(torch.bfloat16)
    routing = router(tokens.bfloat16())
    assert routing.logits.dtype == torch.float32


@pytest.mark.parametrize(
    ("sorted_probs", "top_p", "min_k", "expected"),
    [
        # mass before each slot: 0, .7, .9, .96 -> only slot 0 is short of .6; min_k adds slot 1
        ([0.7, 0.2, 0.06, 0.04], 0.6, 2, [True, True, False, False]),
        # 0, .3, .6, .8 are all short of .9 -> every slot (K is the max_k clamp)
        ([0.3, 0.3, 0.2, 0.2], 0.9, 2, [True, True, True, True]),
        # 0, .5, .8, .95 against .7 -> two slots, more than min_k
        ([0.5, 0.3, 0.15, 0.05], 0.7, 1, [True, True, False, False]),
        # one dominant expert is enough when min_k allows it
        ([0.9, 0.05, 0.03, 0.02], 0.6, 1, [True, False, False, False]),
        # ... and min_k forces extra slots the mass alone would not need
        ([0.9, 0.05, 0.03, 0.02], 0.6, 3, [True, True, True, False]),
    ],
)
def test_top_p_mask_matches_hand_computed_prefix(sorted_probs, top_p, min_k, expected):
    mask = top_p_mask(torch.tensor([sorted_probs]), top_p, min_k)
    assert mask.tolist() == [expected]


def test_top_p_router_clamps_expert_count_to_max_k():
    # Reaching 0.95 would need five experts; max_k = 4 caps it.
    router, x = router_emitting(
        [[0.3, 0.3, 0.2, 0.1, 0.05, 0.05]], mode="topp", top_p=0.95, min_k=1, max_k=4
    )
    routing = router(x)
    assert routing.experts.shape == (1, 4)
    assert routing.mask.sum().item() == 4
    torch.testing.assert_close(routing.weights, torch.tensor([[0.3, 0.3, 0.2, 0.1]]) / 0.9)


def test_top_p_router_uses_smallest_prefix_reaching_p():
    router, x = router_emitting(
        [[0.05, 0.7, 0.2, 0.05], [0.3, 0.2, 0.3, 0.2]], mode="topp", top_p=0.6, min_k=1, max_k=4
    )
    routing = router(x)
    assert routing.mask.sum(-1).tolist() == [1, 2]
    assert routing.experts[0, 0].item() == 1
    # one expert: its raw probability; two: renormalised
    torch.testing.assert_close(routing.weights[0], torch.tensor([0.7, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(routing.weights[1, :2], torch.tensor([0.5, 0.5]))
    assert (routing.weights[~routing.mask] == 0).all()


@pytest.mark.parametrize("min_k", [1, 2, 3])
def test_top_p_router_respects_min_k(tokens, min_k):
    # p is tiny, so the mass alone would always stop after one expert.
    router = Router(HIDDEN, EXPERTS, "topp", top_p=0.01, min_k=min_k, max_k=4)
    routing = router(tokens)
    assert (routing.mask.sum(-1) == min_k).all()
    if min_k > 1:
        torch.testing.assert_close(routing.weights.sum(-1), torch.ones(len(tokens)))


def test_top_p_router_slot_counts_lie_between_min_k_and_max_k(tokens):
    router = Router(HIDDEN, EXPERTS, "topp", top_p=0.8, min_k=2, max_k=5)
    with torch.no_grad():
        router.proj.weight.mul_(2)  # peaky for some tokens, flat for others
    counts = router(tokens).mask.sum(-1)
    assert counts.min() >= 2
    assert counts.max() <= 5
    assert {2, 5} <= set(counts.tolist())  # both clamps are actually exercised


def test_balance_loss_is_one_for_perfectly_uniform_routing():
    num_tokens, k = 16, 2
    probs = torch.full((num_tokens, EXPERTS), 1.0 / EXPERTS)
    experts = (torch.arange(num_tokens * k) % EXPERTS).view(num_tokens, k)  # equal counts
    mask = torch.ones(num_tokens, k, dtype=torch.bool)
    torch.testing.assert_close(balance_loss(probs, experts, mask), torch.tensor(1.0))


def test_balance_loss_is_num_experts_for_total_collapse():
    num_tokens = 10
    probs = torch.zeros(num_tokens, EXPERTS)
    probs[:, 3] = 1.0
    experts = torch.full((num_tokens, 1), 3)
    mask = torch.ones(num_tokens, 1, dtype=torch.bool)
    torch.testing.assert_close(balance_loss(probs, experts, mask), torch.tensor(float(EXPERTS)))


def test_balance_loss_matches_hand_computation_and_ignores_unused_slots():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    experts = torch.tensor([[0, 1], [1, 2]])
    mask = torch.tensor([[True, True], [True, False]])  # token 1's slot on expert 2 unused
    # used slots go to experts 0, 1, 1 -> f = [1/3, 2/3, 0]; P = [0.3, 0.45, 0.25]
    # loss = 3 * (1/3 * 0.3 + 2/3 * 0.45) = 1.2
    torch.testing.assert_close(balance_loss(probs, experts, mask), torch.tensor(1.2))


def test_z_loss_is_mean_squared_logsumexp():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    # logsumexp rows: log 2 and log 4 = 2 log 2 -> mean of squares = 2.5 (log 2)^2
    torch.testing.assert_close(z_loss(logits), torch.tensor(2.5 * math.log(2.0) ** 2))


def test_losses_on_zero_tokens_are_zero_not_nan():
    probs = torch.empty(0, EXPERTS)
    experts = torch.empty(0, 2, dtype=torch.long)
    mask = torch.empty(0, 2, dtype=torch.bool)
    assert balance_loss(probs, experts, mask).item() == 0.0
    assert z_loss(torch.empty(0, EXPERTS)).item() == 0.0
