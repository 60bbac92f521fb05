"""How a block mixes a history across positions: position encodings and the causal filter."""

from __future__ import annotations

import itertools

import pytest
import torch
from pydantic import ValidationError
from torch import Tensor

from moerec.config import ExperimentConfig
from moerec.model import SequentialRecommender
from moerec.model.encoder import CausalFilter, FourierFilter, rotary_tables, rotate
from moerec.registry import load_artefact, save_artefact
from moerec.training import train
from tests.helpers import small_model_config as model_config

NUM_ITEMS = 40
MAX_LEN = 10  # as small_model_config
NEW_FIELDS = (
    "position_encoding",
    "filter_mix",
    "filter_kind",
    "filter_cutoff",
    "embedding_norm",
    "block_norm",
)
SETTINGS = list(itertools.product(("absolute", "rotary", "none"), (0.0, 0.5)))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def histories() -> Tensor:
    """(3, MAX_LEN) left-padded: one full history, one of 7 items, one of a single item."""
    seq = torch.randint(1, NUM_ITEMS + 1, (3, MAX_LEN))
    seq[1, :5] = 0
    seq[2, :-1] = 0
    return seq


def built(position_encoding: str, filter_mix: float) -> SequentialRecommender:
    config = model_config(position_encoding=position_encoding, filter_mix=filter_mix)
    model = SequentialRecommender(config).eval()
    if model.blocks[0].filter is not None:
        with torch.no_grad():  # away from the identity it starts as
            for block in model.blocks:
                block.filter.beta.uniform_(0.2, 2.0)
    return model


# ------------------------------------------------------------------ every setting


@pytest.mark.parametrize(("position_encoding", "filter_mix"), SETTINGS)
def test_no_position_reads_a_later_item(position_encoding, filter_mix):
    model = built(position_encoding, filter_mix)
    seq = histories()
    changed = seq.clone()
    changed[:, 8:] = torch.randint(1, NUM_ITEMS + 1, (3, MAX_LEN - 8))
    before, after = model(seq).hidden, model(changed).hidden
    torch.testing.assert_close(before[0, :8], after[0, :8])
    assert not torch.allclose(before[0, 8:], after[0, 8:])  # the change does reach later ones


@pytest.mark.parametrize(("position_encoding", "filter_mix"), SETTINGS)
def test_serving_last_position_equals_the_full_forward(position_encoding, filter_mix):
    model = built(position_encoding, filter_mix)
    seq = histories()
    torch.testing.assert_close(model(seq, last_only=True).hidden[:, -1], model(seq).hidden[:, -1])


@pytest.mark.parametrize(("position_encoding", "filter_mix"), SETTINGS)
def test_left_padding_changes_nothing(position_encoding, filter_mix):
    model = built(position_encoding, filter_mix)
    seq = histories()
    torch.testing.assert_close(model(seq[1:2, 5:]).hidden[0], model(seq).hidden[1, 5:])
    torch.testing.assert_close(model(seq[2:3, -1:]).hidden[0], model(seq).hidden[2, -1:])


@pytest.mark.parametrize(
    ("position_encoding", "filter_mix", "block_norm"),
    [(*setting, "pre") for setting in SETTINGS] + [("absolute", 0.5, "post")],
)
def test_training_and_artefact_round_trip(
    position_encoding, filter_mix, block_norm, tiny_dataset, tiny_config, tmp_path
):
    config = tiny_config.model_copy(
        update={
            "model": tiny_config.model.model_copy(
                update={
                    "position_encoding": position_encoding,
                    "filter_mix": filter_mix,
                    "block_norm": block_norm,
                }
            ),
            "train": tiny_config.train.model_copy(update={"epochs": 1}),
        }
    )
    result = train(tiny_dataset, config, progress=False)
    path = save_artefact(
        tmp_path, "tiny", result.model, result.config, tiny_dataset.vocab, result.metrics(),
        tiny_dataset.fingerprint,
    )  # fmt: skip
    loaded = load_artefact(path)
    seq = torch.randint(1, tiny_dataset.num_items + 1, (4, config.model.max_len))
    assert torch.equal(result.model.eval()(seq).hidden, loaded.model(seq).hidden)


# ------------------------------------------------------------------ position encodings


def test_rotary_scores_depend_only_on_the_distance_between_slots():
    cos, sin = rotary_tables(MAX_LEN, 8)
    q, k = torch.randn(8), torch.randn(8)

    def score(query_slot: int, key_slot: int) -> Tensor:
        turned_q = rotate(q.expand(1, 1, MAX_LEN, 8), cos, sin)[0, 0, query_slot]
        turned_k = rotate(k.expand(1, 1, MAX_LEN, 8), cos, sin)[0, 0, key_slot]
        return turned_q @ turned_k

    torch.testing.assert_close(score(5, 2), score(9, 6))
    torch.testing.assert_close(score(3, 3), q @ k)  # no distance, no turn
    assert not torch.allclose(score(5, 2), score(5, 4))


def test_only_absolute_encoding_has_position_weights():
    for encoding in ("absolute", "rotary", "none"):
        keys = SequentialRecommender(model_config(position_encoding=encoding)).state_dict()
        assert any(key.startswith("position_embedding") for key in keys) == (encoding == "absolute")
        assert not any("rotary" in key for key in keys)  # rebuilt from the config, not saved


def test_without_positions_the_order_still_matters_through_the_causal_mask():
    model = built("none", 0.0)
    seq = torch.arange(1, MAX_LEN + 1)[None]
    assert not torch.allclose(model(seq).hidden[0, -1], model(seq.flip(1)).hidden[0, -1])


def test_rotary_needs_an_even_head_size():
    model_config(hidden_size=18, num_heads=3, position_encoding="rotary")  # head size 6
    with pytest.raises(ValidationError, match="even head size"):
        model_config(hidden_size=18, num_heads=2, position_encoding="rotary")
    with pytest.raises(ValidationError):
        model_config(position_encoding="learned")


# ------------------------------------------------------------------ causal filter


def test_the_filter_is_a_decaying_mean_of_the_items_so_far_plus_beta_times_the_rest():
    width, seq_len = 4, 6
    layer = CausalFilter(width, MAX_LEN)
    with torch.no_grad():
        layer.beta.copy_(torch.tensor([0.0, 0.5, 1.0, 2.0]))
    x = torch.randn(2, seq_len, width)
    present = torch.ones(2, seq_len, dtype=torch.bool)
    present[1, :2] = False  # left padding: its values must not count
    x[1, :2] = 100.0
    decay = layer.decay_logit.sigmoid()
    expected = torch.zeros(2, seq_len, width)
    for b, t in itertools.product(range(2), range(seq_len)):
        seen = [s for s in range(t + 1) if present[b, s]]
        if not seen:
            continue
        weights = torch.stack([decay ** (t - s) for s in seen])  # (n, D)
        low = (weights * x[b, seen]).sum(0) / weights.sum(0)
        expected[b, t] = low + layer.beta * (x[b, t] - low)
    out = layer(x, present)
    torch.testing.assert_close(out[0], expected[0])
    torch.testing.assert_close(out[1, 2:], expected[1, 2:])
    torch.testing.assert_close(layer(x, present, last_only=True), out[:, -1:])
    torch.testing.assert_close(out[:, :, 2], x[:, :, 2])  # beta 1: the item itself
    assert torch.isfinite(out).all()


def test_without_gradients_the_filter_reuses_its_kernel_until_the_decays_change():
    layer = CausalFilter(4, MAX_LEN)
    layer.beta.data.fill_(0.0)  # the output is then the decaying mean alone
    x, present = torch.randn(3, 7, 4), torch.ones(3, 7, dtype=torch.bool)
    present[0, :3] = False
    for seq_len, last_only in itertools.product(range(1, MAX_LEN + 1), (False, True)):
        with torch.no_grad():
            kept = layer.kernel(seq_len, last_only)
        assert torch.equal(kept, layer.kernel(seq_len, last_only))  # as built with gradients
    with torch.no_grad():
        before = layer(x, present)
        assert torch.equal(before, layer(x, present))
        assert layer.kernel(7).data_ptr() == layer.kernel(7).data_ptr()  # built once
    # a new state (a reload, a training step) must not be served the old decays' kernel
    layer.load_state_dict({**layer.state_dict(), "decay_logit": torch.zeros(4)})
    with torch.no_grad():
        after = layer(x, present)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, layer(x, present))
    optimiser = torch.optim.SGD(layer.parameters(), lr=1.0)
    layer(x, present).sum().backward()
    optimiser.step()
    with torch.no_grad():
        stepped = layer(x, present)
    torch.testing.assert_close(stepped, layer(x, present).detach())
    assert not torch.allclose(stepped, after)
    with torch.inference_mode():  # parameters without a version counter: built each time
        made_there = CausalFilter(4, MAX_LEN)
        made_there.load_state_dict(layer.state_dict())
        torch.testing.assert_close(made_there(x, present), stepped)


def test_the_filter_draws_no_random_numbers_so_other_weights_start_the_same():
    torch.manual_seed(1)
    plain = SequentialRecommender(model_config())
    torch.manual_seed(1)
    filtered = SequentialRecommender(model_config(filter_mix=0.5))
    extra = set(filtered.state_dict()) - set(plain.state_dict())
    assert extra
    assert all(".filter." in key for key in extra)
    for key, value in plain.state_dict().items():
        assert torch.equal(value, filtered.state_dict()[key]), key


def test_the_filter_is_trained():
    # At beta = 1 the decay has no gradient (the branch is then the item itself); the first
    # step moves beta, and from there both learn.
    model = built("absolute", 0.5).train()
    model(histories()).hidden.pow(2).sum().backward()
    for block in model.blocks:
        assert block.filter.beta.grad.abs().sum() > 0
        assert block.filter.decay_logit.grad.abs().sum() > 0


def test_filter_mix_is_a_weight_between_0_and_1():
    with pytest.raises(ValidationError):
        model_config(filter_mix=1.5)
    with pytest.raises(ValidationError):
        model_config(filter_mix=-0.1)


# ------------------------------------------------------------------ BSARec's Fourier filter


def test_the_fourier_filter_keeps_the_lowest_frequencies_of_the_whole_window():
    width, max_len, cutoff = 3, 8, 2
    layer = FourierFilter(width, max_len, cutoff)
    with torch.no_grad():
        layer.beta.copy_(torch.tensor([0.0, 0.5, 3.0]))
    x = torch.randn(2, 6, width, dtype=torch.float64)
    present = torch.ones(2, 6, dtype=torch.bool)
    present[1, :3] = False
    window = torch.zeros(2, max_len, width, dtype=torch.float64)
    window[:, 2:] = x * present[..., None]
    # The low part by hand: the DFT's bins 0..cutoff-1 and their mirror images, transformed back.
    t = torch.arange(max_len, dtype=torch.float64)
    low = torch.zeros_like(window)
    for k in range(cutoff):
        basis = torch.exp(2j * torch.pi * k * t / max_len)  # (L,)
        coefficient = (window * basis.conj()[None, :, None]).sum(1) / max_len  # (B, D)
        part = coefficient[:, None, :] * basis[None, :, None]
        low += (part + part.conj()).real if k else part.real
    low = low[:, 2:]
    kept = x * present[..., None]
    expected = low + layer.beta.double() * (kept - low)
    out = layer(x.float(), present)
    torch.testing.assert_close(out[0], expected[0].float(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[1, 3:], expected[1, 3:].float(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layer(x.float(), present, last_only=True), out[:, -1:])


def test_the_fourier_filter_reads_later_items_so_it_needs_prefix_training():
    config = model_config(filter_mix=0.7, filter_kind="fourier")
    model = SequentialRecommender(config).eval()
    with torch.no_grad():  # at beta = 1 the filter passes each item through unchanged
        for block in model.blocks:
            block.filter.beta.fill_(0.5)
    seq = histories()
    changed = seq.clone()
    changed[0, -1] = seq[0, -1] % NUM_ITEMS + 1
    assert not torch.allclose(model(seq).hidden[0, :-1], model(changed).hidden[0, :-1])
    with pytest.raises(ValidationError, match=r"train\.examples to 'prefixes'"):
        ExperimentConfig(model=config)
    ExperimentConfig.model_validate(
        {"model": config.model_dump(), "train": {"examples": "prefixes"}}
    )
    with pytest.raises(ValidationError, match="filter_cutoff"):
        ExperimentConfig.model_validate(
            {
                "model": {**config.model_dump(), "filter_cutoff": MAX_LEN},
                "train": {"examples": "prefixes"},
            }
        )


def test_a_fourier_model_scores_the_same_history_alike_whatever_its_padding():
    model = SequentialRecommender(model_config(filter_mix=0.7, filter_kind="fourier")).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.filter.beta.uniform_(0.2, 2.0)
    seq = histories()
    torch.testing.assert_close(model(seq[1:2, 5:]).hidden[0, -1], model(seq).hidden[1, -1])
    torch.testing.assert_close(model(seq, last_only=True).hidden[:, -1], model(seq).hidden[:, -1])


# ------------------------------------------------------------------ embedding norm


def test_the_embedding_norm_puts_every_position_at_unit_scale_and_shifts_no_weight():
    torch.manual_seed(1)
    plain = SequentialRecommender(model_config())
    torch.manual_seed(1)
    normed = SequentialRecommender(model_config(embedding_norm=True))
    extra = set(normed.state_dict()) - set(plain.state_dict())
    assert extra == {"embedding_norm.weight", "embedding_norm.bias"}
    for key, value in plain.state_dict().items():
        assert torch.equal(value, normed.state_dict()[key]), key
    seen: list[Tensor] = []
    normed.blocks[0].register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    normed.eval()(histories())
    spread = seen[0].std(dim=-1, unbiased=False)  # (B, T): each position's scale
    torch.testing.assert_close(spread, torch.ones_like(spread), atol=0.05, rtol=0)  # not ~0.03
    assert not torch.allclose(plain.eval()(histories()).hidden, normed(histories()).hidden)


# ------------------------------------------------------------------ post-norm blocks


@pytest.mark.parametrize("filter_mix", [0.0, 0.5])
def test_post_norm_blocks_stay_causal_and_end_each_block_at_unit_scale(filter_mix):
    torch.manual_seed(1)
    pre = SequentialRecommender(model_config(filter_mix=filter_mix))
    torch.manual_seed(1)
    post = SequentialRecommender(model_config(filter_mix=filter_mix, block_norm="post")).eval()
    # The same layers drawn the same way; only the final norm goes (the blocks end normalised).
    assert set(pre.state_dict()) - set(post.state_dict()) == {
        "final_norm.weight",
        "final_norm.bias",
    }
    for key, value in post.state_dict().items():
        assert torch.equal(value, pre.state_dict()[key]), key

    seq = histories()
    changed = seq.clone()
    changed[:, 8:] = torch.randint(1, NUM_ITEMS + 1, (3, MAX_LEN - 8))
    before, after = post(seq).hidden, post(changed).hidden
    torch.testing.assert_close(before[0, :8], after[0, :8])
    assert not torch.allclose(before[0, 8:], after[0, 8:])
    torch.testing.assert_close(post(seq, last_only=True).hidden[:, -1], before[:, -1])

    outputs: list[Tensor] = []
    for block in post.blocks:
        block.register_forward_hook(lambda _, __, out: outputs.append(out[0]))
    post(seq)
    for out in outputs:  # LN(x + FFN(x)) with the gains at 1: every position at unit scale
        spread = out.std(dim=-1, unbiased=False)
        torch.testing.assert_close(spread, torch.ones_like(spread), atol=1e-3, rtol=0)
    assert not torch.allclose(pre.eval()(seq).hidden, before)


# ------------------------------------------------------------------ older artefacts


def test_an_old_manifest_and_state_dict_load_strictly_and_build_the_same_model():
    torch.manual_seed(1)
    saved = SequentialRecommender(model_config()).state_dict()
    manifest = ExperimentConfig(model=model_config()).to_dict()
    for key in NEW_FIELDS:
        del manifest["model"][key]
    config = ExperimentConfig.model_validate(manifest)
    assert (config.model.position_encoding, config.model.filter_mix) == ("absolute", 0.0)
    torch.manual_seed(1)
    rebuilt = SequentialRecommender(config.model)
    rebuilt.load_state_dict(saved, strict=True)
    for key, value in saved.items():
        assert torch.equal(value, rebuilt.state_dict()[key]), key
