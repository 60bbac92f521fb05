"""The feedback loop on the command line: train from the service's events, export, promote."""

from __future__ import annotations

import asyncio
import csv
import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from moerec.cli import app
from moerec.data.dataset import load_dataset
from moerec.data.synthetic import generate_interactions, write_csv
from moerec.registry import load_artefact, promoted_version
from moerec.storage import NewEvent, Storage, upgrade
from tests.cli.test_cli import TINY

runner = CliRunner()
NUM_USERS = 150
DISMISSED_ONLY = "never-liked"  # an item that only ever gets dismissed


def fill(url: str, events: list[NewEvent]) -> None:
    async def run() -> None:
        async with Storage(url) as storage:
            await storage.add_events(events)

    upgrade(url)
    asyncio.run(run())


@pytest.fixture(scope="module")
def interactions():
    return generate_interactions(num_users=NUM_USERS, num_items=80, seed=2)


@pytest.fixture(scope="module")
def events_db(tmp_path_factory, interactions) -> str:
    """A service database holding the synthetic log as events, plus a few dismissals."""
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'service.db'}"
    rows = zip(interactions.users, interactions.items, interactions.timestamps, strict=True)
    events = [
        NewEvent(str(u), str(i), "view", datetime.fromtimestamp(int(t), UTC), f"e{n}")
        for n, (u, i, t) in enumerate(rows)
    ]
    events += [
        NewEvent(str(u), DISMISSED_ONLY, "dismiss", datetime.now(UTC), f"d{u}") for u in range(1, 6)
    ]
    fill(url, events)
    return url


@pytest.fixture(scope="module")
def trained_from_db(tmp_path_factory, events_db):
    root = tmp_path_factory.mktemp("work")
    result = runner.invoke(
        app,
        [
            "train", "--from-db", "--database-url", events_db, "--registry", str(root),
            "--name", "loop", "--run-dir", str(root / "run"), "--quiet", *TINY,
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "saved model" in result.output
    return root / "loop"


def test_train_from_db_sees_the_events_as_a_file_of_them_would_be_seen(
    trained_from_db, interactions, tmp_path
):
    artefact = load_artefact(trained_from_db)
    assert artefact.version == "v0001"
    assert DISMISSED_ONLY not in artefact.vocab.item_ids
    assert len(artefact.vocab.user_ids) == NUM_USERS
    # the same preprocessing and split as --data: the same data fingerprint
    write_csv(interactions, tmp_path / "same.csv")
    assert artefact.manifest["data_fingerprint"] == load_dataset(tmp_path / "same.csv").fingerprint


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train"], "no interactions given: add --data FILE, or --from-db"),
        (["train", "--from-db", "--data", "{data}"], "not both"),
        (["train", "--data", "{data}", "--database-url", "{db}"], "--database-url goes with"),
        (["train", "--from-db", "--database-url", "{missing}"], "no such database file"),
        (["train", "--from-db", "--database-url", "{small}"], "holds 5 usable events (dismissals"),
        (["train", "--from-db", "--database-url", "{small}", "--min-events", "6"], "at least 6"),
        (["recommend", "--model", "{model}", "--from-db", "--all-users", "-o", "x.txt"], "x.txt"),
    ],
)
def test_from_db_mistakes_get_one_clear_line(args, message, tmp_path, events_db, trained_from_db):
    small = f"sqlite+aiosqlite:///{tmp_path / 'small.db'}"
    fill(small, [NewEvent("u", f"i{n}", "view", datetime.now(UTC), f"k{n}") for n in range(5)])
    data = tmp_path / "data.csv"
    data.write_text("user,item\n1,1\n")
    names = {
        "data": data, "db": events_db, "small": small, "model": trained_from_db,
        "missing": f"sqlite+aiosqlite:///{tmp_path / 'typo.db'}",
    }  # fmt: skip
    result = runner.invoke(app, [a.format(**names) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_recommend_all_users_from_db_writes_every_user_in_each_format(
    suffix, trained_from_db, events_db, tmp_path
):
    output = tmp_path / f"recs{suffix}"
    result = runner.invoke(
        app,
        [
            "recommend", "--model", str(trained_from_db), "--from-db", "--database-url",
            events_db, "--all-users", "-k", "3", "--output", str(output), "--quiet",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"for {NUM_USERS} users" in result.output
    if suffix == ".jsonl":
        lines = [json.loads(line) for line in output.read_text().splitlines()]
        assert len(lines) == NUM_USERS
        assert all(len(line["items"]) == len(line["scores"]) == 3 for line in lines)
        assert all(line["scores"] == sorted(line["scores"], reverse=True) for line in lines)
        return
    if suffix == ".csv":
        rows = list(csv.DictReader(output.open()))
    else:
        rows = pq.read_table(output).to_pylist()
        assert pq.read_schema(output).names == ["user", "rank", "item", "score"]
    assert len(rows) == 3 * NUM_USERS
    assert len({r["user"] for r in rows}) == NUM_USERS
    assert [int(r["rank"]) for r in rows[:3]] == [1, 2, 3]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_registry_commands_promote_list_and_roll_back(trained_from_db, events_db):
    second = runner.invoke(
        app,
        [
            "train", "--from-db", "--database-url", events_db, "--registry",
            str(trained_from_db.parent), "--name", "loop", "--quiet", *TINY,
            "--set", "train.epochs=1", "--run-dir", str(trained_from_db.parent / "run2"),
        ],
    )  # fmt: skip
    assert second.exit_code == 0, second.output
    model_dir = str(trained_from_db)

    listed = runner.invoke(app, ["registry", "list", model_dir, "--json"])
    assert listed.exit_code == 0, listed.output
    versions = json.loads(listed.output)
    assert [(v["version"], v["served"], v["promoted"]) for v in versions] == [
        ("v0001", False, False),
        ("v0002", True, False),
    ]
    assert versions[0]["metrics"]["test"]["ndcg@10"] >= 0
    assert versions[0]["model"].startswith("moe ")

    assert runner.invoke(app, ["registry", "promote", model_dir, "v0001"]).exit_code == 0
    assert runner.invoke(app, ["registry", "promote", model_dir, "newest"]).exit_code == 0
    table = runner.invoke(app, ["registry", "list", model_dir])
    assert table.exit_code == 0, table.output
    assert "v0002" in table.output
    assert promoted_version(model_dir) == "v0002"

    back = runner.invoke(app, ["registry", "rollback", model_dir])
    assert back.exit_code == 0, back.output
    assert "from v0002 to v0001" in back.output
    assert promoted_version(model_dir) == "v0001"

    again = runner.invoke(app, ["registry", "rollback", model_dir])
    missing = runner.invoke(app, ["registry", "promote", model_dir, "v0007"])
    assert (again.exit_code, missing.exit_code) == (2, 2)
    assert "no earlier one to roll back to" in again.output
    assert "no version 'v0007'" in missing.output


def test_registry_promote_quality_gate_refuses_with_one_clear_line(trained_from_db):
    model_dir = str(trained_from_db)
    before = promoted_version(model_dir)
    gate = ["--min-metric", "valid.ndcg@10=2"]
    refused = runner.invoke(app, ["registry", "promote", model_dir, "newest", *gate])
    assert refused.exit_code == 2
    assert "below the required 2.0000" in refused.output
    assert promoted_version(model_dir) == before

    bad = runner.invoke(app, ["registry", "promote", model_dir, "newest", "--min-metric", "x"])
    assert bad.exit_code == 2
    assert "expected METRIC=VALUE" in bad.output


def test_recommend_from_db_leaves_out_what_the_user_dismissed(trained_from_db, events_db, tmp_path):
    # A copy of the service database, so the other tests keep theirs.
    source = events_db.removeprefix("sqlite+aiosqlite:///")
    copy = tmp_path / "service.db"
    copy.write_bytes(Path(source).read_bytes())
    url = f"sqlite+aiosqlite:///{copy}"
    user = "7"

    def top(*extra: str) -> str:
        result = runner.invoke(
            app,
            [
                "recommend", "--model", str(trained_from_db), "--from-db", "--database-url",
                url, "-k", "5", "--quiet", *extra,
            ],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        return result.output

    before = json.loads(top("--user", user, "--json"))[0]["items"]
    fill(url, [NewEvent(user, before[0], "dismiss", datetime.now(UTC), "not-this")])
    after = json.loads(top("--user", user, "--json"))[0]["items"]
    assert before[0] not in after
    assert after[:4] == before[1:]  # the rest of the ranking is unchanged

    output = tmp_path / "all.jsonl"
    top("--all-users", "--output", str(output))
    exported = {
        line["user"]: line["items"] for line in map(json.loads, output.read_text().splitlines())
    }
    assert exported[user] == after
