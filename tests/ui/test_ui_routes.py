"""The playground's routes: on in development mode, off in production, only its own files."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from fastapi import FastAPI

from moerec.config import ServiceSettings
from moerec.serving.routes.ui import CONTENT_SECURITY_POLICY, UI_FILES, enabled, install
from tests.serving.conftest import serve_app, server_url, stop_server

SECRET = "x" * 40


@pytest.mark.parametrize(
    ("mode", "ui_enabled", "expected"),
    [
        ("development", None, True),
        ("production", None, False),
        ("production", True, True),
        ("development", False, False),
    ],
)
def test_on_by_default_in_development_only(mode, ui_enabled, expected):
    settings = ServiceSettings(mode=mode, ui_enabled=ui_enabled, jwt_secret=SECRET)
    assert enabled(settings) is expected


@contextmanager
def client(**settings: object) -> Iterator[httpx.Client]:
    """The playground's routes alone, installed on an app served over real HTTP."""
    app = FastAPI()
    install(app, ServiceSettings(jwt_secret=SECRET, **settings))  # type: ignore[arg-type]
    server = serve_app(app)
    try:
        with httpx.Client(base_url=server_url(server), timeout=30) as http:
            yield http
    finally:
        stop_server(server)


def test_production_mode_serves_no_page():
    with client(mode="production") as http:
        assert http.get("/ui/").status_code == 404


@pytest.mark.parametrize("name", sorted(UI_FILES))
def test_every_file_is_packaged_and_served_with_its_type_and_the_csp(name):
    with client() as http:
        response = http.get(f"/ui/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == UI_FILES[name]
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.content


def test_the_bare_path_redirects_so_relative_links_resolve():
    with client() as http:
        response = http.get("/ui", follow_redirects=False)
        assert response.status_code == 307
        assert response.headers["location"] == "/ui/"


@pytest.mark.parametrize("path", ["/ui/__init__.py", "/ui/..%2fapp.py", "/ui/ui.py"])
def test_nothing_but_the_listed_files_is_served(path):
    with client() as http:
        assert http.get(path).status_code == 404


def test_the_page_needs_no_inline_script_style_or_handler_and_nothing_from_elsewhere():
    with client() as http:
        page = http.get("/ui/").text
        texts = [http.get(f"/ui/{name}").text for name in UI_FILES]
    assert "<script>" not in page
    assert " style=" not in page
    assert " on" not in page.replace(" one", "").split("<body")[1].split(">")[0]
    for text in texts:
        assert "http://" not in text
        assert "https://" not in text
        assert "innerHTML" not in text
