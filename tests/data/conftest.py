"""Fixtures for the data-layer tests: small files written on the fly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

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
