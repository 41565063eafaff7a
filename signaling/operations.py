"""What operators and load balancers read: /metrics (Prometheus), /healthz (alive), /readyz (load).

/metrics is served to loopback clients (not to requests a proxy forwarded), or to anyone who
shows the server's token (an `Authorization: Bearer TOKEN` header, or `?token=TOKEN`); else 403.
/healthz answers 200 while the process serves. /readyz answers 200 with `{"ready": true, "load": L}`
while a new session would be admitted and 503 with `"ready": false` when every media slot is taken
or the server is draining; `load` is the share of media slots in use, 0..1.
"""

from __future__ import annotations

from aiohttp import web

from signaling.admission import Admission, is_loopback_host
from signaling.client import tokens_match
from signaling.metrics import CONTENT_TYPE, ServerMetrics


def bearer_token(request: web.Request) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, if the request has one."""
    authorization = request.headers.get("Authorization", "")
    return authorization[len("Bearer ") :] if authorization.startswith("Bearer ") else None


def is_operator(request: web.Request, token: str) -> bool:
    """A loopback client (not forwarded by a proxy), or one that shows the server's token."""
    # A request a reverse proxy forwarded comes from loopback too: it is not a local operator.
    forwarded = "X-Forwarded-For" in request.headers or "Forwarded" in request.headers
    if is_loopback_host(request.remote or "") and not forwarded:
        return True
    if not token:
        return False
    bearer = bearer_token(request)
    given = bearer if bearer is not None else request.query.get("token")
    return given is not None and tokens_match(given, token)


def add_routes(app: web.Application, admission: Admission, metrics: ServerMetrics, token: str) -> None:
    async def metrics_handler(request: web.Request) -> web.Response:
        if not is_operator(request, token):
            raise web.HTTPForbidden(text="Metrics are served to loopback, or with the server's token.\n")
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(request: web.Request) -> web.Response:
        ready = admission.slot_free()
        body = {
            "ready": ready,
            "load": round(admission.load, 3),
            "sessions": admission.active,
            "max_sessions": admission.config.max_sessions,
            "draining": admission.draining,
        }
        return web.json_response(body, status=200 if ready else 503)

    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
