"""A live embedded service and a headless system Chromium driven by Playwright.

The browser is Debian's ``chromium`` (``apt-get install chromium``), found with
``$MOEREC_CHROMIUM``, else ``chromium`` on the PATH; Playwright's own browser downloads are
never used. Without a browser (or the playwright package) the tests skip on a developer's
machine and FAIL when ``CI`` is set, so a green CI run means the page really ran.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serving.conftest import LiveService, live_service

CHROMIUM_ENV = "MOEREC_CHROMIUM"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS_ENV = "MOEREC_TEST_ARTIFACTS"
REPO_ROOT = Path(__file__).resolve().parents[2]


def unavailable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set: the browser tests must run, not skip)")
    pytest.skip(message)


def chromium_path() -> str | None:
    """$MOEREC_CHROMIUM, else chromium (or chromium-browser) on the PATH."""
    given = os.environ.get(CHROMIUM_ENV)
    if given:
        return given if Path(given).is_file() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def playground(request, tmp_path_factory, trained, tiny_dataset) -> Iterator[LiveService]:
    """The embedded service in development mode: /ui/ is on by default."""
    yield from live_service(
        "embedded", tmp_path_factory.mktemp("ui"), request, trained, tiny_dataset
    )


@pytest.fixture(scope="module")
def browser(playground: LiveService) -> Iterator[Any]:
    """A headless Chromium. Playwright's sync API keeps an event loop running in this thread,
    so the service (whose start-up migrates the database synchronously) must start first."""
    path = chromium_path()
    if path is None:
        unavailable(
            f"no Chromium found (${CHROMIUM_ENV} or chromium on the PATH); "
            "install it with: apt-get install chromium"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright package is missing: pip install -e '.[dev]'")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def artifacts_dir() -> Path:
    """Where screenshots go: $MOEREC_TEST_ARTIFACTS, else test-artifacts/ (git-ignored)."""
    folder = Path(os.environ.get(ARTIFACTS_ENV) or REPO_ROOT / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
