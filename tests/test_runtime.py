import subprocess
import sys

import pytest

from moerec.runtime import JEMALLOC_CONF, jemalloc_environment, jemalloc_library

LIB = "libjemalloc.so.2"


def test_preloads_jemalloc_with_memory_retention_and_guards_against_loops():
    env = jemalloc_environment({"PATH": "/bin"}, LIB)
    assert env is not None
    assert env["LD_PRELOAD"] == LIB
    assert env["MALLOC_CONF"] == JEMALLOC_CONF
    assert jemalloc_environment(env, LIB) is None  # the re-executed process stays put


def test_keeps_existing_preloads_and_user_malloc_conf():
    env = jemalloc_environment({"LD_PRELOAD": "libfoo.so", "MALLOC_CONF": "narenas:2"}, LIB)
    assert env is not None
    assert env["LD_PRELOAD"] == f"{LIB}:libfoo.so"
    assert env["MALLOC_CONF"] == "narenas:2"


@pytest.mark.parametrize(
    ("environ", "library"),
    [({"MOEREC_JEMALLOC": "0"}, LIB), ({}, None), ({"LD_PRELOAD": "/x/libjemalloc.so.2"}, LIB)],
)
def test_changes_nothing_when_disabled_missing_or_already_loaded(environ, library):
    assert jemalloc_environment(environ, library) is None


def run_info(extra_env: dict[str, str]) -> str:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MOEREC_JEMALLOC")}
    result = subprocess.run(
        [sys.executable, "-m", "moerec", "info"],
        env={**env, **extra_env, "COLUMNS": "120"},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def test_the_command_switches_to_jemalloc_when_installed():
    if jemalloc_library() is None:
        pytest.skip("jemalloc is not installed on this machine")
    assert "jemalloc" in run_info({})
    assert "system" in run_info({"MOEREC_JEMALLOC": "0"})
