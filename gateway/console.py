"""The ops console: static HTML, CSS and ES modules under `/console/`, served by the gateway itself.

The files carry no secret and need no token: every data call the console makes goes through `/api/...`
with the admin's own bearer token, so it is authenticated and audited like any other admin call. The
files are read once when the app is built; only those names are served (no path ever reaches the disk).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from gateway.config import GatewaySettings
from services.common.errors import ProblemError

ASSETS = Path(__file__).resolve().parent / "console_assets"
PREFIX = "/console"

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}

# No inline script or style, nothing from another origin, no framing: a token in sessionStorage is only as
# safe as the scripts that can read it.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class ConsoleFileNotFound(ProblemError):
    status = 404
    code = "NOT_FOUND"
    title = "No such console file"


@dataclass(frozen=True)
class ConsoleFile:
    """One file of the console, as it is answered."""

    body: bytes
    media_type: str
    etag: str


def load_console_files(root: Path = ASSETS) -> dict[str, ConsoleFile]:
    """Every servable file under `root`, by its path relative to it (e.g. `js/api.js`)."""
    files: dict[str, ConsoleFile] = {}
    for path in sorted(root.rglob("*")):
        media_type = MEDIA_TYPES.get(path.suffix)
        if media_type is None or not path.is_file():
            continue
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        files[path.relative_to(root).as_posix()] = ConsoleFile(body, media_type, etag)
    return files


def console_router(settings: GatewaySettings, files: dict[str, ConsoleFile] | None = None) -> APIRouter:
    """The `/console/` routes: the files, and the few facts the login form needs about this gateway."""
    served = load_console_files() if files is None else files
    router = APIRouter(include_in_schema=False)

    @router.get(PREFIX)
    async def console_root() -> Response:
        return RedirectResponse(f"{PREFIX}/", status_code=308)

    @router.get(f"{PREFIX}/config.json")
    async def console_config() -> Response:
        # Whether the login form may offer a dev token (POST /api/auth/token exists only then).
        body = {"dev_tokens": settings.dev_tokens}
        return JSONResponse(body, headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})

    @router.get(PREFIX + "/{name:path}")
    async def console_file(name: str, request: Request) -> Response:
        found = served.get(name or "index.html")
        if found is None:
            raise ConsoleFileNotFound(f"No console file {name!r}")
        # Revalidated on every load, so an upgraded gateway never runs old scripts against a new API.
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache", "ETag": found.etag}
        if request.headers.get("if-none-match") == found.etag:
            return Response(status_code=304, headers=headers)
        return Response(found.body, media_type=found.media_type, headers=headers)

    return router
