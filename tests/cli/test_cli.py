"""The command line end to end, in-process, on files the tests write."""

import csv
import json

import pytest
from typer.testing import CliRunner

from moerec.cli import app
from moerec.data.synthetic import generate_interactions, write_csv
from tests.helpers import alternating_rails, save_trained

runner = CliRunner()
TINY = [
    "--set",
    "model.max_len=20",
    "--set",
    "model.hidden_size=32",
    "--set",
    "model.ffn_hidden_size=32",
    "--set",
    "model.moe_num_experts=4",
    "--set",
    "train.epochs=2",
    "--set",
    "train.batch_size=64",
]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "interactions.csv"
    write_csv(generate_interactions(num_users=150, num_items=80, seed=2), path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, data_file):
    root = tmp_path_factory.mktemp("work")
    result = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(data_file),
            "--registry",
            str(root / "models"),
            "--name",
            "cli",
            "--run-dir",
            str(root / "run"),
            "--quiet",
            *TINY,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "saved model" in result.output
    return root / "models" / "cli"


def test_data_stats_prints_counts(data_file):
    result = runner.invoke(app, ["data", "stats", "--data", str(data_file)])
    assert result.exit_code == 0, result.output
    assert "users" in result.output
    assert "150" in result.output


def test_evaluate_json_uses_the_project_metric_schema(model_dir, data_file):
    result = runner.invoke(
        app, ["evaluate", "--model", str(model_dir), "--data", str(data_file), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert {"hr@10", "ndcg@10", "mrr@10", "hr@5", "ndcg@20", "coverage@10"} <= report[
        "metrics"
    ].keys()
    assert report["version"] == "v0001"
    assert report["cost"]["flops_per_request"] > 0


def test_evaluate_routes_the_trained_model_to_more_or_fewer_experts(model_dir, data_file):
    def evaluate(*routing: str) -> dict:
        args = ["evaluate", "--model", str(model_dir), "--data", str(data_file), "--json"]
        result = runner.invoke(app, [*args, *routing])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    trained = evaluate()
    one = evaluate("--set", "model.moe_top_k=1")
    three = evaluate("--set", "model.moe_top_k=3")
    top_p = evaluate("--set", "model.moe_router=topp", "--set", "model.moe_max_k=4")

    assert trained["feed_forward"] == "4x32 top-2"
    assert trained["routing_changes"] == {}
    assert three["feed_forward"] == "4x32 top-3"
    assert three["routing_changes"] == {"model.moe_top_k": 3}
    assert top_p["feed_forward"] == "4x32 top-p 0.6 (2-4)"
    for report, k in ((one, 1), (trained, 2), (three, 3)):
        assert report["routing"]["experts_per_token"] == pytest.approx(k)
        assert report["cost"]["experts_per_token"] == pytest.approx(k)
    assert 2 <= top_p["routing"]["experts_per_token"] <= 4
    flops = [r["cost"]["ffn_flops_per_request"] for r in (one, trained, three)]
    assert flops[0] < flops[1] < flops[2]
    assert one["metrics"] != trained["metrics"]  # the same weights, scored differently


@pytest.mark.parametrize(
    ("routing", "message"),
    [
        ("model.hidden_size=16", "can only change how it routes"),
        ("train.epochs=3", "can only change how it routes"),
        ("model.moe_top_k=9", "cannot exceed moe_num_experts"),
        ("model.moe_router=sometimes", "moe_router"),
        ("model.moe_top_k", "expects key=value"),
    ],
)
def test_evaluate_refuses_routing_the_weights_cannot_follow(model_dir, data_file, routing, message):
    result = runner.invoke(
        app,
        ["evaluate", "--model", str(model_dir), "--data", str(data_file), "--set", routing],
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_registry_reroute_saves_the_same_weights_with_new_routing_as_a_new_version(
    model_dir, data_file, tmp_path
):
    import shutil

    import torch

    from moerec.registry import load_artefact, promoted_version

    folder = tmp_path / "cli"
    shutil.copytree(model_dir, folder)
    args = ["registry", "reroute", "--model", str(folder), "--data", str(data_file)]

    result = runner.invoke(app, [*args, "--set", "model.moe_top_k=1"])

    assert result.exit_code == 0, result.output
    assert "promoted v0001" in result.output  # pinned: serving does not change by itself
    assert promoted_version(folder) == "v0001"
    assert "saved" in result.output
    assert "4x32 top-1" in result.output
    original, rerouted = load_artefact(folder / "v0001"), load_artefact(folder / "v0002")
    assert rerouted.config.model.moe_top_k == 1
    assert rerouted.config.model.feed_forward == "4x32 top-1"
    assert rerouted.manifest["derived_from"] == {
        "version": "v0001",
        "routing_changes": {"model.moe_top_k": 1},
    }
    for key, tensor in original.model.state_dict().items():
        assert torch.equal(tensor, rerouted.model.state_dict()[key]), key
    evaluated = runner.invoke(
        app,
        ["evaluate", "--model", str(folder / "v0002"), "--data", str(data_file), "--json"],
    )
    report = json.loads(evaluated.output)
    assert rerouted.manifest["metrics"]["test"] == report["metrics"]
    assert report["routing"]["experts_per_token"] == pytest.approx(1.0)

    listed = runner.invoke(app, ["registry", "list", str(folder), "--json"])
    models = {v["version"]: v["model"] for v in json.loads(listed.output)}
    assert models == {"v0001": "moe 4x32 top-2", "v0002": "moe 4x32 top-1, rerouted v0001"}

    again = runner.invoke(app, [*args, "--set", "model.moe_top_k=3"])
    assert again.exit_code == 0, again.output
    assert "promoted" not in again.output.split("saved")[0]  # a pointer exists: left alone
    assert promoted_version(folder) == "v0001"
    assert (folder / "v0003").is_dir()


def test_registry_reroute_refuses_what_the_weights_cannot_do(model_dir, data_file, tmp_path):
    import shutil

    folder = tmp_path / "cli"
    shutil.copytree(model_dir, folder)
    args = ["registry", "reroute", "--model", str(folder), "--data", str(data_file)]
    for routing, message in (
        ("model.ffn_hidden_size=8", "can only change how it routes"),
        ("model.moe_top_k=5", "cannot exceed moe_num_experts"),
    ):
        result = runner.invoke(app, [*args, "--set", routing])
        assert result.exit_code == 2, result.output
        assert message in result.output
    assert sorted(p.name for p in folder.glob("v*")) == ["v0001"]


def test_recommend_for_one_user_shows_items_and_experts(model_dir, data_file):
    result = runner.invoke(
        app,
        [
            "recommend",
            "--model",
            str(model_dir),
            "--data",
            str(data_file),
            "--user",
            "1",
            "-k",
            "5",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "experts used" in result.output


def test_recommend_all_users_writes_ranked_rows(model_dir, data_file, tmp_path):
    output = tmp_path / "recs.csv"
    result = runner.invoke(
        app,
        [
            "recommend",
            "--model",
            str(model_dir),
            "--data",
            str(data_file),
            "--all-users",
            "--split",
            "test",
            "--output",
            str(output),
            "-k",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(output.open()))
    assert rows[0].keys() == {"user", "rank", "item", "score"}
    assert [r["rank"] for r in rows[:3]] == ["1", "2", "3"]
    assert len({r["user"] for r in rows}) == 150


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--data", "does-not-exist.csv"], "does-not-exist.csv"),
        (
            [
                "train",
                "--data",
                "{data}",
                "--set",
                "model.hidden_size=30",
                "--set",
                "model.num_heads=4",
            ],
            "divisible",
        ),
        (["train", "--data", "{data}", "--set", "nonsense"], "key=value"),
        (["train", "--data", "{data}", "--variant", "huge"], "--variant"),
        (["evaluate", "--model", "{tmp}", "--data", "{data}"], "no model artefact"),
        (["recommend", "--model", "{model}", "--data", "{data}"], "--user"),
        (["recommend", "--model", "{model}", "--data", "{data}", "--user", "nobody"], "nobody"),
        (["recommend", "--model", "{model}", "--data", "{data}", "--all-users"], "--output"),
        (["train", "--data", "{data}", "--set", "model=3", "--set", "model.x=1"], "not a section"),
        (["train", "--data", "{data}", "--set", "data.format=["], "not valid YAML"),
        (["train", "--data", "{data}", "--resume", "--run-dir", "{tmp}"], "nothing to resume"),
        (["train", "--data", "{single}"], "nothing to learn"),
        (["train", "--data", "{data}", "--registry", "{file}", *TINY], "{file}"),
    ],
)
def test_bad_input_gets_a_one_line_error_and_exit_code_2(
    args, message, data_file, model_dir, tmp_path
):
    single = tmp_path / "single.csv"  # one event per user: no (input, next item) pair anywhere
    single.write_text("user,item,timestamp\n1,1,1\n2,2,2\n3,1,3\n")
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("")
    names = {"data": data_file, "tmp": tmp_path, "model": model_dir, "single": single,
             "file": a_file}  # fmt: skip
    filled = [a.format(**names) for a in args]
    message = message.format(**names)
    result = runner.invoke(app, filled)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_a_corrupt_data_file_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item,timestamp\n1,2,3\n1,3,not-a-time\n")
    result = runner.invoke(app, ["data", "stats", "--data", str(bad)])
    assert result.exit_code == 2
    assert "bad.csv:3" in result.output


def test_demo_runs_end_to_end_and_prints_recommendations_with_experts(tmp_path):
    result = runner.invoke(
        app,
        [
            "demo", "--workdir", str(tmp_path), "--users", "120", "--items", "60",
            "--epochs", "1", "--show", "2",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.count("experts used") == 2
    assert "most popular" in result.output
    assert (tmp_path / "models" / "demo" / "v0001" / "manifest.json").is_file()
    assert (tmp_path / "run" / "plots" / "loss.png").is_file()
    assert "moerec serve --model" in result.output
    assert (tmp_path / "moerec.db").is_file()


def test_every_command_has_help():
    for command in (["--help"], ["train", "--help"], ["evaluate", "--help"],
                    ["recommend", "--help"], ["demo", "--help"], ["data", "stats", "--help"],
                    ["data", "synth", "--help"], ["serve", "--help"], ["token", "create", "--help"],
                    ["db", "upgrade", "--help"], ["db", "import", "--help"]):  # fmt: skip
        result = runner.invoke(app, command)
        assert result.exit_code == 0, command
        assert "Usage" in result.output


def test_token_create_mints_a_token_the_service_accepts(monkeypatch):
    from moerec.config import load_service_settings
    from moerec.serving.auth import TokenVerifier

    monkeypatch.delenv("MOEREC_JWT_SECRET", raising=False)
    result = runner.invoke(
        app, ["token", "create", "--sub", "u7", "--scope", "recommend", "--scope", "admin"]
    )
    assert result.exit_code == 0, result.output
    principal = TokenVerifier(load_service_settings()).verify(result.output.strip())
    assert principal.subject == "u7"
    assert principal.scopes == {"recommend", "admin"}


def test_token_create_refuses_unknown_scopes_and_production_placeholders(monkeypatch):
    bad = runner.invoke(app, ["token", "create", "--sub", "u7", "--scope", "root"])
    assert bad.exit_code == 2
    assert "root" in bad.output
    monkeypatch.setenv("MOEREC_MODE", "production")
    monkeypatch.delenv("MOEREC_JWT_SECRET", raising=False)
    prod = runner.invoke(app, ["token", "create", "--sub", "u7"])
    assert prod.exit_code == 2
    assert "MOEREC_JWT_SECRET" in prod.output


def test_db_upgrade_then_import_loads_histories_once(tmp_path, data_file):
    import asyncio

    from moerec.storage import Storage

    url = f"sqlite+aiosqlite:///{tmp_path / 'service.db'}"
    upgraded = runner.invoke(app, ["db", "upgrade", "--database-url", url])
    assert upgraded.exit_code == 0, upgraded.output
    assert "revision" in upgraded.output
    first = runner.invoke(app, ["db", "import", "--data", str(data_file), "--database-url", url])
    again = runner.invoke(app, ["db", "import", "--data", str(data_file), "--database-url", url])
    assert first.exit_code == 0, first.output
    assert "imported 80 items, 150 users" in first.output
    assert "0 events" in again.output.replace(",", "")

    async def count() -> int:
        async with Storage(url) as storage:
            return await storage.count_items()

    assert asyncio.run(count()) == 80


def test_db_commands_explain_a_bad_database_url(tmp_path):
    result = runner.invoke(app, ["db", "upgrade", "--database-url", "postgresql://x@localhost/db"])
    assert result.exit_code == 2
    assert "postgresql+asyncpg://" in result.output


def test_serve_runs_as_a_process_and_answers_over_http(model_dir, data_file, tmp_path):
    import socket
    import subprocess
    import sys
    import time

    import httpx

    from moerec.config import load_service_settings
    from moerec.serving.auth import mint_token

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"sqlite+aiosqlite:///{tmp_path / 'serve.db'}"
    assert runner.invoke(app, ["db", "import", "--data", str(data_file), "--database-url", url])
    server = subprocess.Popen(
        [sys.executable, "-m", "moerec", "serve", "--model", str(model_dir),
         "--port", str(port), "--database-url", url],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:  # poll until the model is loaded and the port answers
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            assert time.monotonic() < deadline, "moerec serve did not become ready"
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        token = mint_token(load_service_settings(), "1", ["recommend"], 60)
        r = httpx.get(
            f"{base}/v1/users/1/recommendations",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        assert len(r.json()["items"]) == 10
    finally:
        server.terminate()
        _, log = server.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status tells why
    assert server.returncode in (0, -15)
    assert "Application shutdown complete" in log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    access = [e for e in lines if e.get("logger") == "moerec.access"]
    assert any(e["route"] == "/v1/users/{user_id}/recommendations" and e["status"] == 200
               for e in access)  # fmt: skip
    assert all(e.get("request_id") for e in access)


def test_recommend_gives_a_time_context_model_the_times(rails_timed, rails, tmp_path):
    data = tmp_path / "rails.csv"
    write_csv(alternating_rails(), data)
    model = save_trained(tmp_path / "models", rails_timed, rails)
    test = rails.split.test
    targets = {
        rails.vocab.user_ids[int(u)]: rails.vocab.decode_items([int(t)])[0]
        for u, t in zip(test.users, test.targets, strict=True)
    }
    output = tmp_path / "recs.csv"
    common = ["recommend", "--model", str(model), "--data", str(data), "--split", "test", "-k", "1"]
    result = runner.invoke(app, [*common, "--all-users", "--output", str(output), "-q"])
    assert result.exit_code == 0, result.output
    top = {row["user"]: row["item"] for row in csv.DictReader(output.open())}
    # Each test target's rail is told by its time alone: without the times, a coin toss.
    assert sum(top[user] == item for user, item in targets.items()) / len(targets) > 0.95
    user = next(iter(targets))
    result = runner.invoke(app, [*common, "--user", user, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["items"] == [targets[user]]
