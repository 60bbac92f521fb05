"""Bearer tokens: every way a token can be wrong gets its own code, and the good ones pass."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import pickle
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from moerec.config import DEVELOPMENT_SECRET, ConfigError, ServiceSettings, load_service_settings
from moerec.serving import auth
from moerec.serving.auth import (
    ADMIN,
    ALL_SCOPES,
    EVENTS_WRITE,
    RECOMMEND,
    RECOMMEND_ANY,
    Principal,
    TokenVerifier,
    bearer_token,
    mint_token,
    require,
)
from moerec.serving.errors import ApiError

SECRET = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
OTHER_SECRET = "another-secret-0123456789-abcdefghijklmnopqrstuvwxyz"


def hs_settings(**overrides: Any) -> ServiceSettings:
    values: dict[str, Any] = {"jwt_secret": SECRET, "jwt_leeway_seconds": 10.0, **overrides}
    return ServiceSettings(**values)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: object) -> str:
    return b64(json.dumps(value).encode())


def claims(**overrides: Any) -> dict[str, Any]:
    """A complete, currently valid claim set for the default settings."""
    now = int(time.time())
    values: dict[str, Any] = {
        "iss": "moerec",
        "aud": "moerec-api",
        "sub": "user-1",
        "iat": now,
        "exp": now + 600,
        "scope": "recommend",
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def hs_token(payload: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


def refused(verify: Callable[[], object]) -> ApiError:
    with pytest.raises(ApiError) as info:
        verify()
    return info.value


def assert_invalid_token(error: ApiError, code: str) -> None:
    assert error.status == 401
    assert error.code == code
    challenge = error.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer error="invalid_token", error_description="')
    description = challenge.split('error_description="', 1)[1]
    assert description.endswith('"')
    assert '"' not in description[:-1]  # RFC 6750: no quotes inside the quoted-string


# --------------------------------------------------------------------------- keys


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def private_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def asymmetric_settings(
    tmp_path: Path,
    algorithm: str,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    **overrides: Any,
) -> ServiceSettings:
    public = tmp_path / f"{algorithm}-public.pem"
    private = tmp_path / f"{algorithm}-private.pem"
    public.write_bytes(public_pem(key))
    private.write_bytes(private_pem(key))
    return ServiceSettings(
        jwt_algorithm=algorithm,
        jwt_public_key_file=public,
        jwt_private_key_file=private,
        **overrides,
    )


# --------------------------------------------------------------------------- good tokens


def test_a_minted_hs256_token_verifies_to_its_principal() -> None:
    settings = hs_settings()
    token = mint_token(settings, "user-1", [RECOMMEND, EVENTS_WRITE], ttl_seconds=60)
    principal = TokenVerifier(settings).verify(token)
    assert principal.subject == "user-1"
    assert principal.scopes == {RECOMMEND, EVENTS_WRITE}
    assert principal.client_id == "user-1"  # no cid: the subject is the client
    assert principal.token_id is not None
    assert len(principal.token_id) == 32
    int(principal.token_id, 16)


def test_minted_claims_carry_issuer_audience_times_and_client() -> None:
    settings = hs_settings(jwt_issuer="issuer-x", jwt_audience="aud-y")
    before = int(time.time())
    token = mint_token(settings, "svc", "recommend:any admin", ttl_seconds=90, client_id="web")
    payload = jwt.decode(token, options={"verify_signature": False})
    assert payload["iss"] == "issuer-x"
    assert payload["aud"] == "aud-y"
    assert payload["sub"] == "svc"
    assert payload["cid"] == "web"
    assert payload["scope"] == "admin recommend:any"
    assert before <= payload["iat"] == payload["nbf"] <= time.time()
    assert payload["exp"] == payload["iat"] + 90
    principal = TokenVerifier(settings).verify(token)
    assert principal.client_id == "web"
    assert principal.scopes == {ADMIN, RECOMMEND_ANY}


def test_every_token_gets_its_own_id() -> None:
    settings = hs_settings()
    ids = {
        jwt.decode(mint_token(settings, "u", [], 60), options={"verify_signature": False})["jti"]
        for _ in range(5)
    }
    assert len(ids) == 5


@pytest.mark.parametrize(("algorithm", "key_fixture"), [("RS256", "rsa_key"), ("ES256", "ec_key")])
def test_asymmetric_tokens_verify_with_the_public_key(
    tmp_path: Path, request: pytest.FixtureRequest, algorithm: str, key_fixture: str
) -> None:
    key = request.getfixturevalue(key_fixture)
    settings = asymmetric_settings(tmp_path, algorithm, key)
    verifier = TokenVerifier(settings)
    from_file = mint_token(settings, "user-7", [RECOMMEND], ttl_seconds=60)
    assert jwt.get_unverified_header(from_file)["alg"] == algorithm
    assert verifier.verify(from_file).subject == "user-7"
    # The private key may also be handed over directly (the CLI reads it from a flag).
    no_file = settings.model_copy(update={"jwt_private_key_file": None})
    given_key = mint_token(no_file, "user-8", [], 60, private_key_pem=private_pem(key))
    assert verifier.verify(given_key).subject == "user-8"


@pytest.mark.parametrize(("algorithm", "key_fixture"), [("RS256", "rsa_key"), ("ES256", "ec_key")])
def test_asymmetric_tokens_signed_by_another_key_are_refused(
    tmp_path: Path, request: pytest.FixtureRequest, algorithm: str, key_fixture: str
) -> None:
    key = request.getfixturevalue(key_fixture)
    settings = asymmetric_settings(tmp_path, algorithm, key)
    other = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if algorithm == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    forged = mint_token(settings, "user-1", [], 60, private_key_pem=private_pem(other))
    error = refused(lambda: TokenVerifier(settings).verify(forged))
    assert_invalid_token(error, "token_invalid_signature")


def test_a_certificate_may_stand_in_for_the_public_key(
    tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "moerec-issuer")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ec_key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(ec_key, hashes.SHA256())
    )
    settings = asymmetric_settings(tmp_path, "ES256", ec_key)
    assert settings.jwt_public_key_file is not None
    settings.jwt_public_key_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    token = mint_token(settings, "user-1", [], 60)
    assert TokenVerifier(settings).verify(token).subject == "user-1"


def test_an_audience_list_containing_ours_is_accepted() -> None:
    token = hs_token(claims(aud=["billing", "moerec-api"]))
    assert TokenVerifier(hs_settings()).verify(token).subject == "user-1"


# --------------------------------------------------------------------------- the header


@pytest.mark.parametrize(
    "header", ["Bearer abc.def.ghi", "bearer abc.def.ghi", "BEARER  abc.def.ghi"]
)
def test_bearer_scheme_is_case_insensitive(header: str) -> None:
    assert bearer_token(header) == "abc.def.ghi"


@pytest.mark.parametrize("header", [None, "", "   "])
def test_no_header_is_token_missing_without_an_error_code(header: str | None) -> None:
    error = refused(lambda: bearer_token(header))
    assert (error.status, error.code) == (401, "token_missing")
    # RFC 6750 §3.1: a request without credentials gets the bare challenge.
    assert error.headers == {"WWW-Authenticate": 'Bearer realm="moerec"'}
    assert "Authorization: Bearer" in error.message


@pytest.mark.parametrize(
    "header", ["Basic dXNlcjpwYXNz", "Token abc", "abc.def.ghi", "Bearer", "Bearer a b"]
)
def test_a_header_of_another_shape_is_token_malformed(header: str) -> None:
    assert_invalid_token(refused(lambda: bearer_token(header)), "token_malformed")


def test_authenticate_combines_header_parsing_and_verification() -> None:
    settings = hs_settings()
    verifier = TokenVerifier(settings)
    token = mint_token(settings, "user-1", [RECOMMEND], 60)
    assert verifier.authenticate(f"Bearer {token}").subject == "user-1"
    assert refused(lambda: verifier.authenticate(None)).code == "token_missing"


# --------------------------------------------------------------------------- bad tokens


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "a.b",
        "a.b.c.d",
        "!!!.@@@.###",
        f"{b64json({'alg': 'HS256'})}.%%%not-base64%%%.{b64(b'sig')}",
        f"{b64(b'not json')}.{b64json(claims())}.{b64(b'sig')}",
        f"{b64json(['a', 'list'])}.{b64json(claims())}.{b64(b'sig')}",
        "x" * (auth.MAX_TOKEN_CHARS + 1),
    ],
)
def test_garbage_tokens_are_token_malformed(token: str) -> None:
    assert_invalid_token(
        refused(lambda: TokenVerifier(hs_settings()).verify(token)), "token_malformed"
    )


def test_an_empty_token_is_token_missing() -> None:
    assert refused(lambda: TokenVerifier(hs_settings()).verify("")).code == "token_missing"


def test_an_expired_token_is_refused() -> None:
    now = int(time.time())
    token = hs_token(claims(iat=now - 3600, exp=now - 60))
    error = refused(lambda: TokenVerifier(hs_settings()).verify(token))
    assert_invalid_token(error, "token_expired")
    assert "expired at" in error.message


def test_expiry_allows_the_configured_leeway() -> None:
    settings = hs_settings(jwt_leeway_seconds=30)
    token = mint_token(settings, "user-1", [], ttl_seconds=60)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    inside = TokenVerifier(settings, clock=lambda: exp + 29.0, cache_size=0)
    assert inside.verify(token).subject == "user-1"
    outside = TokenVerifier(settings, clock=lambda: exp + 30.0, cache_size=0)
    assert_invalid_token(refused(lambda: outside.verify(token)), "token_expired")


def test_a_token_before_its_not_before_time_is_refused() -> None:
    settings = hs_settings(jwt_leeway_seconds=10)
    later = datetime.now(UTC) + timedelta(minutes=5)
    token = mint_token(settings, "user-1", [], ttl_seconds=60, not_before=later)
    payload = jwt.decode(token, options={"verify_signature": False})
    assert payload["exp"] == payload["nbf"] + 60  # the lifetime counts from when it is valid
    error = refused(lambda: TokenVerifier(settings).verify(token))
    assert_invalid_token(error, "token_not_yet_valid")
    # Within the leeway it is already good (clock skew between issuer and service).
    soon = TokenVerifier(settings, clock=lambda: payload["nbf"] - 9.0)
    assert soon.verify(token).subject == "user-1"


def test_a_token_issued_in_the_future_is_not_yet_valid() -> None:
    now = int(time.time())
    token = hs_token(claims(iat=now + 3600, exp=now + 7200))
    assert_invalid_token(
        refused(lambda: TokenVerifier(hs_settings()).verify(token)), "token_not_yet_valid"
    )


def test_a_token_for_another_audience_is_refused() -> None:
    token = mint_token(hs_settings(jwt_audience="billing-api"), "user-1", [], 60)
    error = refused(lambda: TokenVerifier(hs_settings()).verify(token))
    assert_invalid_token(error, "token_invalid_audience")
    assert "moerec-api" in error.message


def test_a_token_from_another_issuer_is_refused() -> None:
    token = mint_token(hs_settings(jwt_issuer="someone-else"), "user-1", [], 60)
    assert_invalid_token(
        refused(lambda: TokenVerifier(hs_settings()).verify(token)), "token_invalid_issuer"
    )


def test_a_token_signed_with_another_secret_is_refused() -> None:
    token = mint_token(hs_settings(jwt_secret=OTHER_SECRET), "user-1", [], 60)
    assert_invalid_token(
        refused(lambda: TokenVerifier(hs_settings()).verify(token)), "token_invalid_signature"
    )


def test_a_tampered_payload_breaks_the_signature() -> None:
    settings = hs_settings()
    header, payload, signature = mint_token(settings, "user-1", [RECOMMEND], 60).split(".")
    claims_ = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims_["scope"] = "admin"
    tampered = f"{header}.{b64json(claims_)}.{signature}"
    assert_invalid_token(
        refused(lambda: TokenVerifier(settings).verify(tampered)), "token_invalid_signature"
    )


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_an_unsigned_alg_none_token_is_refused(alg: str) -> None:
    token = f"{b64json({'alg': alg, 'typ': 'JWT'})}.{b64json(claims(scope='admin'))}."
    error = refused(lambda: TokenVerifier(hs_settings()).verify(token))
    assert_invalid_token(error, "token_invalid_algorithm")
    assert f"'{alg}'" in error.message


def test_hs_rs_key_confusion_is_refused(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    # The classic attack: take the service's RSA *public* key (public, after all) and use its
    # PEM bytes as an HMAC secret. A verifier that trusts the header's alg would accept it.
    settings = asymmetric_settings(tmp_path, "RS256", rsa_key)
    header = b64json({"alg": "HS256", "typ": "JWT"})
    payload = b64json(claims(scope="admin"))
    signing_input = f"{header}.{payload}".encode()
    mac = hmac.new(public_pem(rsa_key), signing_input, hashlib.sha256).digest()
    token = f"{header}.{payload}.{b64(mac)}"
    error = refused(lambda: TokenVerifier(settings).verify(token))
    assert_invalid_token(error, "token_invalid_algorithm")
    assert "RS256" in error.message


def test_an_asymmetric_token_is_refused_by_an_hs256_service(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = mint_token(asymmetric_settings(tmp_path, "RS256", rsa_key), "user-1", [], 60)
    assert_invalid_token(
        refused(lambda: TokenVerifier(hs_settings()).verify(token)), "token_invalid_algorithm"
    )


def test_an_unknown_algorithm_name_is_not_echoed() -> None:
    token = f"{b64json({'alg': 'x' * 40 + chr(10) + 'Set-Cookie: a=b'})}.{b64json(claims())}."
    error = refused(lambda: TokenVerifier(hs_settings()).verify(token))
    assert_invalid_token(error, "token_invalid_algorithm")
    assert "unknown algorithm" in error.message
    assert "\n" not in error.headers["WWW-Authenticate"]


@pytest.mark.parametrize("claim", ["sub", "exp", "iss", "aud"])
def test_a_missing_required_claim_is_named(claim: str) -> None:
    token = hs_token(claims(**{claim: None}))
    error = refused(lambda: TokenVerifier(hs_settings()).verify(token))
    assert_invalid_token(error, "token_invalid")
    assert f"'{claim}'" in error.message


@pytest.mark.parametrize(
    ("overrides", "claim"),
    [
        ({"sub": ""}, "sub"),
        ({"sub": 42}, "sub"),
        ({"exp": "tomorrow"}, "exp"),
        ({"exp": True}, "exp"),
        ({"nbf": "now"}, "nbf"),
        ({"scope": ["recommend"]}, "scope"),
        ({"scopes": "recommend"}, "scopes"),
        ({"scopes": ["recommend", 3]}, "scopes"),
        ({"cid": ""}, "cid"),
        ({"cid": 7}, "cid"),
        ({"jti": 7}, "jti"),
    ],
)
def test_claims_of_the_wrong_type_are_token_invalid(overrides: dict[str, Any], claim: str) -> None:
    error = refused(lambda: TokenVerifier(hs_settings()).verify(hs_token(claims(**overrides))))
    assert_invalid_token(error, "token_invalid")
    assert claim in error.message


@given(st.text(max_size=300))
@hypothesis_settings(max_examples=150, deadline=None)
def test_no_input_escapes_as_anything_but_a_401(token: str) -> None:
    verifier = _FUZZ_VERIFIER
    with pytest.raises(ApiError) as info:
        verifier.verify(token)
    assert info.value.status == 401


@given(st.lists(st.binary(max_size=60), min_size=3, max_size=3))
@hypothesis_settings(max_examples=150, deadline=None)
def test_random_base64_segments_are_refused_cleanly(parts: list[bytes]) -> None:
    with pytest.raises(ApiError) as info:
        _FUZZ_VERIFIER.verify(".".join(b64(part) for part in parts))
    assert info.value.status == 401


_FUZZ_VERIFIER = TokenVerifier(hs_settings())


# --------------------------------------------------------------------------- scopes


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"scope": "recommend events:write"}, {RECOMMEND, EVENTS_WRITE}),
        ({"scope": "  recommend   admin "}, {RECOMMEND, ADMIN}),
        (
            {"scope": None, "scopes": ["recommend:any", "events:write"]},
            {RECOMMEND_ANY, EVENTS_WRITE},
        ),
        ({"scope": "recommend", "scopes": ["admin"]}, {RECOMMEND, ADMIN}),
        ({"scope": "recommend billing:read openid"}, {RECOMMEND}),  # unknown ones are dropped
        ({"scope": None}, set()),
        ({"scope": ""}, set()),
    ],
)
def test_scopes_come_from_scope_string_or_scopes_list(
    extra: dict[str, Any], expected: set[str]
) -> None:
    principal = TokenVerifier(hs_settings()).verify(hs_token(claims(**extra)))
    assert principal.scopes == expected


def test_wider_scopes_grant_narrower_ones() -> None:
    admin = Principal("ops", frozenset({ADMIN}), "ops")
    assert all(admin.has(scope) for scope in ALL_SCOPES)
    backend = Principal("web", frozenset({RECOMMEND_ANY}), "web")
    assert backend.has(RECOMMEND)
    assert backend.has(RECOMMEND_ANY)
    assert not backend.has(EVENTS_WRITE)
    assert not backend.has(ADMIN)
    user = Principal("u1", frozenset({RECOMMEND}), "u1")
    assert user.has(RECOMMEND)
    assert not user.has(RECOMMEND_ANY)
    assert not user.has("something-else")


def test_users_read_themselves_and_back_ends_read_anyone() -> None:
    user = Principal("u1", frozenset({RECOMMEND}), "app")
    assert user.may_read_user("u1")
    assert not user.may_read_user("u2")
    assert not user.may_read_user("U1")
    assert Principal("web", frozenset({RECOMMEND_ANY}), "web").may_read_user("u2")
    assert Principal("ops", frozenset({ADMIN}), "ops").may_read_user("u2")
    assert not Principal("svc", frozenset({EVENTS_WRITE}), "svc").may_read_user("u2")


def test_require_refuses_a_missing_scope_with_403() -> None:
    principal = Principal("u1", frozenset({RECOMMEND}), "u1")
    require(principal, RECOMMEND)  # held: nothing happens
    error = refused(lambda: require(principal, EVENTS_WRITE))
    assert (error.status, error.code) == (403, "insufficient_scope")
    assert "events:write" in error.message
    assert error.headers["WWW-Authenticate"].startswith(
        'Bearer error="insufficient_scope", scope="events:write"'
    )
    assert error.body() == {"error": {"code": "insufficient_scope", "message": error.message}}


def test_api_errors_survive_pickling() -> None:
    error = ApiError(429, "rate_limited", "slow down", {"Retry-After": "3"})
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.status, copy.code, copy.message, copy.headers) == (
        429,
        "rate_limited",
        "slow down",
        {"Retry-After": "3"},
    )


# --------------------------------------------------------------------------- minting


def test_minting_refuses_unknown_scopes_and_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="unknown scope") as info:
        mint_token(hs_settings(), "u1", ["recommend", "superuser"], 60)
    assert "superuser" in str(info.value)
    assert all(scope in str(info.value) for scope in ALL_SCOPES)


@pytest.mark.parametrize("ttl", [0, -5])
def test_minting_needs_a_positive_lifetime(ttl: int) -> None:
    with pytest.raises(ConfigError, match="ttl_seconds"):
        mint_token(hs_settings(), "u1", [], ttl)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"subject": ""}, "subject"),
        ({"subject": "  "}, "subject"),
        ({"client_id": ""}, "client_id"),
        ({"not_before": datetime(2030, 1, 1)}, "timezone-aware"),
        ({"private_key_pem": b"-----BEGIN PRIVATE KEY-----"}, "only for RS256/ES256"),
    ],
)
def test_minting_refuses_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    arguments: dict[str, Any] = {"subject": "u1", "scopes": [], "ttl_seconds": 60, **kwargs}
    with pytest.raises(ConfigError, match=match):
        mint_token(hs_settings(), **arguments)


def test_minting_rs256_without_a_private_key_says_which_setting_to_set(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    settings = asymmetric_settings(tmp_path, "RS256", rsa_key)
    settings = settings.model_copy(update={"jwt_private_key_file": None})
    with pytest.raises(ConfigError, match="MOEREC_JWT_PRIVATE_KEY_FILE"):
        mint_token(settings, "u1", [], 60)


def test_minting_with_a_key_of_the_wrong_type_is_refused(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    settings = asymmetric_settings(tmp_path, "RS256", rsa_key)
    with pytest.raises(ConfigError, match="not an RSA key"):
        mint_token(settings, "u1", [], 60, private_key_pem=private_pem(ec_key))
    with pytest.raises(ConfigError, match="not a PEM private key"):
        mint_token(settings, "u1", [], 60, private_key_pem=b"hello")
    encrypted = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    with pytest.raises(ConfigError, match="encrypted"):
        mint_token(settings, "u1", [], 60, private_key_pem=encrypted)


# --------------------------------------------------------------------------- key configuration


def test_a_missing_public_key_file_is_a_config_error(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    settings = asymmetric_settings(tmp_path, "RS256", rsa_key)
    settings = settings.model_copy(update={"jwt_public_key_file": tmp_path / "nope.pem"})
    with pytest.raises(ConfigError, match=r"cannot read MOEREC_JWT_PUBLIC_KEY_FILE .*nope\.pem"):
        TokenVerifier(settings)


def test_a_public_key_file_of_garbage_is_a_config_error(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    settings = asymmetric_settings(tmp_path, "RS256", rsa_key)
    assert settings.jwt_public_key_file is not None
    settings.jwt_public_key_file.write_text("not a key")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        TokenVerifier(settings)
    settings.jwt_public_key_file.write_bytes(private_pem(rsa_key))
    with pytest.raises(ConfigError, match="PRIVATE key"):
        TokenVerifier(settings)


def test_a_public_key_of_the_wrong_kind_is_a_config_error(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    with pytest.raises(ConfigError, match="not an EC key"):
        TokenVerifier(asymmetric_settings(tmp_path, "ES256", rsa_key))
    with pytest.raises(ConfigError, match="not an RSA key"):
        TokenVerifier(asymmetric_settings(tmp_path, "RS256", ec_key))
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ConfigError, match="P-256"):
        TokenVerifier(asymmetric_settings(tmp_path, "ES256", p384))
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ConfigError, match="2048"):
        TokenVerifier(asymmetric_settings(tmp_path, "RS256", short))


def test_production_refuses_the_development_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOEREC_JWT_SECRET", raising=False)
    monkeypatch.delenv("MOEREC_JWT_ALGORITHM", raising=False)
    with pytest.raises(ConfigError, match="MOEREC_JWT_SECRET"):
        load_service_settings(mode="production")
    with pytest.raises(ConfigError, match="placeholder"):
        load_service_settings(mode="production", jwt_secret=DEVELOPMENT_SECRET)
    with pytest.raises(ConfigError, match="placeholder"):
        load_service_settings(mode="production", jwt_secret="too-short")
    good = load_service_settings(mode="production", jwt_secret=SECRET)
    assert TokenVerifier(good).verify(mint_token(good, "u1", [], 60)).subject == "u1"


def test_development_falls_back_to_the_development_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MOEREC_JWT_SECRET", raising=False)
    settings = ServiceSettings(mode="development")
    token = mint_token(settings, "u1", [], 60)
    assert jwt.decode(token, DEVELOPMENT_SECRET, algorithms=["HS256"], audience="moerec-api")
    assert TokenVerifier(settings).verify(token).subject == "u1"


# --------------------------------------------------------------------------- the cache


def test_a_cached_token_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = hs_settings(jwt_leeway_seconds=0)
    token = mint_token(settings, "user-1", [RECOMMEND], ttl_seconds=1)
    iat = jwt.decode(token, options={"verify_signature": False})["iat"]
    now = [float(iat)]
    verifier = TokenVerifier(settings, clock=lambda: now[0])
    assert verifier.verify(token).subject == "user-1"

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached token must not be decoded again")

    monkeypatch.setattr(jwt, "decode", no_decoding)
    now[0] = iat + 0.5
    assert verifier.verify(token).subject == "user-1"  # served from the cache
    now[0] = iat + 1.0
    assert_invalid_token(refused(lambda: verifier.verify(token)), "token_expired")
    monkeypatch.undo()
    # ... and it was dropped from the cache: a fresh check refuses it the same way.
    assert_invalid_token(refused(lambda: verifier.verify(token)), "token_expired")


def test_the_cache_is_bounded_and_can_be_turned_off() -> None:
    settings = hs_settings()
    tokens = [mint_token(settings, f"user-{i}", [], 60) for i in range(5)]
    small = TokenVerifier(settings, cache_size=2)
    uncached = TokenVerifier(settings, cache_size=0)
    for token in tokens:
        assert small.verify(token) == uncached.verify(token)
    assert len(small._cache) == 2
    assert len(uncached._cache) == 0
    with pytest.raises(ValueError, match="cache_size"):
        TokenVerifier(settings, cache_size=-1)


def test_a_refused_token_is_never_cached() -> None:
    verifier = TokenVerifier(hs_settings())
    forged = mint_token(hs_settings(jwt_secret=OTHER_SECRET), "user-1", [], 60)
    for _ in range(2):
        assert refused(lambda: verifier.verify(forged)).code == "token_invalid_signature"
    assert len(verifier._cache) == 0
