"""The playground: a static page at ``/ui/`` that calls this service's own API from a browser.

Plain HTML, CSS and JavaScript shipped as package data in ``moerec/serving/ui/`` (no build
step; nothing is fetched from another origin). The page asks for a bearer token and keeps it
in the tab's ``sessionStorage``; every call it makes goes through the same authentication,
rate limits and metrics as any other client. It is on by default in development mode and off
in production mode (``MOEREC_UI_ENABLED`` decides either way).

Only the files listed in :data:`UI_FILES` are served, read once from the package, with a
Content-Security-Policy that allows scripts, styles and connections to this origin only (the
page uses no inline script, inline style or event-handler attribute).
"""

from __future__ import annotations

import functools
from importlib import resources

from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from moerec.config import ServiceSettings

UI_PATH = "/ui/"
UI_FILES: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "metrics.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
}
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

router = APIRouter(tags=["playground"], include_in_schema=False)


def enabled(settings: ServiceSettings) -> bool:
    """``MOEREC_UI_ENABLED`` if set, else on in development mode and off in production."""
    if settings.ui_enabled is not None:
        return settings.ui_enabled
    return settings.mode == "development"


def install(app: FastAPI, settings: ServiceSettings) -> None:
    """Add the playground's routes to ``app`` when the settings enable it."""
    if enabled(settings):
        app.include_router(router)


@functools.cache
def _read(name: str) -> bytes:
    return resources.files("moerec.serving").joinpath("ui", name).read_bytes()


def _file(name: str) -> Response:
    media_type = UI_FILES.get(name)
    if media_type is None:
        raise StarletteHTTPException(404)
    return Response(
        _read(name),
        media_type=media_type,
        headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY},
    )


@router.get("/ui")
async def ui_root() -> Response:
    """The page's relative links resolve under ``/ui/``."""
    return RedirectResponse(UI_PATH, status_code=307)


@router.get(UI_PATH)
async def ui_index() -> Response:
    return _file("index.html")


@router.get("/ui/{name}")
async def ui_file(name: str) -> Response:
    return _file(name)
