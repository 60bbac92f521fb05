"""One pure-ASGI middleware for what every request needs: a request id, metrics, an access log
line, rate-limit and security headers, and a body size limit.

Pure ASGI (not BaseHTTPMiddleware) because it sits on the hot path: no extra task, no body
buffering. The route label is the matched template (``/v1/users/{user_id}/recommendations``),
never the raw path, so metric cardinality stays bounded.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
import uuid

import orjson
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moerec.serving.metrics import ServiceMetrics

access_log = logging.getLogger("moerec.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class ServiceMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        # A random process prefix and a counter: unique across replicas and restarts, and far
        # cheaper per request than uuid4 (which reads the kernel's random source each time).
        prefix = uuid.uuid4().hex[:12]
        self._ids = (f"{prefix}-{n:x}" for n in itertools.count(1))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = request_header(scope, b"x-request-id")
        request_id = given if given and _REQUEST_ID.match(given) else next(self._ids)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = request_id
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
                for name, value in state.get("response_headers", {}).items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        self.metrics.in_flight.inc()
        try:
            length = request_header(scope, b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
                await _too_large(send_with_headers, self.max_body_bytes)
            else:
                await self.app(scope, _limited(receive, self.max_body_bytes), send_with_headers)
        except BodyTooLargeError:
            await _too_large(send_with_headers, self.max_body_bytes)
        finally:
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.series(self.metrics.requests, template, method, str(status)).inc()
            self.metrics.series(self.metrics.latency, template, method).observe(elapsed)
            principal = state.get("principal")
            access_log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": method,
                    "path": scope["path"],
                    "route": template,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "subject": getattr(principal, "subject", None),
                },
            )


class BodyTooLargeError(Exception):
    """Raised while reading a body past the limit; the app answers 413."""


def _limited(receive: Receive, limit: int) -> Receive:
    """Counts body bytes as they arrive: chunked uploads cannot exceed the limit either."""
    seen = 0

    async def receive_limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLargeError
        return message

    return receive_limited


async def _too_large(send: Send, limit: int) -> None:
    body = orjson.dumps(
        {
            "error": {
                "code": "body_too_large",
                "message": f"the request body is larger than {limit} bytes (or its "
                "Content-Length is not a number); send less",
            }
        }
    )
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def request_header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower-case bytes, as ASGI gives them), or None."""
    for key, value in scope["headers"]:
        if key == name:
            decoded: str = value.decode("latin-1")
            return decoded
    return None
