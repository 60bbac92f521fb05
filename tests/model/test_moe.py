"""The fast sorted MoE dispatch must agree with the per-token reference, drops included."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from moerec.model import moe
from moerec.model.experts import FeedForward
from moerec.model.moe import MoEFeedForward, expert_capacity, plan_dispatch
from moerec.model.reference import reference_moe_forward
from moerec.model.router import Routing

HIDDEN = 16
FFN = 24

LayerFactory = Callable[..., MoEFeedForward]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def make_layer() -> LayerFactory:
    """Build an eval-mode layer with fp64 experts (the router stays fp32 by design)."""

    def build(
        num_experts: int = 8,
        top_k: int = 2,
        router_mode: str = "topk",
        capacity_factor: float = 0.0,
        **kwargs,
    ) -> MoEFeedForward:
        layer = MoEFeedForward(
            hidden_size=HIDDEN,
            ffn_hidden_size=FFN,
            num_experts=num_experts,
            dropout=0.0,
            router_mode=router_mode,
            top_k=top_k,
            capacity_factor_train=capacity_factor,
            capacity_factor_eval=capacity_factor,
            **kwargs,
        )
        with torch.no_grad():
            # Sharper routing than the default init, so experts get uneven loads.
            layer.router.proj.weight.mul_(3.0)
        layer.experts.double()
        return layer.eval()

    return build


def tokens(n: int) -> Tensor:
    return torch.randn(n, HIDDEN, dtype=torch.float64)  # (N, D)


DISPATCH_CASES = {
    "top1": {"top_k": 1},
    "top2": {"top_k": 2},
    "top3": {"top_k": 3},
    "top2-of-4": {"num_experts": 4, "top_k": 2},
    "topp": {"router_mode": "topp", "top_p": 0.6, "min_k": 1, "max_k": 4},
    "top2-cf1": {"top_k": 2, "capacity_factor": 1.0},
    "top1-cf1-of-4": {"num_experts": 4, "top_k": 1, "capacity_factor": 1.0},
    "topp-cf1": {
        "router_mode": "topp",
        "top_p": 0.6,
        "min_k": 1,
        "max_k": 4,
        "capacity_factor": 1.0,
    },
}


@pytest.mark.parametrize("num_tokens", [64, 1])
@pytest.mark.parametrize("case", DISPATCH_CASES.values(), ids=DISPATCH_CASES.keys())
def test_fast_dispatch_equals_reference(make_layer, case, num_tokens):
    layer = make_layer(**case)
    x = tokens(num_tokens)
    y, _ = layer(x)
    torch.testing.assert_close(y, reference_moe_forward(layer, x))


@pytest.mark.parametrize("router_mode", ["topk", "topp"])
def test_fast_dispatch_drops_the_same_slots_as_reference_when_over_capacity(
    make_layer, router_mode
):
    layer = make_layer(router_mode=router_mode, capacity_factor=0.5, min_k=2, max_k=3)
    x = tokens(64)
    y, stats = layer(x)
    assert stats.dropped_slots.item() > 0
    torch.testing.assert_close(y, reference_moe_forward(layer, x))
    # The drops matter: without capacity the output differs, so equality above is not vacuous.
    layer.capacity_factor_eval = 0.0
    y_no_drop, no_drop_stats = layer(x)
    assert no_drop_stats.dropped_slots.item() == 0
    assert not torch.allclose(y, y_no_drop)


@pytest.mark.parametrize(("capacity_factor", "dropped"), [(0.0, 0), (1.0, 48)])
def test_dropped_slots_appear_only_when_capacity_is_exceeded(make_layer, capacity_factor, dropped):
    layer = make_layer(num_experts=4, top_k=1, capacity_factor=capacity_factor)
    with torch.no_grad():
        layer.router.proj.weight.zero_()
        layer.router.proj.weight[2] = 1.0  # positive inputs: every token picks expert 2
    _, stats = layer(tokens(64).abs())
    assert stats.expert_counts.tolist() == [0, 0, 64, 0]
    # capacity 1.0 = ceil(64 / 4) = 16 slots per expert, so 48 of expert 2's slots overflow
    assert stats.dropped_slots.item() == dropped


@pytest.mark.parametrize("num_experts", [8, 4])
def test_empty_input_returns_empty_output(make_layer, num_experts):
    layer = make_layer(num_experts=num_experts, capacity_factor=1.0)
    y, stats = layer(tokens(0))
    assert y.shape == (0, HIDDEN)
    assert stats.num_tokens == 0
    assert stats.num_slots == 0
    assert stats.expert_counts.tolist() == [0] * num_experts
    assert stats.dropped_slots.item() == 0
    assert stats.balance_loss.item() == 0.0
    assert not math.isnan(stats.entropy)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_inference_on_few_tokens_gathers_weights_and_equals_reference(make_layer, k, monkeypatch):
    layer = make_layer(top_k=k)
    xs = [tokens(n) for n in (1, 3, layer.gather_max_slots // k)]
    with torch.no_grad():
        sorted_results = [layer(x) for x in xs]
        monkeypatch.setattr(moe, "plan_dispatch", _fail)  # the sorted path is not taken
        for x, (y_sorted, stats_sorted) in zip(xs, sorted_results, strict=True):
            y, stats = layer(x)
            torch.testing.assert_close(y, reference_moe_forward(layer, x))
            torch.testing.assert_close(y, y_sorted)
            assert stats.expert_counts.tolist() == stats_sorted.expert_counts.tolist()
            assert (stats.num_slots, stats.dropped_slots.item()) == (len(x) * k, 0)
            assert torch.equal(stats.experts, stats_sorted.experts)


def test_more_slots_training_top_p_and_capacity_keep_the_sorted_dispatch(make_layer, monkeypatch):
    plans = []
    monkeypatch.setattr(moe, "plan_dispatch", lambda *a: plans.append(1) or plan_dispatch(*a))
    layer = make_layer(top_k=2)
    few = tokens(layer.gather_max_slots // 2)
    with torch.no_grad():
        layer(tokens(layer.gather_max_slots // 2 + 1))
        make_layer(router_mode="topp", top_p=0.6, min_k=1, max_k=2)(few)
        make_layer(top_k=2, capacity_factor=1.0)(few)
        make_layer(top_k=2).train()(few)
    layer(few)  # gradients wanted
    assert len(plans) == 5


@pytest.mark.parametrize(
    ("hidden", "ffn", "slots"), [(64, 128, 64), (64, 256, 32), (256, 1024, 2), (1024, 1024, 0)]
)
def test_the_gathered_path_takes_fewer_slots_the_larger_the_experts(hidden, ffn, slots):
    assert MoEFeedForward(hidden, ffn, num_experts=4, dropout=0.0).gather_max_slots == slots


def _fail(*args: object) -> None:
    raise AssertionError("sorted dispatch used")


@pytest.mark.parametrize("capacity_factor", [0.0, 0.5])
@pytest.mark.parametrize("router_mode", ["topk", "topp"])
def test_fast_dispatch_gradients_equal_reference(make_layer, capacity_factor, router_mode):
    layer = make_layer(router_mode=router_mode, capacity_factor=capacity_factor)
    x = tokens(32)
    target = torch.randn(32, HIDDEN, dtype=torch.float64)  # (N, D) a non-trivial loss direction

    def grads(forward: Callable[[Tensor], Tensor]) -> dict[str, Tensor]:
        layer.zero_grad()
        x_in = x.clone().requires_grad_(True)
        (forward(x_in) * target).sum().backward()
        named = {name: p.grad.clone() for name, p in layer.named_parameters()}
        named["input"] = x_in.grad.clone()
        return named

    fast = grads(lambda inp: layer(inp)[0])
    reference = grads(lambda inp: reference_moe_forward(layer, inp))
    assert set(fast) == {
        "router.proj.weight",
        "experts.w_in",
        "experts.b_in",
        "experts.w_out",
        "experts.b_out",
        "input",
    }
    for name in fast:
        torch.testing.assert_close(fast[name], reference[name], msg=name)
    assert fast["experts.w_in"].abs().sum() > 0


def test_capacity_keeps_first_choices_before_second_choices():
    # Expert 0 is token 0's SECOND choice but tokens 1 and 2's FIRST choice. With room for two,
    # it must keep tokens 1 and 2 (choice priority), not tokens 0 and 1 (token order).
    # Expert 1 gets token 0's first choice and tokens 1, 2's second: the later token 2 loses.
    experts = torch.tensor([[1, 0], [0, 1], [0, 1]])  # (N=3, K=2)
    routing = Routing(
        logits=torch.zeros(3, 2),
        probs=torch.full((3, 2), 0.5),
        experts=experts,
        weights=torch.full((3, 2), 0.5),
        mask=torch.ones(3, 2, dtype=torch.bool),
    )
    plan = plan_dispatch(routing, num_experts=2, capacity=2)
    kept_by_expert = [sorted(chunk.tolist()) for chunk in plan.tokens.split(plan.sizes)]
    assert kept_by_expert == [[1, 2], [0, 1]]
    assert plan.demand.tolist() == [3, 3]


def test_capacity_overflow_keeps_earliest_first_choices_then_earliest_second_choices(
    make_layer,
):
    num_experts, num_tokens = 4, 64
    layer = make_layer(num_experts=num_experts, top_k=2, capacity_factor=0.75)
    routing = layer.router(tokens(num_tokens))
    capacity = expert_capacity(0.75, int(routing.mask.sum()), num_experts)
    assert capacity is not None
    plan = plan_dispatch(routing, num_experts, capacity)
    overflowed = False
    for e, chunk in enumerate(plan.tokens.split(plan.sizes)):
        first = [t for t in range(num_tokens) if routing.experts[t, 0] == e]  # token order
        second = [t for t in range(num_tokens) if routing.experts[t, 1] == e]
        expected = first[:capacity] + second[: max(0, capacity - len(first))]
        assert sorted(chunk.tolist()) == sorted(expected), f"expert {e}"
        overflowed |= len(first) + len(second) > capacity
    assert overflowed, "the setup should overflow at least one expert"


def test_one_expert_moe_equals_dense_feed_forward():
    dense = FeedForward(HIDDEN, FFN, dropout=0.1).eval()
    layer = MoEFeedForward(HIDDEN, FFN, num_experts=1, dropout=0.1, top_k=1).eval()
    layer.experts.load_dense(0, dense)
    x = torch.randn(20, HIDDEN)
    y, stats = layer(x)
    torch.testing.assert_close(y, dense(x))
    assert stats.expert_counts.tolist() == [20]


@pytest.mark.parametrize(("num_experts", "k"), [(8, 1), (8, 2), (4, 3)])
def test_routing_stats_for_top_k(make_layer, num_experts, k):
    layer = make_layer(num_experts=num_experts, top_k=k)
    _, stats = layer(tokens(50))
    assert stats.num_tokens == 50
    assert stats.num_slots == 50 * k
    assert int(stats.expert_counts.sum()) == stats.num_slots
    assert stats.experts_per_token == k
    assert 0.0 <= stats.entropy <= math.log(num_experts)


def test_routing_stats_for_top_p(make_layer):
    layer = make_layer(router_mode="topp", top_p=0.7, min_k=2, max_k=4)
    _, stats = layer(tokens(50))
    assert int(stats.expert_counts.sum()) == stats.num_slots == int(stats.mask.sum())
    assert 2 <= stats.experts_per_token <= 4
    assert stats.experts_per_token == stats.mask.sum(-1).double().mean().item()
    assert 0.0 <= stats.entropy <= math.log(8)


def test_routing_entropy_reaches_its_bounds():
    layer = MoEFeedForward(HIDDEN, FFN, num_experts=4, dropout=0.0, top_k=1)
    with torch.no_grad():
        layer.router.proj.weight.zero_()  # uniform router: entropy = log E
    _, stats = layer(torch.randn(10, HIDDEN))
    assert stats.entropy == pytest.approx(math.log(4), rel=1e-5)
    with torch.no_grad():
        layer.router.proj.weight.zero_()
        layer.router.proj.weight[1, 0] = 1000.0  # one-hot router: entropy 0
    _, stats = layer(torch.ones(10, HIDDEN))
    assert stats.entropy == pytest.approx(0.0, abs=1e-6)
