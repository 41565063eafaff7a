"""The live service: one aiohttp server for the page, /ws, /metrics and the health checks.

`run_server(config)` is what `avatar serve` calls: it loads the generator once, starts one inference
engine, listens on server.host:server.port, prints the URL it actually listens on (the one print of
the service, so `--port 0` can be used by other tools) and serves until SIGINT/SIGTERM, then gives
the open sessions up to server.drain_timeout_s to close. `SignalingServer` is the same server as an
object with `start()` / `aclose()` / `url`, for tests and embedding.

This module only composes: the page is signaling/static.py, each /ws client is a
signaling/client.py `ClientConnection`, the limits on who may connect are signaling/admission.py,
the operators' endpoints signaling/operations.py, the avatar library signaling/backend.py.
aiohttp serves HTTP and WebSocket on one port (the page and /ws share an origin), refuses methods
other than GET and HEAD (405), and bounds WebSocket frames before buffering them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

from avatar.config import AppConfig
from avatar.errors import AvatarError
from signaling import messages as m
from signaling.admission import Admission, OriginPolicy, client_address
from signaling.backend import AvatarBackend, Backend
from signaling.client import CLOSE_TIMEOUT_S, ClientConnection
from signaling.ice import host_addresses
from signaling.metrics import ServerMetrics
from signaling.operations import add_routes
from signaling.speech_routes import add_speech_routes
from signaling.static import add_security_headers, static_handler

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


class SignalingServer:
    """The web page and /ws on one host and port. `await start()`, then `url`; `await aclose()`."""

    def __init__(
        self,
        config: AppConfig,
        *,
        backend: Backend | None = None,
        web_dir: Path = WEB_DIR,
    ) -> None:
        self.config = config
        self.metrics = ServerMetrics(self._stage_counts, self._live_session_stats)
        self.admission = Admission(config.server, on_evict=lambda reason: self.metrics.refused.labels(reason).inc())
        self.backend: Backend = backend if backend is not None else AvatarBackend(config, self.metrics)
        self.web_dir = web_dir.resolve()
        self.origins = OriginPolicy(config.server.allowed_origins)
        self._trusted_proxies = frozenset(config.server.trusted_proxies)
        self._clients: set[ClientConnection] = set()
        self._runner: web.AppRunner | None = None
        self._ice: contextlib.ExitStack | None = None
        self._closed = False

    # -- what tests and operators read ------------------------------------------------------------

    @property
    def active_sessions(self) -> int:
        return self.admission.active

    @property
    def clients(self) -> int:
        return len(self._clients)

    @property
    def url(self) -> str:
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("the server is not started")
        host, port = self._runner.addresses[0][:2]
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}/"

    def _stage_counts(self) -> dict[str, int]:
        a = self.admission
        return {"pending": a.pending, "waiting": a.waiting, "active": a.active}

    def _live_session_stats(self) -> Iterator[dict[str, Any]]:
        for client in list(self._clients):
            if client.session is not None:
                yield client.session.stats()

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        self._ice = contextlib.ExitStack()
        self._ice.enter_context(host_addresses(self.config.webrtc.host_addresses))
        host, port = self.config.server.host, self.config.server.port
        try:
            await self.backend.start()
            app = self._application()
            self._runner = web.AppRunner(
                app,
                handle_signals=False,
                access_log=None,
                shutdown_timeout=1.0,
                # A TCP connection that sends no request (or sits idle between requests) is closed
                # as soon as a WebSocket that says no hello would be.
                keepalive_timeout=self.config.server.hello_timeout_s,
            )
            await self._runner.setup()
            try:
                await web.TCPSite(self._runner, host, port).start()
            except OSError as exc:
                raise AvatarError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        except BaseException:
            if self._runner is not None:
                await self._runner.cleanup()
                self._runner = None
            await self.backend.aclose()
            self._ice.close()
            raise
        log.info("listening on %s", self.url)

    def _application(self) -> web.Application:
        clip_bytes = self.config.portrait.max_bytes
        # Bodies are read only by the speech endpoints (a clip, or its base64 in JSON).
        app = web.Application(client_max_size=m.base64_chars(clip_bytes) + 4096)
        app.on_response_prepare.append(add_security_headers)
        app.router.add_get("/ws", self._websocket)
        add_routes(app, self.admission, self.metrics, self.config.server.token)
        add_speech_routes(app, self._client_by_session, self.config.server.token, clip_bytes)
        app.router.add_get("/{path:.*}", static_handler(self.web_dir))
        return app

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        """One /ws connection: origin check, then the client protocol until the socket closes."""
        if not self.origins.allows(request.headers.get("Origin"), request.host):
            self.metrics.refused.labels("origin").inc()
            log.info("refused origin %r from %s", request.headers.get("Origin"), request.remote)
            raise web.HTTPForbidden(text="This origin may not open sessions on this server.\n")
        if self._closed:
            raise web.HTTPServiceUnavailable(text="The server is shutting down.\n")
        server = self.config.server
        ws = web.WebSocketResponse(
            heartbeat=server.peer_timeout_s / 2,  # a ping every half; no pong within a quarter: closed
            compress=server.websocket_compression,
            # aiohttp refuses larger frames before buffering them (and bounds inflated ones); the
            # protocol's own limits (small text, a base64 clip in `play`, portrait-sized binary) are per message.
            max_msg_size=max(server.max_text_message_bytes, m.base64_chars(self.config.portrait.max_bytes)) + 2048,
            timeout=CLOSE_TIMEOUT_S,
        )
        if not ws.can_prepare(request).ok:
            raise web.HTTPBadRequest(text="This is the WebSocket endpoint of the talking-portrait server.\n")
        await ws.prepare(request)
        address = client_address(request.remote, request.headers.get("X-Forwarded-For"), self._trusted_proxies)
        client = ClientConnection(ws, address, self.config, self.backend, self.admission, self.metrics)
        self._clients.add(client)
        try:
            await client.run()
        finally:
            self._clients.discard(client)
        return ws

    def _client_by_session(self, session_id: str) -> ClientConnection | None:
        return next((c for c in self._clients if c.id == session_id and c.session is not None), None)

    async def aclose(self, drain_timeout_s: float | None = None) -> None:
        """Stop taking clients, close every one (1001) and wait up to drain_timeout_s; idempotent."""
        if self._closed:
            return
        self._closed = True
        self.admission.draining = True
        timeout = self.config.server.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
        clients = list(self._clients)
        await asyncio.gather(*(c.shutdown() for c in clients), return_exceptions=True)
        deadline = asyncio.get_running_loop().time() + timeout
        while self._clients and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        if self._clients:
            log.warning("%d session(s) did not close within %.1f s", len(self._clients), timeout)
            for client in list(self._clients):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.aclose(), 2.0)
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        await self.backend.aclose()
        if self._ice is not None:
            self._ice.close()
            self._ice = None


def run_server(config: AppConfig, *, ready: Callable[[str], None] | None = None) -> int:
    """Serve until SIGINT or SIGTERM (blocking); print the URL listened on; return the exit status."""

    async def main() -> int:
        server = SignalingServer(config)
        await server.start()
        print(f"Talking portrait: open {server.url} (Ctrl+C to stop)", flush=True)
        if ready is not None:
            ready(server.url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            log.info("shutting down: draining sessions for up to %.1f s", config.server.drain_timeout_s)
            await server.aclose()
        return 0

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        return 130
    finally:
        sys.stdout.flush()


__all__ = ["AvatarBackend", "Backend", "SignalingServer", "run_server"]
