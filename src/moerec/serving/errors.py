"""The one error type the HTTP layer turns into a response.

Auth, rate limiting and the routes raise :class:`ApiError` with a status, a stable machine code
and a sentence a user can act on; the app's exception handler renders it as
``{"error": {"code": ..., "message": ...}}`` with the given headers. Keeping the type here (and
free of FastAPI) lets the building blocks stay testable without an app.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ApiError(Exception):
    """An HTTP error with a stable ``code`` clients can branch on and a human ``message``.

    ``code`` never changes wording once shipped (clients match on it); ``message`` may be
    improved freely. ``headers`` are sent as-is (``WWW-Authenticate``, ``Retry-After``, …).
    """

    __slots__ = ("code", "headers", "message", "status")

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status: int = status
        self.code: str = code
        self.message: str = message
        self.headers: dict[str, str] = dict(headers) if headers else {}

    def body(self) -> dict[str, Any]:
        """The JSON body the app sends: ``{"error": {"code": ..., "message": ...}}``."""
        return {"error": {"code": self.code, "message": self.message}}

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle through ``args`` by default, which would lose status and code.
        return (type(self), (self.status, self.code, self.message, self.headers))

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.code!r}, {self.message!r})"


def dependency_unavailable(dependency: str) -> ApiError:
    """The 503 for a dependency that cannot degrade (catalogue and history reads, flushes)."""
    return ApiError(
        503,
        f"{dependency}_unavailable",
        f"the {dependency} is unavailable; retry shortly",
        {"Retry-After": "1"},
    )


def internal_error() -> ApiError:
    """The 500 for an unexpected failure: no detail leaves the process, the log has it."""
    return ApiError(
        500,
        "internal_error",
        "the service failed to answer; the error is logged with this request's X-Request-ID",
    )
