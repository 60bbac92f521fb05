"""Shared always-on experts (DeepSeekMoE) and auxiliary-loss-free bias balancing (DeepSeek-V3)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pydantic import ValidationError
from torch import Tensor

from moerec.config import ExperimentConfig, ModelConfig, dense_variant
from moerec.evaluation.cost import measure_cost
from moerec.model import MoEFeedForward, Router, SequentialRecommender
from moerec.model.reference import reference_moe_forward
from moerec.registry import load_artefact, save_artefact
from moerec.training import train
from tests.helpers import small_model_config as model_config

HIDDEN = 16
FFN = 24
NUM_ITEMS = 40
MAX_LEN = 10
NEW_FIELDS = ("moe_num_shared_experts", "moe_balance", "moe_bias_update_rate")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def layer(**kwargs: object) -> MoEFeedForward:
    """An eval-mode layer with fp64 experts, routing sharper than the default init."""
    built = MoEFeedForward(
        hidden_size=HIDDEN, ffn_hidden_size=FFN, num_experts=8, dropout=0.0, **kwargs
    )
    with torch.no_grad():
        built.router.proj.weight.mul_(3.0)
    built.experts.double()
    if built.shared_experts is not None:
        built.shared_experts.double()
    return built.eval()


def tokens(n: int) -> Tensor:
    return torch.randn(n, HIDDEN, dtype=torch.float64)  # (N, D)


def items(batch: int = 4) -> Tensor:
    seq = torch.randint(1, NUM_ITEMS + 1, (batch, MAX_LEN))  # (B, T)
    seq[0, :4] = 0  # one left-padded history
    return seq


def routers(model: SequentialRecommender) -> list[Router]:
    return [block.ffn.router for block in model.blocks]


# ------------------------------------------------------------------ defaults change nothing


def test_a_config_without_the_new_fields_builds_the_same_model_bit_for_bit():
    explicit = model_config(moe_num_shared_experts=0, moe_balance="aux_loss")
    old = {k: v for k, v in explicit.model_dump().items() if k not in NEW_FIELDS}
    torch.manual_seed(1)
    before = SequentialRecommender(ModelConfig.model_validate(old))
    torch.manual_seed(1)
    after = SequentialRecommender(explicit)
    old_keys = set(before.state_dict())
    assert old_keys == set(after.state_dict())
    assert not any("expert_bias" in key or "shared_experts" in key for key in old_keys)
    for key, value in before.state_dict().items():
        assert torch.equal(value, after.state_dict()[key]), key
    seq = items()
    for mode in (True, False):  # dropout, aux loss and routing alike in both modes
        before.train(mode)
        after.train(mode)
        torch.manual_seed(2)
        out_before = before(seq)
        torch.manual_seed(2)
        out_after = after(seq)
        assert torch.equal(out_before.hidden, out_after.hidden)
        assert torch.equal(out_before.aux_loss, out_after.aux_loss)


def test_an_old_manifest_and_state_dict_load_strictly():
    saved = SequentialRecommender(model_config()).state_dict()
    manifest = ExperimentConfig(model=model_config()).to_dict()
    for key in NEW_FIELDS:
        del manifest["model"][key]
    config = ExperimentConfig.model_validate(manifest)
    assert config.model.moe_num_shared_experts == 0
    assert config.model.moe_balance == "aux_loss"
    SequentialRecommender(config.model).load_state_dict(saved, strict=True)


# ------------------------------------------------------------------ shared experts


def test_shared_experts_add_one_always_on_ffn_to_the_routed_output():
    moe = layer(top_k=2, num_shared_experts=2)
    assert moe.shared_experts is not None
    assert moe.shared_experts.fc_in.out_features == 2 * FFN
    x = tokens(32)
    y, stats = moe(x)
    routed_only = y - moe.shared_experts(x)
    shared = moe.shared_experts
    moe.shared_experts = None
    try:
        expected, _ = moe(x)
    finally:
        moe.shared_experts = shared
    torch.testing.assert_close(routed_only, expected)
    assert not torch.allclose(y, expected)  # the shared experts do change the output
    # Statistics describe the routed experts only.
    assert stats.expert_counts.numel() == 8
    assert int(stats.expert_counts.sum()) == stats.num_slots == 32 * 2
    assert stats.experts_per_token == 2


@pytest.mark.parametrize("router_mode", ["topk", "topp"])
def test_shared_experts_fast_dispatch_equals_reference(router_mode):
    moe = layer(router_mode=router_mode, num_shared_experts=1, capacity_factor_eval=0.5)
    x = tokens(40)
    y, stats = moe(x)
    assert stats.dropped_slots.item() > 0  # a dropped slot still gets the shared experts
    torch.testing.assert_close(y, reference_moe_forward(moe, x))


def test_shared_experts_are_trained():
    moe = layer(num_shared_experts=1).train()
    y, _ = moe(tokens(16))
    y.square().sum().backward()
    assert moe.shared_experts is not None
    for name, p in moe.shared_experts.named_parameters():
        assert p.grad is not None
        assert p.grad.abs().sum() > 0, name


def test_shared_experts_need_a_moe_model():
    with pytest.raises(ValidationError, match="moe_num_shared_experts"):
        ModelConfig(moe_num_experts=1, moe_top_k=1, moe_num_shared_experts=1)
    with pytest.raises(ValidationError):
        ModelConfig(moe_num_shared_experts=-1)


@pytest.mark.parametrize(
    ("router", "shared", "active", "params"),
    [("topk", 0, 2, 4), ("topk", 1, 3, 5), ("topk", 2, 4, 6), ("topp", 1, 4, 5)],
)
def test_dense_variants_are_sized_with_the_shared_experts(router, shared, active, params):
    config = model_config(
        moe_router=router, moe_min_k=1, moe_max_k=3, moe_num_shared_experts=shared
    )
    assert config.active_experts == active
    for variant, width in (("dense-active", active), ("dense-params", params)):
        dense = dense_variant(config, variant)
        assert dense.ffn_hidden_size == width * config.ffn_hidden_size, variant
        assert not dense.is_moe
        assert dense.moe_num_shared_experts == 0
        ModelConfig.model_validate(dense.model_dump())  # a valid config, not only a copy
    assert dense_variant(config, "moe") == config


def test_cost_counts_shared_experts_as_always_active():
    layers, experts, k, shared, hidden, ffn = 2, 4, 2, 1, 32, 32
    config = model_config(moe_num_shared_experts=shared)
    model = SequentialRecommender(config)
    plain = measure_cost(SequentialRecommender(model_config()))
    cost = measure_cost(model)

    one_expert = 2 * hidden * ffn + ffn + hidden
    shared_params = layers * (2 * hidden * shared * ffn + shared * ffn + hidden)
    assert cost.expert_params == plain.expert_params == layers * experts * one_expert
    assert cost.ffn_params == plain.ffn_params + shared_params
    assert cost.total_params == plain.total_params + shared_params
    # Routed experts count k/E; the shared ones count in full.
    assert cost.active_params_per_token == pytest.approx(
        plain.active_params_per_token + shared_params
    )
    assert cost.experts_per_token == k  # routed experts per token, as the routing stats say

    tokens_routed = (layers - 1) * config.max_len + 1  # the final block runs the last item only
    router = 2 * tokens_routed * hidden * experts
    expert_pass = tokens_routed * 2 * 2 * hidden * ffn
    assert cost.ffn_flops_per_request == router + (k + shared) * expert_pass
    # dense-active matches that compute up to the router; dense-params holds as many parameters
    # up to (E + S - 1)·D expert output biases per layer.
    active = measure_cost(SequentialRecommender(dense_variant(config, "dense-active")))
    assert cost.ffn_flops_per_request - active.ffn_flops_per_request == router
    params = measure_cost(SequentialRecommender(dense_variant(config, "dense-params")))
    routed_and_shared = cost.ffn_params - layers * hidden * experts
    assert routed_and_shared - params.ffn_params == layers * (experts + shared - 1) * hidden


# ------------------------------------------------------------------ bias balancing


def biased_router(probs: list[list[float]], **kwargs: object) -> tuple[Router, Tensor]:
    """A bias-balancing router whose softmax output is exactly ``probs`` for the returned x."""
    probs_t = torch.tensor(probs)  # (N, E)
    num_experts = probs_t.shape[1]
    router = Router(num_experts, num_experts, balance="bias", **kwargs)
    with torch.no_grad():
        router.proj.weight.copy_(torch.eye(num_experts))
    return router, probs_t.log()


def test_the_bias_is_a_buffer_only_in_bias_mode():
    assert Router(HIDDEN, 8).expert_bias is None
    router = Router(HIDDEN, 8, balance="bias")
    assert router.expert_bias is not None
    assert torch.equal(router.expert_bias, torch.zeros(8))
    assert "expert_bias" in router.state_dict()
    assert not any("bias" in name for name, _ in router.named_parameters())
    with pytest.raises(ValueError, match="balance"):
        Router(HIDDEN, 8, balance="loss-free")


def test_the_bias_chooses_experts_but_the_weights_stay_unbiased():
    router, x = biased_router([[0.5, 0.3, 0.15, 0.05]], top_k=2)
    router.eval()
    assert router(x).experts.tolist() == [[0, 1]]
    with torch.no_grad():
        router.expert_bias.copy_(torch.tensor([0.0, 0.0, 0.4, 0.0]))  # 0.15 + 0.4 beats 0.5
    routing = router(x)
    assert routing.experts.tolist() == [[2, 0]]
    torch.testing.assert_close(routing.weights, torch.tensor([[0.15, 0.5]]) / 0.65)
    torch.testing.assert_close(routing.probs, torch.tensor([[0.5, 0.3, 0.15, 0.05]]))


def test_top_p_with_bias_follows_the_biased_order_with_the_true_mass():
    router, x = biased_router([[0.5, 0.3, 0.15, 0.05]], mode="topp", top_p=0.6, min_k=1, max_k=4)
    router.eval()
    with torch.no_grad():
        router.expert_bias.copy_(torch.tensor([0.0, 0.0, 0.5, 0.0]))
    routing = router(x)
    # biased order 2, 0, 1, 3; true mass before each slot 0, .15, .65, .95 -> two slots
    assert routing.experts[0, :2].tolist() == [2, 0]
    assert routing.mask.tolist() == [[True, True, False, False]]
    torch.testing.assert_close(routing.weights[0, :2], torch.tensor([0.15, 0.5]) / 0.65)
    assert (routing.weights[~routing.mask] == 0).all()


@pytest.mark.parametrize("router_mode", ["topk", "topp"])
def test_one_training_pass_moves_the_bias_by_the_sign_of_mean_minus_load(router_mode):
    rate = 0.01
    router, x = biased_router(
        [[0.6, 0.3, 0.05, 0.05], [0.55, 0.1, 0.25, 0.1], [0.1, 0.2, 0.3, 0.4]],
        mode=router_mode,
        top_k=1,
        top_p=0.5,
        min_k=1,
        max_k=2,
        bias_update_rate=rate,
    )
    routing = router.train()(x)
    # top-1: experts 0, 0, 3; top-p 0.5 (max 2): [0], [0], [3, 2] -> used slots only count
    load = torch.bincount(routing.experts[routing.mask], minlength=4).float()
    expected_load = [2.0, 0.0, 0.0, 1.0] if router_mode == "topk" else [2.0, 0.0, 1.0, 1.0]
    assert load.tolist() == expected_load
    assert router.expert_bias is not None
    torch.testing.assert_close(router.expert_bias, rate * torch.sign(load.mean() - load))
    if router_mode == "topp":
        assert router.expert_bias[2].item() == 0.0  # load equal to the mean: no step


@pytest.mark.parametrize("router_mode", ["topk", "topp"])
def test_an_imbalanced_router_is_pulled_towards_balance(router_mode):
    moe = layer(router_mode=router_mode, top_k=2, min_k=1, max_k=3, balance="bias",
                bias_update_rate=0.02)  # fmt: skip
    with torch.no_grad():
        moe.router.proj.weight[0] += 0.3  # positive inputs: expert 0 is most tokens' favourite
    x = tokens(128).abs()
    moe.train()

    def spread(counts: Tensor) -> float:
        return float(counts.max() - counts.min()) / float(counts.sum())

    _, first = moe(x)
    start = spread(first.expert_counts)
    assert first.expert_counts.argmax().item() == 0
    assert start > 0.4
    for _ in range(40):  # the router's weights never change: only the bias can rebalance
        _, stats = moe(x)
    assert moe.router.expert_bias is not None
    assert moe.router.expert_bias[0].item() < 0  # the hot expert was pushed down
    assert moe.router.expert_bias.max().item() > 0  # and cold ones were pulled up
    assert stats.expert_counts[0] < first.expert_counts[0]
    assert spread(stats.expert_counts) < 0.6 * start
    assert stats.balance_loss.item() == 0.0  # no Switch loss in bias mode


def test_evaluation_never_moves_the_bias():
    moe = layer(balance="bias", bias_update_rate=0.05)
    x = tokens(64).abs()
    for _ in range(5):
        moe(x)  # eval mode
    with torch.no_grad():
        moe(x)
    assert moe.router.expert_bias is not None
    assert torch.equal(moe.router.expert_bias, torch.zeros(8))
    moe.train()
    with torch.no_grad():
        moe(x)
    assert moe.router.expert_bias.abs().sum() > 0  # the same pass in training mode does


def test_bias_mode_drops_the_switch_loss_but_keeps_the_z_loss_and_router_gradients():
    config = model_config(moe_balance="bias")
    model = SequentialRecommender(config).train()
    out = model(items())
    for stats in out.routing:
        assert stats.balance_loss.item() == 0.0
    expected = sum(config.moe_z_coef * s.z_loss for s in out.routing)
    torch.testing.assert_close(out.aux_loss, expected)
    (model.score(out.hidden[:, -1])[:, 1:].logsumexp(-1).sum() + out.aux_loss).backward()
    for router in routers(model):
        assert router.proj.weight.grad is not None
        assert router.proj.weight.grad.abs().sum() > 0


def test_the_model_updates_each_layer_from_its_own_real_tokens():
    rate = 0.003
    model = SequentialRecommender(model_config(moe_balance="bias", moe_bias_update_rate=rate))
    out = model.train()(items())
    for router, stats in zip(routers(model), out.routing, strict=True):
        assert stats.num_tokens == int(out.token_mask.sum())  # padding excluded
        load = stats.expert_counts.float()
        assert router.expert_bias is not None
        torch.testing.assert_close(router.expert_bias, rate * torch.sign(load.mean() - load))


def test_bias_and_shared_experts_survive_a_state_dict_round_trip():
    config = model_config(moe_balance="bias", moe_num_shared_experts=1, moe_bias_update_rate=0.05)
    model = SequentialRecommender(config).train()
    for _ in range(3):
        model(items())
    state = model.state_dict()
    assert {"blocks.0.ffn.router.expert_bias", "blocks.1.ffn.router.expert_bias"} <= set(state)
    assert state["blocks.0.ffn.router.expert_bias"].abs().sum() > 0
    fresh = SequentialRecommender(config)
    fresh.load_state_dict(state, strict=True)
    for a, b in zip(routers(model), routers(fresh), strict=True):
        assert torch.equal(a.expert_bias, b.expert_bias)
    seq = items()
    assert torch.equal(model.eval()(seq).hidden, fresh.eval()(seq).hidden)
    # A bias-mode model needs its bias: a state dict without it is refused, not zero-filled.
    with pytest.raises(RuntimeError, match="expert_bias"):
        fresh.load_state_dict(SequentialRecommender(model_config()).state_dict(), strict=True)


def test_training_and_artefact_round_trip_with_both_options(tiny_dataset, tiny_config, tmp_path):
    config = tiny_config.model_copy(
        update={
            "model": tiny_config.model.model_copy(
                update={"moe_balance": "bias", "moe_num_shared_experts": 1}
            ),
            "train": tiny_config.train.model_copy(update={"epochs": 1}),
        }
    )
    result = train(tiny_dataset, config, progress=False)
    biases = [r.expert_bias for r in routers(result.model)]
    assert all(b is not None and b.abs().sum() > 0 for b in biases)
    path = save_artefact(
        tmp_path, "tiny", result.model, result.config, tiny_dataset.vocab, result.metrics(),
        tiny_dataset.fingerprint,
    )  # fmt: skip
    loaded = load_artefact(path)
    for saved, restored in zip(biases, routers(loaded.model), strict=True):
        assert torch.equal(saved, restored.expert_bias)
    seq = items()
    assert torch.equal(result.model.eval()(seq).hidden, loaded.model(seq).hidden)


# ------------------------------------------------------------------ data-parallel agreement


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bias_after_one_pass(x: Tensor) -> Tensor:
    torch.manual_seed(3)
    router = Router(HIDDEN, 8, top_k=2, balance="bias", bias_update_rate=0.01).train()
    router(x)
    assert router.expert_bias is not None
    return router.expert_bias.clone()


def _rank_main(rank: int, world: int, port: int, x: Tensor, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        share = x.chunk(world)[rank]
        torch.save(_bias_after_one_pass(share), Path(out_dir) / f"bias{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_processes_sum_their_loads_so_every_copy_keeps_the_single_process_bias(tmp_path):
    # Rank 0's half of the batch routes mostly to other experts than rank 1's half, so the
    # per-process steps would differ; the summed loads give every process the full batch's step.
    x = torch.randn(64, HIDDEN)
    x[:32] += 2.0
    alone = _bias_after_one_pass(x)
    local = [_bias_after_one_pass(half) for half in x.chunk(2)]
    assert any(not torch.equal(bias, alone) for bias in local)
    mp.spawn(_rank_main, args=(2, _free_port(), x, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        assert torch.equal(torch.load(tmp_path / f"bias{rank}.pt"), alone)
