import json

import pytest
import torch

from moerec.model import SequentialRecommender
from moerec.training import (
    TrainingDivergedError,
    TrainingError,
    seed_everything,
    sequence_loss,
    train,
)
from tests.helpers import small_config


def test_same_seed_gives_identical_weights_and_metrics(tiny_dataset):
    config = small_config(epochs=2)
    first = train(tiny_dataset, config, progress=False)
    second = train(tiny_dataset, config, progress=False)
    assert first.test.metrics == second.test.metrics
    for key, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[key]), key


def test_training_learns_far_better_than_chance(trained, tiny_dataset):
    chance_hr10 = 10 / tiny_dataset.num_items
    assert trained.test.metrics["hr@10"] > 3 * chance_hr10
    assert trained.history[1]["loss"] > trained.history[-2]["loss"]  # epoch 1 vs last epoch


def test_early_stopping_after_patience_epochs_without_improvement(tiny_dataset):
    # A learning rate this small cannot move validation NDCG: epoch 1 stays the best.
    config = small_config(epochs=20, patience=2, learning_rate=1e-12)
    result = train(tiny_dataset, config, progress=False)
    assert result.best_epoch == 1
    assert result.epochs_run == 3


def test_a_spent_time_budget_stops_after_the_epoch_and_keeps_the_best(tiny_dataset, tmp_path):
    # Any real epoch outlasts a budget of a microsecond: the run ends after its first epoch.
    config = small_config(epochs=20, patience=20, time_budget_minutes=1e-8)
    result = train(tiny_dataset, config, run_dir=tmp_path, progress=False)
    assert result.epochs_run == 1
    assert result.best_epoch == 1
    epochs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r.get("stopped") for r in epochs if r.get("event") == "epoch"] == ["time budget"]


def test_a_generous_time_budget_changes_nothing(tiny_dataset):
    plain = train(tiny_dataset, small_config(epochs=2), progress=False)
    budgeted = train(tiny_dataset, small_config(epochs=2, time_budget_minutes=60), progress=False)
    assert budgeted.epochs_run == 2
    assert budgeted.test.metrics == plain.test.metrics


def test_run_log_and_plots_are_written(trained):
    lines = (trained.run_dir / "log.jsonl").read_text().splitlines()
    events = [json.loads(line)["event"] for line in lines]
    assert events[0] == "start"
    assert events[-1] == "end"
    assert events.count("epoch") == trained.epochs_run
    epoch = json.loads(lines[1])
    assert {"loss", "aux_loss", "valid", "routing", "lr"} <= epoch.keys()
    assert len(epoch["routing"]["layers"][0]["load"]) == 4
    for plot in ("loss.png", "valid_ndcg.png", "expert_load.png"):
        assert (trained.run_dir / "plots" / plot).stat().st_size > 1000


def test_resuming_from_a_checkpoint_matches_an_uninterrupted_run(tiny_dataset, tmp_path):
    straight = train(tiny_dataset, small_config(epochs=3, patience=10), progress=False)
    train(tiny_dataset, small_config(epochs=2, patience=10), run_dir=tmp_path, progress=False)
    resumed = train(
        tiny_dataset,
        small_config(epochs=3, patience=10),
        run_dir=tmp_path,
        progress=False,
        resume=True,
    )
    assert resumed.epochs_run == 3
    assert resumed.test.metrics == straight.test.metrics


def test_loss_ignores_left_padding(tiny_config):
    config = tiny_config.with_num_items(50).model
    seed_everything(0)
    model = SequentialRecommender(config).eval()
    inputs = torch.tensor([[4, 8, 15, 16]])
    targets = torch.tensor([[8, 15, 16, 23]])
    padded_in = torch.cat([torch.zeros(1, 3, dtype=torch.long), inputs], dim=1)
    padded_tg = torch.cat([torch.zeros(1, 3, dtype=torch.long), targets], dim=1)
    plain, _, _ = sequence_loss(model, inputs, targets, 0.0)
    padded, _, _ = sequence_loss(model, padded_in, padded_tg, 0.0)
    torch.testing.assert_close(plain, padded)


def test_resume_without_a_checkpoint_is_an_error_not_a_fresh_start(tiny_dataset, tmp_path):
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(tiny_dataset, small_config(epochs=1), run_dir=tmp_path, progress=False, resume=True)


def test_resume_with_other_settings_is_refused(tiny_dataset, tmp_path):
    train(tiny_dataset, small_config(epochs=1), run_dir=tmp_path, progress=False)
    changed = small_config(epochs=2, learning_rate=0.01)
    with pytest.raises(TrainingError, match="another model/training config"):
        train(tiny_dataset, changed, run_dir=tmp_path, progress=False, resume=True)


def test_resuming_an_early_stopped_run_trains_no_further(tiny_dataset, tmp_path):
    config = small_config(epochs=20, patience=1, learning_rate=1e-12)
    stopped = train(tiny_dataset, config, run_dir=tmp_path, progress=False)
    resumed = train(tiny_dataset, config, run_dir=tmp_path, progress=False, resume=True)
    assert resumed.epochs_run == stopped.epochs_run == 2
    assert resumed.test.metrics == stopped.test.metrics


def test_a_diverging_run_stops_with_a_clear_error(tiny_dataset):
    config = small_config(epochs=3, learning_rate=1e30, grad_clip=0.0, warmup_steps=0)
    with pytest.raises(TrainingDivergedError, match="learning_rate"):
        train(tiny_dataset, config, progress=False)
