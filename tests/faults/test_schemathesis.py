"""Schemathesis against the live service's own OpenAPI schema (/openapi.json).

Every operation, with generated valid and invalid input, must answer without a 5xx and with
a response that matches the schema it documents. The CLI runs in a subprocess against the
service on its loopback port: a second process uses the second core (the service's thread
keeps the first), its report names every failure with a curl line that reproduces it, and
its exit code is the verdict.

Two runs: an admin token (every scope, so the generated cases reach the handlers instead of
all stopping at 403), then a smaller one with a plain user token (the 401/403 paths and
``ensure_may_read`` against generated user ids).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.faults

try:
    import schemathesis as _schemathesis  # noqa: F401 - the CLI below runs this package
except ImportError:
    if os.environ.get("CI"):  # like the fault tests: CI must run it, never skip it
        raise
    pytest.skip("schemathesis is not installed (a dev dependency)", allow_module_level=True)

CHECKS = "not_a_server_error,response_schema_conformance"
# A reload with a generated path would at best be refused and at worst load another model
# mid-run; tests/faults/test_dependency_faults.py and tests/serving/test_reload.py cover it.
EXCLUDED_PATHS = ("/v1/admin/model/reload",)
SEED = int(os.environ.get("MOEREC_FUZZ_SEED", "20240601"))  # fixed: CI failures reproduce
RUN_TIMEOUT = 300  # seconds; a hung run fails the test instead of CI's whole budget


def schemathesis(service, token: str, max_examples: int, report_dir: Path) -> tuple[int, str]:
    """Run the CLI; returns (exit code, its output)."""
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{service.url}/openapi.json",
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        CHECKS,
        "--max-examples",
        str(max_examples),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--generation-database",
        "none",  # nothing written beside the checkout; the seed makes runs reproducible
        "--continue-on-failure",  # every failure of an operation, not only the first
        "--report",
        "junit",
        "--report-dir",
        str(report_dir),
        "--no-color",
        "--output-sanitize",
        "false",  # the token is a throw-away; the curl lines must reproduce as printed
    ]
    for path in EXCLUDED_PATHS:
        command += ["--exclude-path", path]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        cwd=report_dir,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("who", "scopes", "max_examples"),
    [
        ("admin", ("admin",), 200),
        ("user", ("recommend", "events:write"), 40),
    ],
)
def test_the_api_keeps_its_schema_and_never_answers_5xx(
    fuzz_service, tmp_path, tiny_dataset, who, scopes, max_examples
):
    # A stored user's own token, so "may only read its own user" is exercised both ways.
    subject = str(tiny_dataset.vocab.user_ids[0]) if who == "user" else "fuzz-admin"
    token = fuzz_service.token(subject, *scopes, ttl=900)
    code, output = schemathesis(fuzz_service, token, max_examples, tmp_path)
    (tmp_path / "output.txt").write_text(output)
    print(f"\n[schemathesis {who}] exit {code}\n{_summary(output)}")
    # A run that tested little passes too: check it reached every operation and generated
    # a real number of cases before trusting its exit code.
    selected, total = _count(r"Selected: (\d+)/(\d+)", output)
    (tested,) = _count(r"Tested: (\d+)", output)
    (cases,) = _count(r"(\d+) generated", output)
    assert selected == total - len(EXCLUDED_PATHS), output[-5000:]
    assert tested == selected, output[-5000:]
    assert cases >= 5 * max_examples, output[-5000:]
    assert code == 0, f"schemathesis found problems ({who} token):\n{output[-20000:]}"


def _summary(output: str) -> str:
    """The closing summary block of the CLI's output (the full text is in output.txt)."""
    lines = output.splitlines()
    for index, line in enumerate(lines):
        if "SUMMARY" in line:
            return "\n".join(lines[index:])
    return "\n".join(lines[-25:])


def _count(pattern: str, output: str) -> tuple[int, ...]:
    found = re.search(pattern, output)
    assert found, f"schemathesis printed no {pattern!r}; its output:\n{output[-5000:]}"
    return tuple(int(g) for g in found.groups())
