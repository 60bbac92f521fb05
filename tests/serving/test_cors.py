"""CORS is closed unless origins are configured."""

from __future__ import annotations

import httpx
import pytest

from tests.serving.conftest import live_service

ORIGIN = "https://shop.example"


@pytest.fixture(scope="module")
def open_to_shop(request, tmp_path_factory, trained, tiny_dataset):
    yield from live_service(
        "embedded", tmp_path_factory.mktemp("cors"), request, trained, tiny_dataset,
        cors_origins=[ORIGIN],
    )  # fmt: skip


def preflight(url: str, origin: str) -> httpx.Response:
    return httpx.options(
        f"{url}/v1/recommendations",
        headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"},
    )  # fmt: skip


def test_no_origin_is_allowed_by_default(service):
    r = preflight(service.url, ORIGIN)
    assert "access-control-allow-origin" not in r.headers


def test_a_configured_origin_is_allowed_and_others_are_not(open_to_shop):
    allowed = preflight(open_to_shop.url, ORIGIN)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    other = preflight(open_to_shop.url, "https://evil.example")
    assert "access-control-allow-origin" not in other.headers


def test_security_headers_are_on_every_response(service):
    r = httpx.get(f"{service.url}/healthz")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert "server" not in r.headers or "uvicorn" not in r.headers["server"]
