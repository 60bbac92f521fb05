"""Fixtures for the data-layer tests: small files written on the fly, and the shared public
data sets (tests using those are skipped when the directory is not there)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"

Writer = Callable[[str, "str | bytes"], Path]


@pytest.fixture
def write(tmp_path: Path) -> Writer:
    """``write(name, content)`` creates ``tmp_path/name`` (text as UTF-8, or raw bytes)."""

    def _write(name: str, content: str | bytes) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_bytes(content.encode("utf-8"))
        else:
            path.write_bytes(content)
        return path

    return _write


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only public data sets next to the repository, or skip."""
    if not SHARED_DATA.is_dir():
        pytest.skip("shared public data sets not available")
    return SHARED_DATA.resolve()
