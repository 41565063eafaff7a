"""The live service: one websockets server serving the page (web/) and the /ws signaling protocol.

`run_server(config)` is what `avatar serve` calls: it loads the generator once, starts one inference
engine, listens on server.host:server.port, prints the URL it actually listens on (the one print of
the service, so `--port 0` can be used by other tools) and serves until SIGINT/SIGTERM, then gives
the open sessions up to server.drain_timeout_s to close. `SignalingServer` is the same server as an
object with `start()` / `aclose()` / `url`, for tests and embedding.

Per client (DESIGN.md section 3): hello (token check -> unauthorized; session cap -> busy) ->
welcome; any number of portrait choices (by name or one binary frame; a bad one -> bad_portrait and
the previous portrait stays); one offer -> answer; stats about every server.stats_interval_s; bye.
A session holds one of the server.max_sessions slots from its offer on: a page that is open but not
started holds none, and its offer gets busy if the slots filled up meanwhile.
Every other protocol error (bad JSON, unknown type, oversized message, a second hello or offer, bad
SDP) answers its error code and ends that session only; an unexpected exception answers `internal`
and ends that session only. Closing the socket ends the session; the session ending (the peer
connection failed or closed, the input audio ended) closes the socket.

Heavy work runs off the event loop: loading the generator and detecting faces in uploads run in
threads (asyncio.to_thread), generation runs on the engine's worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import mimetypes
import signal
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from avatar.config import AppConfig
from avatar.errors import AvatarError, PortraitError
from avatar.portrait import Portrait
from signaling import messages as m
from signaling.ice import host_addresses
from signaling.peer import MediaSession, Peer

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
HELLO_TIMEOUT_S = 15.0
BUSY_TEXT = "The server is busy (all sessions are in use); please try again later."
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


# --------------------------------------------------------------------------------------------------
# What the server needs from the avatar library


class LiveSession(MediaSession, Protocol):
    """avatar.session.AvatarSession as the server uses it."""

    ended: asyncio.Event

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...


class Backend(Protocol):
    """The avatar library behind the server: loaded once, shared by every session."""

    portrait_names: list[str]

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def default_portrait(self) -> Portrait: ...

    def builtin_portrait(self, name: str) -> Portrait: ...  # may block: call in a thread

    def uploaded_portrait(self, data: bytes) -> Portrait: ...  # may block: call in a thread

    def new_session(self, portrait: Portrait, session_id: str, return_audio: bool) -> LiveSession: ...


class AvatarBackend:
    """The real library: one generator and one InferenceEngine per process."""

    def __init__(self, config: AppConfig) -> None:
        self._config = config
        self._generator: Any = None
        self._engine: Any = None
        self._default: Portrait | None = None
        self.portrait_names: list[str] = []
        self._detect_lock = threading.Lock()

    async def start(self) -> None:
        from avatar.engine import InferenceEngine
        from avatar.generators import load_generator
        from avatar.portrait import builtin_portrait_names, default_portrait

        self.portrait_names = list(builtin_portrait_names())
        self._generator = await asyncio.to_thread(load_generator, self._config)
        self._default = await asyncio.to_thread(default_portrait, self._config)
        self._engine = InferenceEngine(self._generator, self._config.video)
        await self._engine.start()

    async def aclose(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.aclose()

    def default_portrait(self) -> Portrait:
        assert self._default is not None, "start() first"
        return self._default

    def builtin_portrait(self, name: str) -> Portrait:
        from avatar.portrait import load_builtin_portrait

        with self._detect_lock:
            return load_builtin_portrait(name, self._config.portrait, self._config.video)

    def uploaded_portrait(self, data: bytes) -> Portrait:
        from avatar.portrait import load_portrait

        # One face detection at a time: dlib's shared detector is not documented thread-safe, and
        # a burst of uploads must not starve the inference worker of CPU.
        with self._detect_lock:
            return load_portrait(data, self._config.portrait, self._config.video, name="upload")

    def new_session(self, portrait: Portrait, session_id: str, return_audio: bool) -> LiveSession:
        from avatar.session import AvatarSession

        session: LiveSession = AvatarSession(
            self._config,
            self._engine,
            self._generator,
            portrait,
            session_id=session_id,
            return_audio=return_audio,
        )
        return session


# --------------------------------------------------------------------------------------------------
# Static files


def _static_response(connection: ServerConnection, web_dir: Path, request: Request) -> Response:
    path = unquote(urlsplit(request.path).path)
    if path in ("", "/"):
        path = "/index.html"
    relative = Path(path.lstrip("/"))
    if any(part in ("..", "") or part.startswith(".") for part in relative.parts) or "\\" in path or "\x00" in path:
        return connection.respond(404, "Not found\n")
    target = (web_dir / relative).resolve()
    if not target.is_relative_to(web_dir) or not target.is_file():
        return connection.respond(404, "Not found\n")
    body = target.read_bytes()
    content_type = _CONTENT_TYPES.get(target.suffix.lower()) or (
        mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    )
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
            ("Connection", "close"),
        ]
    )
    return Response(200, "OK", headers, body)


# --------------------------------------------------------------------------------------------------
# One client


class _Client:
    """One WebSocket client: its protocol state, its peer and its avatar session."""

    def __init__(self, server: SignalingServer, ws: ServerConnection) -> None:
        self.server = server
        self.ws = ws
        self.id = uuid.uuid4().hex[:12]
        self.portrait: Portrait | None = None
        self.peer: Peer | None = None
        self.session: LiveSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def config(self) -> AppConfig:
        return self.server.config

    async def send(self, message: m.ServerMessage) -> None:
        await self.ws.send(m.dump(message))

    async def run(self) -> None:
        try:
            await self._greet()
            await self._serve()
        except m.ProtocolError as exc:
            log.info("session %s: %s: %s", self.id, exc.code, exc.message)
            await self._try_send(m.Error(exc.code, exc.message))
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("session %s: internal error", self.id)
            await self._try_send(m.Error(m.INTERNAL, "The server hit an internal error; this session has ended."))
        finally:
            await self.aclose()

    async def _try_send(self, message: m.ServerMessage) -> None:
        with contextlib.suppress(ConnectionClosed, RuntimeError):
            await self.send(message)

    async def _recv(self) -> m.ClientMessage:
        frame = await self.ws.recv()
        return m.parse_client_message(frame, max_bytes=self.config.server.max_message_bytes)

    async def _greet(self) -> None:
        try:
            first = await asyncio.wait_for(self._recv(), HELLO_TIMEOUT_S)
        except TimeoutError:
            raise m.ProtocolError(m.BAD_MESSAGE, "no hello received in time") from None
        if not isinstance(first, m.Hello):
            raise m.ProtocolError(m.BAD_MESSAGE, "the first message must be a hello")
        token = self.config.server.token
        if token and not hmac.compare_digest((first.token or "").encode(), token.encode()):
            raise m.ProtocolError(m.UNAUTHORIZED, "The access token is missing or wrong.")
        if not self.server._has_room(self):
            raise m.ProtocolError(m.BUSY, BUSY_TEXT)
        self.portrait = self.server.backend.default_portrait()
        video = self.config.video
        await self.send(
            m.Welcome(
                session=self.id,
                fps=video.fps,
                width=video.width_px,
                height=video.height_px,
                portraits=tuple(self.server.backend.portrait_names),
            )
        )
        log.info("session %s: welcome", self.id)

    async def _serve(self) -> None:
        while True:
            message = await self._recv()
            if isinstance(message, m.PortraitRequest | m.PortraitUpload):
                await self._choose_portrait(message)
            elif isinstance(message, m.Offer):
                if self.peer is not None:
                    raise m.ProtocolError(m.BAD_MESSAGE, "only one offer per session")
                await self._answer(message)
            elif isinstance(message, m.Bye):
                log.info("session %s: bye", self.id)
                return
            else:
                raise m.ProtocolError(m.BAD_MESSAGE, "hello was already received")

    async def _choose_portrait(self, message: m.PortraitRequest | m.PortraitUpload) -> None:
        if self.session is not None:
            await self.send(m.Error(m.BAD_PORTRAIT, "The portrait can only be changed before Start."))
            return
        backend = self.server.backend
        try:
            if isinstance(message, m.PortraitRequest):
                portrait = await asyncio.to_thread(backend.builtin_portrait, message.name)
            else:
                portrait = await asyncio.to_thread(backend.uploaded_portrait, message.data)
        except PortraitError as exc:
            log.info("session %s: bad portrait: %s", self.id, exc)
            await self.send(m.Error(m.BAD_PORTRAIT, str(exc)))
            return
        self.portrait = portrait
        await self.send(
            m.PortraitReply(
                width=int(portrait.rgb.shape[1]),
                height=int(portrait.rgb.shape[0]),
                face=tuple(int(v) for v in portrait.face_box),  # type: ignore[arg-type]
                name=portrait.name,
            )
        )

    async def _answer(self, offer: m.Offer) -> None:
        if not self.server._take_slot(self):
            raise m.ProtocolError(m.BUSY, BUSY_TEXT)
        self.peer = Peer(self.config.webrtc, self.id)

        async def make_session(return_audio: bool) -> MediaSession:
            assert self.portrait is not None
            session = self.server.backend.new_session(self.portrait, self.id, return_audio)
            self.session = session
            return session

        sdp = await self.peer.negotiate(offer.sdp, make_session)
        assert self.session is not None
        await self.session.start()  # after the peer attached the received audio to it
        await self.send(m.Answer(sdp=sdp))
        log.info("session %s: answered (voice back: %s)", self.id, self.peer.return_audio)
        self._spawn(self._send_stats())
        self._spawn(self._watch_end())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(self._guarded(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, coro: Any) -> None:
        """Run a helper task; a failure in it ends this session (internal), never the server."""
        try:
            await coro
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("session %s: internal error in a helper task", self.id)
            await self._try_send(m.Error(m.INTERNAL, "The server hit an internal error; this session has ended."))
            with contextlib.suppress(Exception):
                await self.ws.close(1011, "internal error")

    async def _send_stats(self) -> None:
        interval = self.config.server.stats_interval_s
        while True:
            await asyncio.sleep(interval)
            if self.session is None:
                continue
            s = self.session.stats()
            await self.send(
                m.Stats(
                    fps=float(s.get("fps", 0.0)),
                    frames=int(s.get("frames", 0)),
                    speaking=bool(s.get("speaking", False)),
                    latency_ms=s.get("latency_ms"),
                    extra={k: v for k, v in s.items() if isinstance(v, int | float | bool)},
                )
            )

    async def _watch_end(self) -> None:
        """The session ended (peer failed or closed, input ended): close the socket."""
        assert self.peer is not None and self.session is not None
        waits = [
            asyncio.ensure_future(self.peer.failed.wait()),
            asyncio.ensure_future(self.session.ended.wait()),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        reason = "connection closed" if self.peer.failed.is_set() else "input ended"
        log.info("session %s: ended (%s)", self.id, reason)
        await self.ws.close(1000, reason)

    async def aclose(self) -> None:
        """End the session: stop its tasks, session and peer, free its slot, close the socket."""
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        for task in list(self._tasks):
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        session, self.session = self.session, None
        if session is not None:
            try:
                await session.aclose()
            except Exception:
                log.exception("session %s: error while closing the avatar session", self.id)
        peer, self.peer = self.peer, None
        if peer is not None:
            try:
                await peer.aclose()
            except Exception:
                log.exception("session %s: error while closing the peer", self.id)
        self.server._release_slot(self)
        with contextlib.suppress(Exception):
            await self.ws.close()


# --------------------------------------------------------------------------------------------------
# The server


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
        self.backend: Backend = backend if backend is not None else AvatarBackend(config)
        self.web_dir = web_dir.resolve()
        self._server: Server | None = None
        self._clients: set[_Client] = set()
        self._slots: set[str] = set()
        self._ice: contextlib.ExitStack | None = None
        self._closed = False

    # Slots: one per client with a live session (from its offer on), at most server.max_sessions.
    # A hello is refused when every slot is taken (early "busy"), or when too many clients are
    # connected at all; a client that waits without starting holds no slot.
    def _slot_free(self) -> bool:
        return not self._closed and len(self._slots) < self.config.server.max_sessions

    def _has_room(self, client: _Client) -> bool:
        return self._slot_free() and len(self._clients) <= 4 * self.config.server.max_sessions + 16

    def _take_slot(self, client: _Client) -> bool:
        if not self._slot_free():
            return False
        self._slots.add(client.id)
        return True

    def _release_slot(self, client: _Client) -> None:
        self._slots.discard(client.id)

    @property
    def active_sessions(self) -> int:
        return len(self._slots)

    @property
    def clients(self) -> int:
        return len(self._clients)

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the server is not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}/"

    async def start(self) -> None:
        self._ice = contextlib.ExitStack()
        self._ice.enter_context(host_addresses(self.config.webrtc.host_addresses))
        host, port = self.config.server.host, self.config.server.port
        try:
            await self.backend.start()
            limit = self.config.server.max_message_bytes
            try:
                self._server = await self._listen(host, port, limit)
            except OSError as exc:
                raise AvatarError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        except BaseException:
            await self.backend.aclose()
            self._ice.close()
            raise
        log.info("listening on %s", self.url)

    async def _listen(self, host: str, port: int, limit: int) -> Server:
        return await serve(
            self._handle,
            host,
            port,
            process_request=self._process_request,
            # Frames up to twice the limit are read so the client gets a readable error;
            # larger ones make websockets close the connection (code 1009) by itself.
            max_size=2 * limit,
            max_queue=4,
            ping_interval=20,
            ping_timeout=20,
        )

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path == "/ws":
            return None  # the WebSocket handshake goes on
        return _static_response(connection, self.web_dir, request)

    async def _handle(self, ws: ServerConnection) -> None:
        client = _Client(self, ws)
        self._clients.add(client)
        try:
            await client.run()
        finally:
            self._clients.discard(client)

    async def aclose(self, drain_timeout_s: float | None = None) -> None:
        """Stop listening, close every client (1001) and wait up to drain_timeout_s; idempotent."""
        if self._closed:
            return
        self._closed = True
        timeout = self.config.server.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
        server, self._server = self._server, None
        if server is not None:
            server.close(close_connections=True)
            try:
                await asyncio.wait_for(server.wait_closed(), timeout)
            except TimeoutError:
                log.warning("%d session(s) did not close within %.1f s", len(self._clients), timeout)
                for client in list(self._clients):
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(client.aclose(), 2.0)
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
