"""JWT bearer tokens: verified on every request, minted by ``moerec token create`` and tests.

A token names a *subject* (a user id, or a service name for a trusted back-end), the *scopes*
it grants and optionally the *client* it was issued to (claim ``cid``; rate limits are kept per
client as well as per user). The verifier pins the one configured algorithm, so ``alg: none``
tokens and HS/RS key confusion (an HMAC token "signed" with the RSA public key) are refused
before any signature maths runs.

Every failure is an :class:`~moerec.serving.errors.ApiError` with a distinct machine code, so a
client can tell "get a new token" (``token_expired``) from "you are talking to the wrong
service" (``token_invalid_audience``). The 401s carry an RFC 6750 ``WWW-Authenticate`` header.

Verification runs on every request, so keys are parsed once and successfully verified tokens
are kept in a small LRU keyed by the raw token; a hit skips the signature check but still
checks ``exp``/``nbf`` against the clock, so a cached token expires on time.
"""

from __future__ import annotations

import math
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from moerec.config import ConfigError, ServiceSettings
from moerec.serving.errors import ApiError

# --------------------------------------------------------------------------- scopes

RECOMMEND: Final = "recommend"
"""Read recommendations for the token's own subject."""
RECOMMEND_ANY: Final = "recommend:any"
"""Read recommendations for any user (a trusted back-end serving many users)."""
EVENTS_WRITE: Final = "events:write"
"""Record interaction events."""
ADMIN: Final = "admin"
"""Operator actions (cache flush, model reload, …); grants every other scope too."""
ALL_SCOPES: Final[frozenset[str]] = frozenset({RECOMMEND, RECOMMEND_ANY, EVENTS_WRITE, ADMIN})

# For each scope, the held scopes that grant it. ``admin`` grants everything and
# ``recommend:any`` grants ``recommend``, so a back-end token needs only its widest scope.
_GRANTED_BY: Final[Mapping[str, frozenset[str]]] = {
    RECOMMEND: frozenset({RECOMMEND, RECOMMEND_ANY, ADMIN}),
    RECOMMEND_ANY: frozenset({RECOMMEND_ANY, ADMIN}),
    EVENTS_WRITE: frozenset({EVENTS_WRITE, ADMIN}),
    ADMIN: frozenset({ADMIN}),
}

REQUIRED_CLAIMS: Final = ("exp", "sub", "iss", "aud")
MAX_TOKEN_CHARS: Final = 8192
"""Longer "tokens" are refused before decoding: no issuer of ours makes them."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as proven by a verified token.

    ``scopes`` holds the known scopes the token grants (unknown ones are dropped at
    verification, so a token minted for a newer service version still works here).
    """

    subject: str
    scopes: frozenset[str]
    client_id: str
    token_id: str | None = None

    def has(self, scope: str) -> bool:
        """Whether the token grants ``scope``, directly or through a wider scope."""
        return not self.scopes.isdisjoint(_GRANTED_BY.get(scope, (scope,)))

    def may_read_user(self, user_id: str) -> bool:
        """Whether this caller may see ``user_id``'s recommendations and history.

        Users may read their own; back-ends holding ``recommend:any`` (or ``admin``) may read
        anyone's.
        """
        return self.subject == user_id or self.has(RECOMMEND_ANY)


# --------------------------------------------------------------------------- errors

# RFC 6750 §3: error_description is a quoted-string of %x20-21 / %x23-5B / %x5D-7E.
_UNSAFE_DESCRIPTION = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")
_ALGORITHM_NAME = re.compile(r"[A-Za-z0-9+-]{1,16}")


def _quoted(text: str) -> str:
    return _UNSAFE_DESCRIPTION.sub(lambda m: "'" if m.group() == '"' else "?", text)


def _unauthorized(code: str, message: str) -> ApiError:
    header = f'Bearer error="invalid_token", error_description="{_quoted(message)}"'
    return ApiError(401, code, message, {"WWW-Authenticate": header})


def _missing() -> ApiError:
    # RFC 6750 §3.1: a request without credentials gets no error code, only the challenge.
    return ApiError(
        401,
        "token_missing",
        "This endpoint needs an access token: send the header 'Authorization: Bearer <token>'.",
        {"WWW-Authenticate": 'Bearer realm="moerec"'},
    )


def _invalid_claim(claim: str, problem: str) -> ApiError:
    return _unauthorized(
        "token_invalid",
        f"The access token's '{claim}' claim {problem}; ask its issuer for a corrected token.",
    )


def _iso(timestamp: float) -> str:
    try:
        moment = datetime.fromtimestamp(timestamp, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return f"{timestamp:.0f} (seconds since the epoch)"
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- headers


def bearer_token(authorization_header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive).

    Raises ``ApiError(401, "token_missing")`` without a header and ``token_malformed`` for any
    other scheme or shape, so clients sending Basic auth by mistake are told so.
    """
    if authorization_header is None or not authorization_header.strip():
        raise _missing()
    parts = authorization_header.split()
    if parts[0].lower() != "bearer":
        raise _unauthorized(
            "token_malformed",
            "The Authorization header must use the Bearer scheme: 'Authorization: Bearer <token>'.",
        )
    if len(parts) != 2:
        raise _unauthorized(
            "token_malformed",
            "The Authorization header must be 'Bearer' followed by exactly one token.",
        )
    return parts[1]


def require(principal: Principal, scope: str) -> None:
    """Refuse (403 ``insufficient_scope``) a caller whose token does not grant ``scope``."""
    if principal.has(scope):
        return
    message = (
        f"This request needs scope '{scope}', which the access token does not grant; "
        f"ask for a token with scope '{scope}'."
    )
    header = (
        f'Bearer error="insufficient_scope", scope="{_quoted(scope)}", '
        f'error_description="{_quoted(message)}"'
    )
    raise ApiError(403, "insufficient_scope", message, {"WWW-Authenticate": header})


# --------------------------------------------------------------------------- keys

_PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
_PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
_MIN_RSA_BITS: Final = 2048


def _read_pem(path: Path, variable: str) -> bytes:
    try:
        return path.expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read {variable} {path}: {exc.strerror or exc}; point it at a readable PEM file"
        ) from None


def _check_key_type(key: object, algorithm: str, where: str) -> None:
    """Refuse a key that cannot (or should not) sign/verify ``algorithm``."""
    if algorithm == "RS256":
        if not isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
            raise ConfigError(f"{where} is not an RSA key, but MOEREC_JWT_ALGORITHM is RS256")
        if key.key_size < _MIN_RSA_BITS:
            raise ConfigError(
                f"{where} is a {key.key_size}-bit RSA key; RS256 needs at least {_MIN_RSA_BITS}"
            )
    elif algorithm == "ES256":
        if not isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{where} is not an EC key, but MOEREC_JWT_ALGORITHM is ES256")
        if not isinstance(key.curve, ec.SECP256R1):
            raise ConfigError(
                f"{where} is an EC key on curve {key.curve.name}; ES256 needs P-256 (secp256r1)"
            )
    else:  # pragma: no cover - ServiceSettings only allows the three algorithms
        raise ConfigError(f"unsupported JWT algorithm {algorithm!r}")


def load_public_key(settings: ServiceSettings) -> _PublicKey:
    """The RS256/ES256 verification key from ``MOEREC_JWT_PUBLIC_KEY_FILE``.

    Accepts a PEM public key (``BEGIN PUBLIC KEY``) or an X.509 certificate holding one.
    """
    path = settings.jwt_public_key_file
    if path is None:
        raise ConfigError(
            f"{settings.jwt_algorithm} needs MOEREC_JWT_PUBLIC_KEY_FILE (a PEM public key)"
        )
    data = _read_pem(path, "MOEREC_JWT_PUBLIC_KEY_FILE")
    where = f"MOEREC_JWT_PUBLIC_KEY_FILE {path}"
    key: object
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        try:
            key = x509.load_pem_x509_certificate(data).public_key()
        except (ValueError, TypeError, UnsupportedAlgorithm):
            hint = (
                "it holds a PRIVATE key; give the public half "
                "(openssl pkey -in private.pem -pubout -out public.pem)"
                if b"PRIVATE KEY" in data
                else "expected '-----BEGIN PUBLIC KEY-----'"
            )
            raise ConfigError(f"{where} is not a PEM public key: {hint}") from None
    _check_key_type(key, settings.jwt_algorithm, where)
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise ConfigError(f"{where} is not an RSA or EC public key")
    return key


def _load_private_key(settings: ServiceSettings, private_key_pem: bytes | None) -> _PrivateKey:
    if private_key_pem is not None:
        data, where = private_key_pem, "the private key given"
    elif settings.jwt_private_key_file is not None:
        path = settings.jwt_private_key_file
        data = _read_pem(path, "MOEREC_JWT_PRIVATE_KEY_FILE")
        where = f"MOEREC_JWT_PRIVATE_KEY_FILE {path}"
    else:
        raise ConfigError(
            f"minting {settings.jwt_algorithm} tokens needs the private key: "
            "set MOEREC_JWT_PRIVATE_KEY_FILE to a PEM file"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(
            f"{where} is encrypted; give an unencrypted PEM private key "
            "(openssl pkey -in encrypted.pem -out plain.pem)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(
            f"{where} is not a PEM private key (expected '-----BEGIN PRIVATE KEY-----')"
        ) from None
    _check_key_type(key, settings.jwt_algorithm, where)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{where} is not an RSA or EC private key")
    return key


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True, slots=True)
class _Verified:
    """A fully verified token: what a cache hit needs to re-check the clock and answer."""

    principal: Principal
    expires: float
    not_before: float | None
    issued_at: float | None


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _invalid_claim(name, "must be a NumericDate (seconds since the epoch)")
    return float(value)


def _scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    """Known scopes from ``scope`` (OAuth2: space-separated) and/or ``scopes`` (a list)."""
    granted: set[str] = set()
    text = claims.get("scope")
    if text is not None:
        if not isinstance(text, str):
            raise _invalid_claim("scope", "must be a space-separated string")
        granted.update(text.split())
    listed = claims.get("scopes")
    if listed is not None:
        if not isinstance(listed, list) or not all(isinstance(s, str) for s in listed):
            raise _invalid_claim("scopes", "must be a list of strings")
        granted.update(listed)
    return frozenset(granted & ALL_SCOPES)


class TokenVerifier:
    """Verifies bearer tokens against one service's settings.

    Build one per app (keys are parsed here, once) and call :meth:`verify` per request. It is
    safe to share between threads. ``clock`` (seconds since the epoch) decides ``exp``/``nbf``
    on every call, cached or not, so tests can move time without sleeping; ``cache_size=0``
    turns the verified-token cache off.
    """

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        clock: Callable[[], float] = time.time,
        cache_size: int = 4096,
    ) -> None:
        if cache_size < 0:
            raise ValueError("cache_size must be >= 0")
        self._algorithm: str = settings.jwt_algorithm
        self._key: str | _PublicKey = (
            settings.signing_secret() if self._algorithm == "HS256" else load_public_key(settings)
        )
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._leeway = float(settings.jwt_leeway_seconds)
        self._clock = clock
        self._cache_size = cache_size
        self._cache: OrderedDict[str, _Verified] = OrderedDict()
        self._lock = threading.Lock()
        # PyJWT checks the signature, iss, aud and that the required claims are present.
        # exp/nbf/iat are checked here against ``clock`` (PyJWT would read the wall clock), and
        # the types of sub/jti too, so every PyJWT version gives the same error codes.
        self._options: Any = {
            "require": list(REQUIRED_CLAIMS),
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
            "verify_sub": False,
            "verify_jti": False,
        }

    @property
    def algorithm(self) -> str:
        """The one algorithm accepted."""
        return self._algorithm

    def authenticate(self, authorization_header: str | None) -> Principal:
        """:func:`bearer_token` then :meth:`verify`: the whole per-request check."""
        return self.verify(bearer_token(authorization_header))

    def verify(self, token: str) -> Principal:
        """The principal a token proves, or ``ApiError(401, ...)`` saying what is wrong."""
        now = self._clock()
        if self._cache_size:
            with self._lock:
                hit = self._cache.get(token)
                if hit is not None:
                    self._cache.move_to_end(token)
            if hit is not None:
                try:
                    self._check_times(hit, now)
                except ApiError:
                    with self._lock:
                        self._cache.pop(token, None)
                    raise
                return hit.principal
        verified = self._verify_uncached(token, now)
        if self._cache_size:
            with self._lock:
                self._cache[token] = verified
                self._cache.move_to_end(token)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return verified.principal

    def _verify_uncached(self, token: str, now: float) -> _Verified:
        if not token:
            raise _missing()
        if len(token) > MAX_TOKEN_CHARS:
            raise _unauthorized(
                "token_malformed",
                f"The access token is longer than {MAX_TOKEN_CHARS} characters; "
                "send the token exactly as issued.",
            )
        claims = self._decode(token)
        verified = _Verified(
            principal=_principal(claims),
            expires=_numeric_date(claims, "exp") or 0.0,
            not_before=_numeric_date(claims, "nbf"),
            issued_at=_numeric_date(claims, "iat"),
        )
        self._check_times(verified, now)
        return verified

    def _decode(self, token: str) -> dict[str, Any]:
        """Signature, algorithm, iss, aud and required claims, mapped to our error codes."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                audience=self._audience,
                issuer=self._issuer,
                options=self._options,
            )
        except jwt.InvalidSignatureError:
            raise _unauthorized(
                "token_invalid_signature",
                "The access token's signature does not match: it was signed with another key "
                "or changed after it was issued. Get a new token from the issuer.",
            ) from None
        except jwt.InvalidAlgorithmError:
            raise _unauthorized(
                "token_invalid_algorithm",
                f"The access token is signed with {_header_algorithm(token)}; this service "
                f"accepts {self._algorithm} tokens only.",
            ) from None
        except jwt.DecodeError:
            raise _unauthorized(
                "token_malformed",
                "The access token is not a well-formed JWT (three base64url parts of JSON); "
                "send the token exactly as issued.",
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise _invalid_claim(exc.claim, "is missing") from None
        except jwt.InvalidAudienceError:
            raise _unauthorized(
                "token_invalid_audience",
                f"The access token is meant for another service; this service accepts "
                f"audience '{self._audience}'.",
            ) from None
        except jwt.InvalidIssuerError:
            raise _unauthorized(
                "token_invalid_issuer",
                f"The access token was not issued by '{self._issuer}'; get a token from "
                "that issuer.",
            ) from None
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise _unauthorized(
                "token_invalid", f"The access token was refused ({exc}); get a new token."
            ) from None
        return claims

    def _check_times(self, verified: _Verified, now: float) -> None:
        leeway = self._leeway
        if verified.expires <= now - leeway:
            raise _unauthorized(
                "token_expired",
                f"The access token expired at {_iso(verified.expires)}; get a new token.",
            )
        if verified.not_before is not None and verified.not_before > now + leeway:
            raise _unauthorized(
                "token_not_yet_valid",
                f"The access token is not valid before {_iso(verified.not_before)}; wait, or "
                "check the clock of the machine that issued it.",
            )
        if verified.issued_at is not None and verified.issued_at > now + leeway:
            raise _unauthorized(
                "token_not_yet_valid",
                f"The access token claims to be issued in the future "
                f"({_iso(verified.issued_at)}); check the clock of the machine that issued it.",
            )


def _header_algorithm(token: str) -> str:
    """The ``alg`` a refused token claims, safe to echo (it is attacker-controlled)."""
    try:
        alg = jwt.get_unverified_header(token).get("alg")
    except (jwt.PyJWTError, ValueError, TypeError):
        return "an unknown algorithm"
    if isinstance(alg, str) and _ALGORITHM_NAME.fullmatch(alg):
        return f"'{alg}'"
    return "an unknown algorithm"


def _principal(claims: Mapping[str, Any]) -> Principal:
    subject = claims["sub"]  # present: PyJWT checked
    if not isinstance(subject, str) or not subject.strip():
        raise _invalid_claim("sub", "must be a non-empty string")
    client_id = claims.get("cid", subject)
    if not isinstance(client_id, str) or not client_id.strip():
        raise _invalid_claim("cid", "must be a non-empty string")
    token_id = claims.get("jti")
    if token_id is not None and not isinstance(token_id, str):
        raise _invalid_claim("jti", "must be a string")
    return Principal(
        subject=subject,
        scopes=_scopes(claims),
        client_id=client_id,
        token_id=token_id,
    )


# --------------------------------------------------------------------------- minting


def mint_token(
    settings: ServiceSettings,
    subject: str,
    scopes: Iterable[str],
    ttl_seconds: int,
    client_id: str | None = None,
    not_before: datetime | None = None,
    private_key_pem: bytes | None = None,
) -> str:
    """A signed token for ``subject`` that the service configured by ``settings`` accepts.

    HS256 signs with the configured secret; RS256/ES256 with ``private_key_pem`` or else
    ``MOEREC_JWT_PRIVATE_KEY_FILE``. The token lives ``ttl_seconds`` from when it becomes
    valid (``not_before``, a timezone-aware time, or now). ``scopes`` may also be one
    space-separated string. Raises :class:`ConfigError` for anything the caller must fix.
    """
    if not subject or not subject.strip():
        raise ConfigError("a token needs a subject (a user id or a service name)")
    if client_id is not None and not client_id.strip():
        raise ConfigError("client_id, when given, must not be empty")
    requested = scopes.split() if isinstance(scopes, str) else list(scopes)
    unknown = sorted(set(requested) - ALL_SCOPES)
    if unknown:
        raise ConfigError(
            f"unknown scope(s): {', '.join(unknown)}; valid scopes are "
            f"{', '.join(sorted(ALL_SCOPES))}"
        )
    if isinstance(ttl_seconds, bool) or ttl_seconds <= 0:
        raise ConfigError(f"ttl_seconds must be a positive number of seconds, not {ttl_seconds}")

    now = int(time.time())
    if not_before is None:
        nbf = now
    elif not_before.tzinfo is None or not_before.utcoffset() is None:
        raise ConfigError("not_before must be timezone-aware (e.g. datetime.now(UTC))")
    else:
        nbf = math.floor(not_before.timestamp())
    claims: dict[str, Any] = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": subject,
        "iat": now,
        "nbf": nbf,
        "exp": max(now, nbf) + math.ceil(ttl_seconds),
        "jti": uuid.uuid4().hex,
        "scope": " ".join(sorted(set(requested))),
    }
    if client_id is not None:
        claims["cid"] = client_id

    key: str | _PrivateKey
    if settings.jwt_algorithm == "HS256":
        if private_key_pem is not None:
            raise ConfigError(
                "HS256 tokens are signed with MOEREC_JWT_SECRET; a private key is only "
                "for RS256/ES256"
            )
        key = settings.signing_secret()
    else:
        key = _load_private_key(settings, private_key_pem)
    return jwt.encode(claims, key, algorithm=settings.jwt_algorithm)
