"""The hot path for GET /v1/users/{id}/recommendations: it answers well-formed, authorised
requests itself, exactly as the FastAPI route would, and leaves everything else to the app."""

from __future__ import annotations

import pytest

from moerec.serving import service as service_module
from moerec.serving.hot_path import HotPath
from tests.serving.test_api import user_with_history


@pytest.fixture
def delegated(service):
    """Counts the requests the hot path hands on to the app (white box)."""
    app = service.server.config.app
    layer = app.middleware_stack
    while not isinstance(layer, HotPath):
        layer = layer.app
    downstream = layer.app
    calls: list[str] = []

    async def counting(scope, receive, send):
        if scope["type"] == "http":
            calls.append(scope["path"] + "?" + scope["query_string"].decode())
        await downstream(scope, receive, send)

    layer.app = counting
    yield calls
    layer.app = downstream


def test_well_formed_requests_are_answered_without_the_router(service, tiny_dataset, delegated):
    user, _ = user_with_history(tiny_dataset, 1)
    with service.client(user) as http:
        for params in ({}, {"k": 3}, {"k": "5", "exclude_history": "false"}):
            r = http.get(f"/v1/users/{user}/recommendations", params=params)
            assert r.status_code == 200, r.text
    assert delegated == []


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("k=0", 422),
        ("k=abc", 422),
        ("k=-1", 422),
        ("exclude_history=maybe", 422),
        ("k=3&k=4", 200),  # repeated: the app decides which one counts
    ],
)
def test_anything_unusual_is_left_to_the_app(service, tiny_dataset, delegated, query, status):
    user, _ = user_with_history(tiny_dataset, 1)
    with service.client(user) as http:
        r = http.get(f"/v1/users/{user}/recommendations?{query}")
    assert r.status_code == status, r.text
    assert len(delegated) == 1
    if status == 422:
        assert r.json()["error"]["code"] == "invalid_request"


def test_a_user_id_the_app_would_refuse_is_left_to_it(service, tiny_dataset, delegated):
    user, _ = user_with_history(tiny_dataset, 1)
    with service.client("back-end", "recommend:any") as http:  # may read any user
        r = http.get(f"/v1/users/{user}%0A/recommendations")  # a trailing newline
    assert r.status_code == 422, r.text
    assert len(delegated) == 1


def test_auth_failures_are_answered_and_audited_by_the_app(service, tiny_dataset, delegated):
    user, _ = user_with_history(tiny_dataset, 1)
    other, _ = user_with_history(tiny_dataset, 2)
    path = f"/v1/users/{user}/recommendations"
    with service.client(None) as http:
        assert http.get(path).status_code == 401
        bad = http.get(path, headers={"Authorization": "Bearer not.a.token"})
        assert bad.status_code == 401
        assert bad.json()["error"]["code"] == "token_malformed"
    with service.client(other) as http:  # a user token reading someone else
        r = http.get(path)
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "forbidden_user"
    with service.client(user, "events:write") as http:  # no recommend scope
        assert http.get(path).status_code == 403
    assert len(delegated) == 4


def test_the_hot_path_answers_what_the_route_answers(service, tiny_dataset, delegated):
    user, _ = user_with_history(tiny_dataset, 4)
    path = f"/v1/users/{user}/recommendations"
    with service.client(user) as http:
        routed = http.get(path + "?k=6&k=6")  # repeated parameter: the FastAPI route
        hot = http.get(path + "?k=6")
    assert len(delegated) == 1
    assert routed.status_code == hot.status_code == 200
    first, second = routed.json(), hot.json()
    assert second["cached"] is True  # the same cache entry: the same key on both paths
    for field in ("user_id", "items", "model_version", "experts", "history_length", "fallback"):
        assert first[field] == second[field]
    for name in ("content-type", "x-ratelimit-limit", "x-content-type-options", "cache-control"):
        assert routed.headers[name] == hot.headers[name]
    # One more token spent by the second request: the hot path charges the same bucket.
    assert int(hot.headers["x-ratelimit-remaining"]) < int(routed.headers["x-ratelimit-remaining"])
    assert hot.headers["x-request-id"] != routed.headers["x-request-id"]


def test_rate_limits_apply_on_the_hot_path(service, tiny_dataset, delegated, monkeypatch):
    user, _ = user_with_history(tiny_dataset, 5)
    services = service.services
    tight = {"rate_limit_user_burst": 2, "rate_limit_user_per_second": 0.001}
    monkeypatch.setattr(services, "settings", services.settings.model_copy(update=tight))
    with service.client(user) as http:
        answers = [http.get(f"/v1/users/{user}/recommendations?k=2") for _ in range(4)]
    assert [r.status_code for r in answers[:2]] == [200, 200]
    refused = answers[-1]
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert delegated == []


def test_a_failure_after_admission_is_a_json_500_with_the_request_id(
    service, tiny_dataset, delegated, monkeypatch
):
    user, _ = user_with_history(tiny_dataset, 6)

    async def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(service_module, "recommend", broken)
    with service.client(user) as http:
        r = http.get(f"/v1/users/{user}/recommendations")
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "internal_error"
    assert "boom" not in r.text
    assert r.headers["X-Request-ID"]
    assert delegated == []
