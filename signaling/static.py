"""The page: files under web/ over GET and HEAD, with the security headers every response carries.

Only files inside the web folder are served: no `..`, no hidden files (a name starting with a dot),
no backslashes or NUL bytes, no symbolic links out of it. Other methods get 405 from the router.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import unquote

from aiohttp import web

# The page loads its own script, styles and icon, talks to /ws on its own origin and shows
# WebRTC media; nothing else. ('self' covers ws:/wss: of the same host in CSP level 3.)
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob: mediastream:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".ico": "image/x-icon",
    ".json": "application/json",
}


def resolve_static(web_dir: Path, raw_path: str) -> Path | None:
    """The file under `web_dir` that a request path names, or None (not found or not allowed)."""
    path = unquote(raw_path)
    if path in ("", "/"):
        path = "/index.html"
    if "\\" in path or "\x00" in path:
        return None
    relative = Path(path.lstrip("/"))
    if any(part in ("..", "") or part.startswith(".") for part in relative.parts):
        return None
    target = (web_dir / relative).resolve()
    if not target.is_relative_to(web_dir) or not target.is_file():
        return None
    return target


def static_handler(web_dir: Path) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    web_dir = web_dir.resolve()

    async def handle(request: web.Request) -> web.StreamResponse:
        target = resolve_static(web_dir, request.match_info.get("path", ""))
        if target is None:
            raise web.HTTPNotFound(text="Not found\n")
        headers = {"Cache-Control": "no-cache"}
        content_type = _CONTENT_TYPES.get(target.suffix.lower())
        if content_type is not None:
            headers["Content-Type"] = content_type
        return web.FileResponse(target, headers=headers)

    return handle


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response (errors too) carries the security headers; HTML the CSP."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if response.content_type == "text/html" or response.headers.get("Content-Type", "").startswith("text/html"):
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
