"""One WebSocket client of /ws: the protocol of DESIGN.md section 3, its timeouts, its session.

hello (within `hello_timeout_s`; throttled address -> rate_limited; wrong token -> unauthorized;
every media slot taken -> busy) -> welcome; any number of portrait choices (by name or one binary
frame; a bad one -> bad_portrait and the previous portrait stays); one offer (within
`offer_timeout_s` of welcome, else timeout) -> answer; stats about every `stats_interval_s`; bye.
Every other protocol error answers its code and ends this client only; an unexpected exception
answers `internal` and ends this client only. Closing the socket ends the session; the session
ending (the peer failed or closed, the input ended, `max_session_s` reached) closes the socket.

The client owns its connection; the `Admission` decides its stage and may ask it to give way
(`evict`), which it does by sending the error and closing. Heavy work runs off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import WSMsgType, web

from avatar.config import AppConfig
from avatar.errors import PortraitError, SpeechError
from avatar.portrait import Portrait
from avatar.speech_queue import SpeechMark
from signaling import messages as m
from signaling.admission import BUSY_TEXT, Admission, Refusal
from signaling.backend import Backend, LiveSession
from signaling.metrics import ServerMetrics
from signaling.peer import MediaSession, Peer

log = logging.getLogger(__name__)

INTERNAL_TEXT = "The server hit an internal error; this session has ended."
CLOSE_TIMEOUT_S = 2.0  # how long a closing handshake may wait for the client's reply


def _ignore(code: str, message: str) -> None:
    """What a released ticket's evict does: nothing."""


class _Closed(Exception):
    """The socket closed (by the client, the network, or us)."""


def tokens_match(given: str | None, expected: str) -> bool:
    """Constant-time comparison that takes any string (lone surrogates too) without raising."""
    return hmac.compare_digest(
        (given or "").encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


class ClientConnection:
    """One /ws connection: its protocol state, its peer and its avatar session; `run()` once."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        address: str,
        config: AppConfig,
        backend: Backend,
        admission: Admission,
        metrics: ServerMetrics,
    ) -> None:
        self.ws = ws
        self.address = address
        self.config = config
        self.backend = backend
        self.admission = admission
        self.metrics = metrics
        self.id = uuid.uuid4().hex[:12]
        self.log = logging.LoggerAdapter(log, {"session": self.id, "client": address})
        self.portrait: Portrait | None = None
        self.peer: Peer | None = None
        self.session: LiveSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closers: set[asyncio.Task[None]] = set()  # evictions: awaited, never cancelled
        self._closing = False
        self._speech_count = 0
        self._events = asyncio.Queue[m.ServerMessage]()  # speaking / spoken, sent in order
        self.ticket = admission.connect(address, self.evict)

    # -- sending ---------------------------------------------------------------------------------

    async def send(self, message: m.ServerMessage) -> None:
        if isinstance(message, m.Error):
            self.metrics.errors.labels(message.code).inc()
        await self.ws.send_str(m.dump(message))

    async def _try_send(self, message: m.ServerMessage) -> None:
        with contextlib.suppress(Exception):
            await self.send(message)

    async def _end_with(self, error: m.Error, close_code: int = 1000) -> None:
        await self._try_send(error)
        with contextlib.suppress(Exception):
            await self.ws.close(code=close_code, message=error.code.encode())

    def evict(self, code: str, message: str) -> None:
        """Asked by the admission to give way: send the error, close (from a task of our own)."""
        self.log.info("evicted: %s: %s", code, message)
        task = asyncio.get_running_loop().create_task(self._end_with(m.Error(code, message)))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    # -- receiving -------------------------------------------------------------------------------

    async def _recv(self, deadline: float | None = None) -> m.ClientMessage:
        """The next message; TimeoutError after `deadline` (the loop's clock); _Closed when the socket goes."""
        # One deadline for the whole wait: aiohttp's own receive timeout restarts on every pong.
        async with asyncio.timeout_at(deadline):
            message = await self.ws.receive()
        if message.type is WSMsgType.TEXT or message.type is WSMsgType.BINARY:
            return m.parse_client_message(
                message.data,
                max_text_bytes=self.config.server.max_text_message_bytes,
                max_binary_bytes=self.config.portrait.max_bytes,
                max_clip_bytes=self.config.portrait.max_bytes,
            )
        if message.type is WSMsgType.ERROR:
            self.log.info("socket error: %s", message.data)
        raise _Closed

    # -- protocol --------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._greet()
            await self._serve()
        except m.ProtocolError as exc:
            self.log.info("%s: %s", exc.code, exc.message)
            await self._end_with(m.Error(exc.code, exc.message))
        except _Closed:
            pass
        except Exception:
            self.log.exception("internal error")
            await self._end_with(m.Error(m.INTERNAL, INTERNAL_TEXT), 1011)
        finally:
            await self.aclose()

    def _refuse(self, refusal: Refusal) -> m.ProtocolError:
        self.metrics.refused.labels(refusal.reason).inc()
        return m.ProtocolError(refusal.code, refusal.message)

    async def _greet(self) -> None:
        server = self.config.server
        try:
            first = await self._recv(asyncio.get_running_loop().time() + server.hello_timeout_s)
        except TimeoutError:
            raise self._refuse(
                Refusal(m.TIMEOUT, f"No hello arrived within {server.hello_timeout_s:g} s.", "hello_timeout")
            ) from None
        if not isinstance(first, m.Hello):
            raise m.ProtocolError(m.BAD_MESSAGE, "the first message must be a hello")
        refusal = self.admission.check_hello(self.ticket)
        if refusal is not None:
            raise self._refuse(refusal)
        if server.token:
            if not tokens_match(first.token, server.token):
                self.admission.throttle.failed(self.address)
                raise self._refuse(Refusal(m.UNAUTHORIZED, "The access token is missing or wrong.", "unauthorized"))
            self.admission.throttle.succeeded(self.address)
        refusal = self.admission.welcome(self.ticket)
        if refusal is not None:
            raise self._refuse(refusal)
        self.portrait = self.backend.default_portrait()
        video = self.config.video
        await self.send(
            m.Welcome(
                session=self.id,
                fps=video.fps,
                width=video.width_px,
                height=video.height_px,
                portraits=tuple(self.backend.portrait_names),
                disclosure=self.backend.disclosure(),
            )
        )
        self.log.info("welcome")

    async def _serve(self) -> None:
        offer_deadline: float | None = asyncio.get_running_loop().time() + self.config.server.offer_timeout_s
        while True:
            try:
                message = await self._recv(offer_deadline)
            except m.ProtocolError as exc:
                # An empty upload or name: the previous portrait stays; a clip that is not base64:
                # that item is refused; the session goes on.
                if exc.code not in (m.BAD_PORTRAIT, m.BAD_SPEECH):
                    raise
                self.log.info("%s: %s", exc.code, exc.message)
                await self.send(m.Error(exc.code, exc.message))
                continue
            except TimeoutError:
                timeout_s = self.config.server.offer_timeout_s
                raise self._refuse(
                    Refusal(m.TIMEOUT, f"No offer arrived within {timeout_s:g} s of the welcome.", "offer_timeout")
                ) from None
            if isinstance(message, m.PortraitRequest | m.PortraitUpload):
                await self._choose_portrait(message)
            elif isinstance(message, m.Offer):
                if self.peer is not None:
                    raise m.ProtocolError(m.BAD_MESSAGE, "only one offer per session")
                await self._answer(message)
                offer_deadline = None
            elif isinstance(message, m.Say | m.Play):
                self._spawn(functools.partial(self._speak_message, message))
            elif isinstance(message, m.Clear):
                self.clear_speech()
            elif isinstance(message, m.Bye):
                self.log.info("bye")
                return
            else:
                raise m.ProtocolError(m.BAD_MESSAGE, "hello was already received")

    async def _choose_portrait(self, message: m.PortraitRequest | m.PortraitUpload) -> None:
        if self.session is not None:
            await self.send(m.Error(m.BAD_PORTRAIT, "The portrait can only be changed before Start."))
            return
        try:
            if isinstance(message, m.PortraitRequest):
                portrait = await asyncio.to_thread(self.backend.builtin_portrait, message.name)
            else:
                portrait = await asyncio.to_thread(self.backend.uploaded_portrait, message.data)
        except PortraitError as exc:
            self.log.info("bad portrait: %s", exc)
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
        if not self.admission.take_slot(self.ticket):
            raise self._refuse(Refusal(m.BUSY, BUSY_TEXT, "busy"))
        self.peer = Peer(self.config.webrtc, self.id)

        async def make_session(return_audio: bool) -> MediaSession:
            assert self.portrait is not None
            session = self.backend.new_session(self.portrait, self.id, return_audio)
            self.session = session
            return session

        sdp = await self.peer.negotiate(offer.sdp, make_session)
        assert self.session is not None
        self.session.on_speech = self._on_speech
        self._spawn(self._send_events)
        await self.session.start()  # after the peer attached the received audio to it
        await self.send(m.Answer(sdp=sdp))
        self.metrics.sessions_started.inc()
        self.log.info("answered (voice back: %s)", self.peer.return_audio)
        self._spawn(self._send_stats)
        self._spawn(self._watch_end)
        if self.config.server.max_session_s > 0:
            self._spawn(functools.partial(self._end_after, self.config.server.max_session_s))

    # -- speech items (from this socket, or from POST /sessions/{id}/...) -------------------------

    def _item_id(self, given: str | None) -> str:
        self._speech_count += 1
        return given or f"speech-{self._speech_count}"

    async def speak(self, *, text: str | None = None, voice: str | None = None, audio: bytes | None = None,
                    item_id: str | None = None) -> str:  # fmt: skip
        """Queue a `say` (text) or a `play` (audio); the item's id once it is queued. SpeechError
        (with a message for a person) when it cannot be spoken; the session goes on."""
        session = self.session
        if session is None:
            raise SpeechError("the session has not started yet: send the offer first")
        item = item_id or self._item_id(None)
        if text is not None:
            await session.say(text, voice, item)
        else:
            assert audio is not None
            await session.play(audio, item)
        return item

    def clear_speech(self) -> int:
        """Stop the speech that plays and drop the queued items; how many were cut."""
        return self.session.clear_speech() if self.session is not None else 0

    async def _speak_message(self, message: m.Say | m.Play) -> None:
        item = self._item_id(message.id)
        try:
            if isinstance(message, m.Say):
                await self.speak(text=message.text, voice=message.voice, item_id=item)
            else:
                await self.speak(audio=message.audio, item_id=item)
        except SpeechError as exc:
            self.log.info("bad speech %s: %s", item, exc)
            await self.send(m.Error(m.BAD_SPEECH, str(exc), id=item))

    def _on_speech(self, mark: SpeechMark) -> None:
        """From the session (on the event loop): queue the event for `_send_events`."""
        if mark.kind == "speaking":
            self._events.put_nowait(m.Speaking(mark.item.id, mark.item.text))
        else:
            self._events.put_nowait(m.Spoken(mark.item.id, mark.interrupted))

    async def _send_events(self) -> None:
        while True:
            await self.send(await self._events.get())

    # -- helper tasks ----------------------------------------------------------------------------

    def _spawn(self, job: Callable[[], Coroutine[Any, Any, None]]) -> None:
        # The coroutine is made inside the task, so a task cancelled before it ran leaves none unawaited.
        task = asyncio.get_running_loop().create_task(self._guarded(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, job: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run a helper task; a failure in it ends this session (internal), never the server."""
        try:
            await job()
        except (ConnectionError, _Closed):
            pass
        except Exception:
            self.log.exception("internal error in a helper task")
            await self._end_with(m.Error(m.INTERNAL, INTERNAL_TEXT), 1011)

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
        self.log.info("ended (%s)", reason)
        await self.ws.close(code=1000, message=reason.encode())

    async def _end_after(self, max_session_s: float) -> None:
        await asyncio.sleep(max_session_s)
        self.log.info("reached max_session_s (%g s)", max_session_s)
        self.metrics.refused.labels("max_session").inc()
        await self._end_with(m.Error(m.TIMEOUT, f"The session reached its maximum length of {max_session_s:g} s."))

    # -- ending ----------------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """The server is going away: close the socket with 1001; `run()` then cleans up."""
        with contextlib.suppress(Exception):
            await self.ws.close(code=1001, message=b"server shutting down")

    async def aclose(self) -> None:
        """End the session: stop its tasks, session and peer, leave the admission, close the socket."""
        if self._closing:
            return
        self._closing = True
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
                self.metrics.session_closed(session.stats())
            except Exception:
                self.log.exception("error while closing the avatar session")
        peer, self.peer = self.peer, None
        if peer is not None:
            try:
                await peer.aclose()
            except Exception:
                self.log.exception("error while closing the peer")
        self.admission.release(self.ticket)
        self.ticket.evict = _ignore  # the ticket no longer points back at this client (no cycle)
        if self._closers:
            await asyncio.wait(list(self._closers), timeout=CLOSE_TIMEOUT_S)
        exception = self.ws.exception()
        if isinstance(exception, TimeoutError):
            self.metrics.refused.labels("peer_timeout").inc()
            self.log.info("ended: the client answered no ping for %g s", self.config.server.peer_timeout_s)
        with contextlib.suppress(Exception):
            await self.ws.close()
