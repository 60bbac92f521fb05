"""The README's and the API guide's shell examples, run against a live service.

A fenced ```bash block directly under an HTML comment ``<!-- runnable -->`` is executed with
``bash -euo pipefail`` and the variables the docs define (``MOEREC_URL``, ``TOKEN`` for user
``1`` with the recommend and events:write scopes, ``ADMIN_TOKEN`` with admin), pointing at a
live embedded service. It must exit 0 (every curl uses ``-fsS``: an HTTP error fails it) and
print only JSON documents; ``<!-- runnable: text -->`` blocks may print anything.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.routing import APIRoute

from moerec.config import ServiceSettings
from moerec.serving.app import create_app
from tests.serving.conftest import LiveService, live_service

ROOT = Path(__file__).resolve().parents[2]
DOCS_WITH_COMMANDS = ("README.md", "docs/api.md")
RUNNABLE = re.compile(
    r"<!-- runnable(?::\s*(?P<kind>\w+))? -->\s*\n```bash\n(?P<code>.*?)```", re.S
)


@dataclass(frozen=True)
class Block:
    doc: str
    number: int
    kind: str
    code: str

    def __str__(self) -> str:
        return f"{self.doc}#{self.number}"


def runnable_blocks() -> list[Block]:
    blocks = []
    for doc in DOCS_WITH_COMMANDS:
        text = (ROOT / doc).read_text(encoding="utf-8")
        for number, m in enumerate(RUNNABLE.finditer(text), 1):
            blocks.append(Block(doc, number, m.group("kind") or "json", m.group("code")))
    return blocks


BLOCKS = runnable_blocks()


@pytest.fixture(scope="module")
def docs_service(request, tmp_path_factory, trained, tiny_dataset):
    yield from live_service(
        "embedded", tmp_path_factory.mktemp("docs"), request, trained, tiny_dataset
    )


@pytest.fixture(scope="module")
def shell_env(docs_service: LiveService) -> dict[str, str]:
    if shutil.which("curl") is None:
        message = "curl is not installed (apt-get install curl)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return {
        **os.environ,
        "MOEREC_URL": docs_service.url,
        "TOKEN": docs_service.token("1", "recommend", "events:write"),
        "ADMIN_TOKEN": docs_service.token("ops", "admin"),
    }


def json_documents(text: str) -> list[object]:
    """Every JSON value printed one after another (curl adds no separator)."""
    decoder = json.JSONDecoder()
    found, position = [], 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return found
        value, position = decoder.raw_decode(text, position)
        found.append(value)


def test_both_documents_have_runnable_examples():
    assert {b.doc for b in BLOCKS} == set(DOCS_WITH_COMMANDS)


@pytest.mark.parametrize("block", BLOCKS, ids=str)
def test_every_curl_fails_on_an_http_error(block: Block):
    for command in re.findall(r"\bcurl\b[^\n]*", block.code):
        assert "-fsS" in command, f"{block}: use curl -fsS so an HTTP error fails the example"


@pytest.mark.parametrize("block", BLOCKS, ids=str)
def test_the_example_runs_against_a_live_service(block: Block, shell_env):
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.code],
        env=shell_env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, f"{block} failed:\n{block.code}\n{result.stderr}"
    assert result.stdout.strip(), f"{block} printed nothing"
    if block.kind == "json":
        documents = json_documents(result.stdout)
        assert len(documents) == block.code.count("curl "), result.stdout


def test_the_api_guide_has_an_example_for_every_route():
    guide = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    examples = "".join(m.group("code") for m in RUNNABLE.finditer(guide))
    app = create_app(ServiceSettings(ui_enabled=False))
    for route in app.routes:
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        # /v1/users/{user_id}/history → a regex matching /v1/users/1/history
        pattern = re.sub(r"\\\{[a-z_]+\\\}", '[^/?"]+', re.escape(route.path)) + r"(?:[?\"]|$|\s)"
        assert re.search(r"\$MOEREC_URL" + pattern, examples, re.M), (
            f"docs/api.md has no runnable example for {sorted(route.methods)} {route.path}"
        )
