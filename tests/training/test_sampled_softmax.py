import math

import numpy as np
import pytest
import torch

from moerec.config import ConfigError, TrainConfig
from moerec.evaluation import evaluate_popularity
from moerec.model import SequentialRecommender
from moerec.training import (
    NegativeSampler,
    SampledSoftmax,
    SequenceLoss,
    TrainingError,
    sampled_softmax_loss,
    seed_everything,
    sequence_loss,
    train,
    train_step,
)
from moerec.training.optim import build_optimizer, build_scheduler
from moerec.training.sampled_softmax import NegativeSample, batch_counts
from tests.helpers import small_config


def _sample(items, log_q, positive_log_q):
    return NegativeSample(
        items=torch.tensor(items),
        log_q=torch.tensor(log_q, dtype=torch.float32),
        positive_log_q=torch.tensor(positive_log_q, dtype=torch.float32),
    )


def test_logq_correction_subtracts_each_candidates_log_expected_count():
    # one position: positive item 3 (logit 2.0, Q = 2), negatives 7 (1.0, Q = 0.5), 9 (0.5, Q = 4)
    sample = _sample([7, 9], [math.log(0.5), math.log(4.0)], [math.log(2.0)])
    pos, neg, positives = torch.tensor([2.0]), torch.tensor([[1.0, 0.5]]), torch.tensor([3])

    corrected = [2.0 - math.log(2.0), 1.0 - math.log(0.5), 0.5 - math.log(4.0)]
    expected = -corrected[0] + math.log(sum(math.exp(x) for x in corrected))
    loss = sampled_softmax_loss(pos, neg, positives, sample, logq_correction=True)
    assert loss.item() == pytest.approx(expected, rel=1e-6)

    plain = -2.0 + math.log(math.exp(2.0) + math.exp(1.0) + math.exp(0.5))
    loss = sampled_softmax_loss(pos, neg, positives, sample, logq_correction=False)
    assert loss.item() == pytest.approx(plain, rel=1e-6)


def test_a_negative_equal_to_the_positive_is_masked_not_counted():
    # shared negatives 3 and 7; position 0's positive is 3 (an accidental hit), position 1's is 5
    sample = _sample([3, 7], [0.0, 0.0], [0.0, 0.0])
    pos = torch.tensor([2.0, 1.0])
    neg = torch.tensor([[2.5, 0.5], [2.5, 0.5]], requires_grad=True)
    loss = sampled_softmax_loss(pos, neg, torch.tensor([3, 5]), sample)
    row0 = -2.0 + math.log(math.exp(2.0) + math.exp(0.5))  # item 3 left out
    row1 = -1.0 + math.log(math.exp(1.0) + math.exp(2.5) + math.exp(0.5))
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    loss.backward()
    assert neg.grad is not None
    assert neg.grad[0, 0].item() == 0.0  # the masked hit gets no gradient
    assert neg.grad[1, 0].item() > 0.0  # the same item is a real negative for position 1


class _EveryItemOnce(NegativeSampler):
    """Every item of the catalogue exactly once: Q = 1, so log Q = 0 for every candidate."""

    def sample(self, positives):
        items = torch.arange(1, self.num_items + 1)
        return NegativeSample(items, torch.zeros(self.num_items), torch.zeros(len(positives)))


def test_with_every_item_once_as_negatives_the_sampled_loss_is_the_full_cross_entropy(
    tiny_config,
):
    config = tiny_config.with_num_items(40).model
    seed_everything(0)
    model = SequentialRecommender(config).eval()
    inputs = torch.tensor([[0, 4, 8, 15], [16, 23, 32, 7]])
    targets = torch.tensor([[0, 8, 15, 16], [23, 32, 7, 9]])
    full, _, _ = sequence_loss(model, inputs, targets, 0.0)
    sampled = SampledSoftmax(_EveryItemOnce("uniform", 40, 40, seed=0))
    estimate, _, _ = sequence_loss(model, inputs, targets, 0.0, sampled)
    torch.testing.assert_close(estimate, full, rtol=1e-5, atol=1e-6)


def test_the_sampled_loss_never_scores_the_whole_catalogue(tiny_config, monkeypatch):
    config = tiny_config.with_num_items(40).model
    model = SequentialRecommender(config)

    def refuse(*args, **kwargs):
        raise AssertionError("the full item table was scored")

    monkeypatch.setattr(model, "item_logits", refuse)
    monkeypatch.setattr(model, "score", refuse)
    sampled = SampledSoftmax(NegativeSampler("uniform", 40, 8, seed=0))
    loss, _, _ = sequence_loss(
        model, torch.tensor([[1, 2, 3]]), torch.tensor([[2, 3, 4]]), 0.0, sampled
    )
    assert torch.isfinite(loss)


def test_uniform_sampler_draws_real_items_with_equal_expected_counts():
    sampler = NegativeSampler("uniform", num_items=50, num_negatives=20, seed=1)
    sample = sampler.sample(torch.tensor([3, 4, 5]))
    assert sample.items.shape == (20,)
    assert bool(((sample.items >= 1) & (sample.items <= 50)).all())
    torch.testing.assert_close(sample.log_q, torch.full((20,), math.log(20 / 50)))
    torch.testing.assert_close(sample.positive_log_q, torch.full((3,), math.log(20 / 50)))


def test_popularity_sampler_draws_items_in_proportion_to_their_counts():
    counts = np.array([0, 1, 0, 3, 6])  # id 0 is padding; item 2 was never seen
    sampler = NegativeSampler("popularity", 4, 20_000, seed=2, item_counts=counts)
    sample = sampler.sample(torch.tensor([3]))
    frequency = np.bincount(sample.items.numpy(), minlength=5) / 20_000
    assert frequency[0] == frequency[2] == 0.0
    np.testing.assert_allclose(frequency[[1, 3, 4]], [0.1, 0.3, 0.6], atol=0.02)
    expected = torch.log(20_000 * torch.tensor(counts / 10.0)[sample.items]).float()
    torch.testing.assert_close(sample.log_q, expected)
    assert sample.positive_log_q.item() == pytest.approx(math.log(20_000 * 0.3))


def test_in_batch_negatives_are_the_batchs_own_next_items():
    positives = torch.tensor([4, 4, 2, 9])
    sample = NegativeSampler("in-batch", 100, 256, seed=3).sample(positives)
    assert sorted(sample.items.tolist()) == [2, 4, 4, 9]  # M ≤ N: every position once
    log_count = {2: math.log(1), 4: math.log(2), 9: math.log(1)}
    assert sample.log_q.tolist() == pytest.approx([log_count[i] for i in sample.items.tolist()])
    assert sample.positive_log_q.tolist() == pytest.approx([log_count[i] for i in [4, 4, 2, 9]])

    many = torch.tensor([5] * 30 + [6] * 10)  # M = 40 > N = 8: 8 positions drawn
    sample = NegativeSampler("in-batch", 100, 8, seed=3).sample(many)
    assert sample.items.shape == (8,)
    expected = {5: math.log(8 * 30 / 40), 6: math.log(8 * 10 / 40)}
    assert sample.log_q.tolist() == pytest.approx([expected[i] for i in sample.items.tolist()])


def test_mixed_sampler_adds_the_expected_counts_of_both_sources():
    positives = torch.tensor([7, 7, 8])
    sample = NegativeSampler("mixed", 50, 6, seed=4).sample(positives)
    in_batch, uniform = sample.items[:3], sample.items[3:]
    assert sorted(in_batch.tolist()) == [7, 7, 8]
    counts = batch_counts(positives, sample.items).double()
    expected = torch.log(3 * counts / 3 + 3 / 50).float()
    torch.testing.assert_close(sample.log_q, expected)
    assert uniform.shape == (3,)
    assert sample.positive_log_q.tolist() == pytest.approx(
        [math.log(2 + 3 / 50), math.log(2 + 3 / 50), math.log(1 + 3 / 50)]
    )


def test_each_rank_and_each_step_draws_its_own_reproducible_negatives():
    def draw(rank, draws):
        sampler = NegativeSampler("uniform", 10_000, 64, seed=7, rank=rank)
        sampler.draws = draws
        return sampler.sample(torch.tensor([1])).items

    assert torch.equal(draw(0, 0), draw(0, 0))
    assert not torch.equal(draw(0, 0), draw(1, 0))
    assert not torch.equal(draw(0, 0), draw(0, 1))
    sampler = NegativeSampler("uniform", 10_000, 64, seed=7)
    sampler.sample(torch.tensor([1]))
    assert torch.equal(sampler.sample(torch.tensor([1])).items, draw(0, 1))


def test_full_cross_entropy_stays_the_default_and_label_smoothing_needs_it():
    assert TrainConfig().loss == "ce"
    with pytest.raises(ValueError, match="label_smoothing"):
        TrainConfig(loss="sampled", label_smoothing=0.1)
    with pytest.raises(ConfigError, match="label_smoothing"):
        small_config(loss="sampled", label_smoothing=0.1)


def test_a_bare_model_cannot_take_a_sampled_step(tiny_config):
    config = small_config(loss="sampled")
    model = SequentialRecommender(tiny_config.with_num_items(20).model)
    optimizer = build_optimizer(model, config.train)
    scheduler = build_scheduler(optimizer, config.train, 10)
    inputs, targets = torch.tensor([[1, 2]]), torch.tensor([[2, 3]])
    with pytest.raises(TrainingError, match="negative sampler"):
        train_step(model, optimizer, scheduler, inputs, targets, config.train)
    sampled = SampledSoftmax(NegativeSampler("uniform", 20, 4, seed=0))
    ce, _, _ = train_step(
        SequenceLoss(model, sampled), optimizer, scheduler, inputs, targets, config.train
    )
    assert torch.isfinite(ce)


def test_training_with_the_sampled_loss_learns_beyond_popularity(tiny_dataset):
    config = small_config(
        epochs=5, learning_rate=3e-3, loss="sampled", num_negatives=32, negative_sampler="mixed"
    )
    result = train(tiny_dataset, config, progress=False)
    split = tiny_dataset.split
    popular = evaluate_popularity(split.train, split.test, tiny_dataset.num_items)
    assert result.test.metrics["hr@10"] > 3 * 10 / tiny_dataset.num_items  # chance: 10 / V
    assert result.test.metrics["ndcg@10"] > 1.5 * popular.metrics["ndcg@10"]


def test_a_resumed_sampled_run_draws_the_negatives_an_uninterrupted_one_draws(
    tiny_dataset, tmp_path
):
    def config(epochs):
        return small_config(epochs=epochs, patience=10, loss="sampled", num_negatives=8)

    straight = train(tiny_dataset, config(2), progress=False)
    train(tiny_dataset, config(1), run_dir=tmp_path, progress=False)
    resumed = train(tiny_dataset, config(2), run_dir=tmp_path, progress=False, resume=True)
    for key, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[key]), key
