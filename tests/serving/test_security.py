"""Auth failures, scopes, ownership and rate limits through real HTTP."""

from __future__ import annotations

import base64
import json
import time

import httpx
import jwt
import pytest

from moerec.serving.auth import mint_token

RECS = "/v1/users/u1/recommendations"


def call(service, token: str | None, path: str = RECS, method: str = "GET", **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    with httpx.Client(base_url=service.url, timeout=30) as http:
        return http.request(method, path, headers=headers, **kw)


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def claims(service, **extra) -> dict:
    now = int(time.time())
    return {
        "sub": "u1",
        "iss": service.settings.jwt_issuer,
        "aud": service.settings.jwt_audience,
        "iat": now,
        "exp": now + 600,
        "scope": "recommend",
        **extra,
    }


def secret(service) -> str:
    return service.settings.signing_secret()


def test_a_valid_token_is_accepted(service):
    assert call(service, service.token("u1", "recommend")).status_code == 200


@pytest.mark.parametrize(
    ("make_token", "code"),
    [
        (lambda s: None, "token_missing"),
        (lambda s: "not-a-jwt", "token_malformed"),
        (lambda s: jwt.encode(claims(s, exp=int(time.time()) - 3600), secret(s)), "token_expired"),
        (lambda s: jwt.encode(claims(s, nbf=int(time.time()) + 3600), secret(s)),
         "token_not_yet_valid"),
        (lambda s: jwt.encode(claims(s, aud="someone-else"), secret(s)),
         "token_invalid_audience"),
        (lambda s: jwt.encode(claims(s, iss="evil"), secret(s)), "token_invalid_issuer"),
        (lambda s: jwt.encode(claims(s), "another-secret-another-secret-xyz"),
         "token_invalid_signature"),
        (lambda s: f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims(s))}.",
         "token_invalid_algorithm"),
        (lambda s: jwt.encode({k: v for k, v in claims(s).items() if k != "sub"}, secret(s)),
         "token_invalid"),
    ],
)  # fmt: skip
def test_every_bad_token_gets_401_with_a_reason(service, make_token, code):
    r = call(service, make_token(service))
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == code
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_tampered_payload_is_refused(service):
    header, _, signature = service.token("u1", "recommend").split(".")
    forged = f"{header}.{b64(claims(service, sub='u1', scope='admin'))}.{signature}"
    r = call(service, forged, "/v1/admin/model")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "token_invalid_signature"


def test_a_header_without_the_bearer_scheme_is_malformed(service):
    with httpx.Client(base_url=service.url) as http:
        r = http.get(RECS, headers={"Authorization": f"Basic {service.token()}"})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "token_malformed"


def test_auth_failures_are_counted_by_code(service):
    call(service, "garbage")
    with httpx.Client(base_url=service.url) as http:
        text = http.get("/metrics").text
    assert 'moerec_auth_failures_total{code="token_malformed"}' in text


def test_a_missing_scope_is_403(service):
    r = call(service, service.token("u1", "events:write"))
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "insufficient_scope"
    event = {"user_id": "u1", "item_id": "1", "event_type": "view"}
    r = call(service, service.token("u1", "recommend"), "/v1/events", "POST", json=event)
    assert r.status_code == 403
    r = call(service, service.token("u1", "recommend", "events:write"), "/v1/admin/model")
    assert r.status_code == 403


def test_a_user_reads_only_their_own_recommendations(service):
    token = service.token("u1", "recommend", "events:write")
    assert call(service, token, "/v1/users/u2/recommendations").status_code == 403
    assert call(service, token, "/v1/users/u2/history").status_code == 403
    r = call(service, token, "/v1/recommendations", "POST", json={"user_id": "u2"})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "forbidden_user"
    event = {"user_id": "u2", "item_id": "1", "event_type": "view"}
    assert call(service, token, "/v1/events", "POST", json=event).status_code == 403


def test_a_trusted_backend_or_admin_may_read_any_user(service):
    backend = service.token("shop-backend", "recommend", "recommend:any")
    admin = service.token("ops", "admin")
    assert call(service, backend, "/v1/users/u2/recommendations").status_code == 200
    assert call(service, admin, "/v1/users/u2/recommendations").status_code == 200


def test_the_rate_limit_answers_429_with_retry_after(service):
    burst = service.settings.rate_limit_user_burst
    token = service.token("rate-limited-user", "recommend")
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {token}"}) as http:
        statuses = []
        limited = None
        for _ in range(burst * 3):
            r = http.get("/v1/users/rate-limited-user/recommendations")
            statuses.append(r.status_code)
            if r.status_code == 429:
                limited = r
                break
    assert statuses[:burst] == [200] * burst  # a full bucket admits a burst
    assert limited is not None
    assert limited.json()["error"]["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    with httpx.Client(base_url=service.url) as http:
        assert "moerec_rate_limited_total 1.0" in http.get("/metrics").text


def test_tokens_are_minted_with_the_configured_issuer_and_audience(service):
    token = mint_token(service.settings, "u9", ["recommend"], 60)
    decoded = jwt.decode(
        token, secret(service), algorithms=["HS256"], audience=service.settings.jwt_audience
    )
    assert decoded["iss"] == service.settings.jwt_issuer
    assert decoded["scope"] == "recommend"
