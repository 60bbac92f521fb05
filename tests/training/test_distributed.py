"""Data-parallel training: torchrun with 2 processes takes the steps one process takes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
from typer.testing import CliRunner

from moerec.cli import app
from moerec.data.synthetic import generate_interactions, write_csv
from moerec.model.moe import MoEFeedForward
from moerec.training import DistContext, DistributedError, train
from moerec.training.distributed import torchrun_environment
from tests.helpers import small_config

# Dropout off: its random masks depend on how each process consumes its random stream, which
# no data-parallel scheme reproduces. The load-balance loss off: each process balances its own
# share of the batch (as Switch/GShard do per device), which is close to, but not the same
# function as, the single process's balance over the whole batch. The router z-loss stays on:
# it is a mean over tokens, which the token-weighted losses reproduce exactly.
EQUIVALENT = [
    "model.max_len=20",
    "model.hidden_size=32",
    "model.ffn_hidden_size=32",
    "model.moe_num_experts=4",
    "model.dropout=0.0",
    "model.attention_dropout=0.0",
    "model.moe_balance_coef=0.0",
    "train.epochs=2",
    "train.batch_size=64",
    "train.warmup_steps=5",
    "train.patience=5",
    "train.seed=7",
]
# Same data, seed and global batch, so the same steps, except for the order in which floats
# are added: each process multiplies half-batch matrices and the all-reduce adds the two
# halves' gradients, where one process sums the whole batch at once. The gradients then differ
# by ~1e-7 relative (measured on the first step). For a dense model that leaves the weights
# within ~2e-6 after these 10 steps; top-k routing is discontinuous, though: a token whose two
# best router scores nearly tie can pick another expert, which moved MoE weights by up to
# 6e-4 (measured; the same with the batch split in one process, without DDP) while the
# epoch losses still agreed to 2e-6.
WEIGHT_TOLERANCE = 2e-3
LOSS_TOLERANCE = 1e-5


def overrides(pairs: list[str]) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "interactions.csv"
    write_csv(generate_interactions(num_users=300, num_items=120, seed=5), path)
    return path


def train_command(data_file, root, extra: list[str]) -> list[str]:
    return [
        "train", "--data", str(data_file), "--registry", str(root / "models"), "--name", "ddp",
        "--run-dir", str(root / "run"), "--quiet", *overrides(EQUIVALENT + extra),
    ]  # fmt: skip


def torchrun(args: list[str], cwd) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "moerec", *args,
    ]  # fmt: skip
    env = {**os.environ, "MOEREC_JEMALLOC": "0"}  # the allocator changes no result
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=180, check=False
    )


def epochs(run_dir) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r for r in records if r["event"] == "epoch"]


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed")
def test_torchrun_with_two_processes_matches_one_process_at_the_same_global_batch(
    data_file, tmp_path
):
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    done = torchrun(train_command(data_file, ddp, []), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    alone = CliRunner().invoke(app, train_command(data_file, single, []))
    assert alone.exit_code == 0, alone.output

    # Rank 0 alone logs and saves: one start record, one model version.
    assert [p.name for p in (ddp / "models" / "ddp").iterdir() if p.is_dir()] == ["v0001"]
    assert done.stdout.count("saved model") == 1
    assert (ddp / "run" / "log.jsonl").read_text().count('"event": "start"') == 1

    two, one = epochs(ddp / "run"), epochs(single / "run")
    assert len(two) == len(one) == 2
    for a, b in zip(two, one, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=LOSS_TOLERANCE)
        assert a["aux_loss"] == pytest.approx(b["aux_loss"], rel=LOSS_TOLERANCE)
        assert a["aux_loss"] > 0  # the router z-loss reaches the log through the all-reduce
        # Routing statistics are summed over both processes: the whole batch's expert load.
        for la, lb in zip(a["routing"]["layers"], b["routing"]["layers"], strict=True):
            np.testing.assert_allclose(la["load"], lb["load"], atol=1e-3)
            assert la["experts_per_token"] == lb["experts_per_token"] == 2.0

    # The last epoch's weights (the checkpoint's, independent of which epoch was best).
    last_two = torch.load(ddp / "run" / "checkpoint.pt", weights_only=False)["model"]
    last_one = torch.load(single / "run" / "checkpoint.pt", weights_only=False)["model"]
    for key, tensor in last_one.items():
        torch.testing.assert_close(
            last_two[key], tensor, atol=WEIGHT_TOLERANCE, rtol=0, msg=lambda m, k=key: f"{k}: {m}"
        )


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed")
def test_all_processes_stop_early_together_and_resume_from_rank_0s_checkpoint(data_file, tmp_path):
    # A learning rate this small cannot move validation NDCG: rank 0 stops after epoch 2. A
    # rank that missed the decision would wait in the next epoch's all-reduce until timeout.
    stalled = ["train.epochs=20", "train.patience=1", "train.learning_rate=1e-12"]
    first = torchrun(train_command(data_file, tmp_path, stalled), cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "best epoch 1 of 2" in first.stdout
    again = torchrun([*train_command(data_file, tmp_path, stalled), "--resume"], cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "best epoch 1 of 2" in again.stdout  # the resumed run had already stopped
    assert len(epochs(tmp_path / "run")) == 2


def test_an_indivisible_global_batch_is_refused_before_training():
    with pytest.raises(DistributedError, match=r"divisible by the number of processes \(3\)"):
        DistContext(rank=0, world_size=3).local_batch_size(64)
    assert DistContext(rank=1, world_size=4).local_batch_size(64) == 16


def test_train_refuses_an_indivisible_batch_before_any_collective(tiny_dataset):
    # No process group exists here: the refusal must come before any communication.
    with pytest.raises(DistributedError, match="use 64 or 66"):
        train(
            tiny_dataset, small_config(batch_size=65), progress=False,
            distributed=DistContext(rank=0, world_size=2),
        )  # fmt: skip


@pytest.mark.parametrize("world_size", [2, 3])
def test_shards_cover_the_global_batch_once_with_weights_adding_up(world_size):
    rows = np.arange(10, 30)  # (20,)
    tokens = np.arange(1, 21)  # (20,) positions with a loss in each row
    shards = [DistContext(r, world_size).shard(rows, tokens) for r in range(world_size)]
    np.testing.assert_array_equal(np.concatenate([s.rows for s in shards]), rows)
    # DDP divides the summed gradients by world_size: the weights must add up to it.
    assert sum(s.loss_weight for s in shards) == pytest.approx(world_size)


def test_an_empty_share_trains_a_stand_in_row_with_weight_zero():
    rows, tokens = np.array([42]), np.array([7])  # a final batch of one sequence
    first, second = (DistContext(r, 2).shard(rows, tokens) for r in range(2))
    assert (first.rows.tolist(), first.loss_weight, first.stand_in) == ([42], 2.0, False)
    assert (second.rows.tolist(), second.loss_weight, second.stand_in) == ([42], 0.0, True)


def test_torchrun_variables_are_read_or_their_absence_means_one_process():
    assert torchrun_environment({}) is None
    assert torchrun_environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == (1, 2, 1)
    with pytest.raises(DistributedError, match="LOCAL_RANK"):
        torchrun_environment({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(DistributedError, match="outside"):
        torchrun_environment({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


def test_experts_that_get_no_token_still_take_part_in_the_backward_pass():
    # Why DDP needs no find_unused_parameters: the experts are stacked (E, ...) tensors, so an
    # idle expert's slice gets a zero gradient instead of no gradient at all.
    torch.manual_seed(0)
    moe = MoEFeedForward(hidden_size=8, ffn_hidden_size=8, num_experts=4, dropout=0.0)
    with torch.no_grad():
        moe.router.proj.weight.copy_(torch.tensor([[1.0], [1.0], [-1.0], [-1.0]]).expand(4, 8))
    x = torch.rand(16, 8)  # (N, D) positive: experts 0 and 1 win every token
    y, stats = moe(x)
    assert stats.expert_counts.tolist() == [16, 16, 0, 0]
    (y.sum() + stats.balance_loss + stats.z_loss).backward()
    assert all(p.grad is not None for p in moe.parameters())
    assert moe.experts.w_in.grad is not None
    assert torch.count_nonzero(moe.experts.w_in.grad[2:]) == 0
