"""One RTCPeerConnection per client: take a complete offer, attach a session's tracks, answer.

The offer is checked first (`signaling.offer.check_offer`: what aiortc would choke on is refused
before it sees it). Whatever aiortc still raises (ValueError, AttributeError, AssertionError,
IndexError, KeyError, ...) is caught at the boundary and answered ``ProtocolError("bad_sdp")``,
and nothing of the peer is left: the connection is closed by `_close_connection`, which never
raises even when aiortc's own ``close()`` does. Candidates are gathered completely before the
answer is returned (no trickle).

Audio jitter buffer: aiortc 1.16 builds ``JitterBuffer(capacity=16, prefetch=4)`` for every audio
receiver (``RTCRtpReceiver.__init__``), which holds 4 packets (80 ms) before the first one plays,
a delay added to every mouth movement. aiortc has no setting for it, so `set_audio_jitter_prefetch`
swaps the receiver's buffer for one with ``webrtc.audio_jitter_prefetch`` when the transceiver is
made, before the offer is applied and long before any packet can arrive. It is the one place in the
project that touches that private attribute; it checks the attribute is what it expects and fails
loudly otherwise (aiortc is pinned below 1.17).

With prefetch 0 the receiver gets a `PromptAudioJitterBuffer`: aiortc's buffer only knows a frame is
complete when the next packet arrives, so even its prefetch 0 holds one packet (20 ms); an audio RTP
packet is a whole frame, so this one releases each packet as it arrives. After a lost packet it
waits for at most `max_hole` later packets before skipping the hole, where aiortc's waits until its
16 slots overflow and then keeps the extra delay (aiortc issue 543).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiortc import (
    MediaStreamTrack,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.jitterbuffer import JitterBuffer, JitterFrame

from avatar.config import WebRtcConfig
from signaling.ice import rtc_configuration
from signaling.offer import bad_sdp, check_offer, refusal

log = logging.getLogger(__name__)

_JITTER_ATTR = "_RTCRtpReceiver__jitter_buffer"
_ENCODER_ATTR = "_RTCRtpSender__encoder"
_AUDIO_JITTER_CAPACITY = 16  # aiortc's own capacity for audio (a power of two)


class MediaSession(Protocol):
    """What a peer needs from an avatar session (avatar.session.AvatarSession)."""

    @property
    def video_track(self) -> MediaStreamTrack: ...

    @property
    def audio_track(self) -> MediaStreamTrack | None: ...

    def attach_audio(self, track: MediaStreamTrack) -> None: ...


class PromptAudioJitterBuffer(JitterBuffer):
    """An audio jitter buffer that holds nothing: each packet (a whole Opus frame) goes out on arrival.

    In order: released at once. A hole (a late or lost packet): the packets behind it wait until
    `max_hole` + 1 of them are there, then the hole is skipped (the decoder conceals it); a packet
    that arrives after its hole was skipped is dropped by aiortc's own misorder check.
    """

    def __init__(self, capacity: int = _AUDIO_JITTER_CAPACITY, max_hole: int = 2) -> None:
        super().__init__(capacity=capacity, prefetch=0, is_video=False)
        self.max_hole = max_hole
        self.skipped = 0  # packets given up as lost

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        assert self._origin is not None
        first: int | None = None
        present = 0
        for count in range(self.capacity):
            if self._packets[(self._origin + count) % self.capacity] is not None:
                first = count if first is None else first
                present += 1
        if first is None:
            return None
        if first > 0:
            if present <= self.max_hole:
                return None  # maybe only late: wait a little
            self.remove(first)
            self.skipped += first
        packet = self._packets[self._origin % self.capacity]
        assert packet is not None
        self.remove(1)
        return JitterFrame(data=packet._data, timestamp=packet.timestamp)  # type: ignore[attr-defined]


def set_audio_jitter_prefetch(receiver: RTCRtpReceiver, prefetch: int) -> None:
    """Give an audio receiver a jitter buffer that holds `prefetch` packets before playing.

    Must run before the receiver gets its first packet. 0 gives a `PromptAudioJitterBuffer`;
    1..8 give aiortc's buffer with that prefetch (it holds prefetch packets, at least one).
    """
    current = getattr(receiver, _JITTER_ATTR, None)
    if not isinstance(current, JitterBuffer):
        raise RuntimeError("aiortc's RTCRtpReceiver changed: cannot set the audio jitter buffer")
    if prefetch == 0:
        buffer: JitterBuffer = PromptAudioJitterBuffer()
    else:
        buffer = JitterBuffer(capacity=_AUDIO_JITTER_CAPACITY, prefetch=prefetch)
    setattr(receiver, _JITTER_ATTR, buffer)


async def _set_initial_bitrate(sender: RTCRtpSender, bitrate_bps: int) -> None:
    """Set the video encoder's first target bitrate once aiortc has made the encoder.

    aiortc makes the encoder on the first frame and starts it at its own default (VP8 500 kbps,
    H264 1 Mbps); the browser's REMB feedback moves it later, within the encoder's limits.
    """
    for _ in range(200):  # up to 10 s
        encoder = getattr(sender, _ENCODER_ATTR, None)
        if encoder is not None:
            if hasattr(encoder, "target_bitrate"):
                encoder.target_bitrate = bitrate_bps
                log.debug("video encoder target bitrate %d bps", encoder.target_bitrate)
            return
        await asyncio.sleep(0.05)


def _video_preferences(codec: str) -> list[Any]:
    """Video codecs, the configured one (with its RTX) first, the others after it as fallbacks."""
    capabilities = RTCRtpSender.getCapabilities("video").codecs
    wanted = "video/" + {"vp8": "VP8", "h264": "H264"}[codec]
    first = [c for c in capabilities if c.mimeType.lower() == wanted.lower()]
    rtx = [c for c in capabilities if c.mimeType.lower() == "video/rtx"]
    rest = [c for c in capabilities if c not in first and c not in rtx]
    return first + rest + rtx


async def _close_connection(pc: RTCPeerConnection) -> None:
    """Close `pc`; never raises. When aiortc's own close fails half-way, stop what it left running.

    aiortc's ``close()`` stops every transceiver and transport in turn and raises on the first
    that is not what it expects (after an offer it could not apply, a transceiver can be left
    without a transport). What it did not reach is stopped here one by one, and its "closed"
    future is resolved so that a later ``close()`` does not wait forever.
    """
    try:
        await pc.close()
        _break_reference_cycles(pc)
        return
    except Exception as exc:
        log.debug("RTCPeerConnection.close failed (%s: %s); stopping its parts one by one", type(exc).__name__, exc)
    parts: list[Any] = list(pc.getTransceivers())
    for dtls in _dtls_transports(pc):
        parts += [dtls, dtls.transport]
    parts += list(getattr(pc, "_RTCPeerConnection__iceTransports", ()))
    for part in parts:
        with contextlib.suppress(Exception):
            await part.stop()
    closed = getattr(pc, "_RTCPeerConnection__isClosed", None)
    if isinstance(closed, asyncio.Future) and not closed.done():
        closed.set_result(True)
    with contextlib.suppress(Exception):
        pc.remove_all_listeners()
    _break_reference_cycles(pc)


def _break_reference_cycles(pc: RTCPeerConnection) -> None:
    """Let a closed connection be freed by reference counting, not by a rare full collection.

    aiortc 1.16 never removes the listener it puts on each RTCDtlsTransport ("statechange" ->
    the connection's ``__updateConnectionState``; its ICE transports and the connection itself drop
    theirs on close), so connection -> transceiver -> sender -> DTLS transport -> listener ->
    connection is a cycle; and aioice 0.13's ``Connection.close()`` keeps its check list, whose
    pairs' STUN protocols point back at the connection. Until the cycle collector's next full
    collection (rare on a busy server: its threshold grows with the objects alive) each closed
    connection keeps its receivers' buffers and bitrate estimators, its SRTP and DTLS state.
    """
    for dtls in _dtls_transports(pc):
        with contextlib.suppress(Exception):
            dtls.remove_all_listeners()
        gatherer = getattr(dtls.transport, "iceGatherer", None)
        check_list = getattr(getattr(gatherer, "_connection", None), "_check_list", None)
        if isinstance(check_list, list):
            check_list.clear()


def _dtls_transports(pc: RTCPeerConnection) -> set[Any]:
    """Every DTLS transport of `pc`: its own list, its transceivers' and its SCTP transport's."""
    transports = set(getattr(pc, "_RTCPeerConnection__dtlsTransports", ()))
    for transceiver in pc.getTransceivers():
        transports.update(t for t in (transceiver.sender.transport, transceiver.receiver.transport) if t is not None)
    if pc.sctp is not None:
        transports.add(pc.sctp.transport)
    return transports


class Peer:
    """One client's RTCPeerConnection; `aclose()` is idempotent, never raises and always closes it."""

    def __init__(self, config: WebRtcConfig, session_id: str) -> None:
        self._config = config
        self._log = logging.LoggerAdapter(log, {"session": session_id})
        self._pc: RTCPeerConnection | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.failed = asyncio.Event()
        """Set when the connection fails or closes: the session should end."""
        self.return_audio = False
        self.audio_direction = "sendonly"  # the client's: sendrecv, sendonly, or recvonly (no microphone)
        self._closed = False

    @property
    def connection_state(self) -> str:
        if self._pc is None:
            return "closed" if self._closed else "new"
        return self._pc.connectionState

    async def negotiate(self, offer_sdp: str, make_session: Callable[[bool], Awaitable[MediaSession]]) -> str:
        """Take the offer, attach the session made by `make_session(return_audio)`, return the answer.

        Raises ProtocolError("bad_sdp") when the offer is unusable, whatever aiortc raised; an error
        of `make_session` is raised as it is. On any failure (cancellation too) the peer is closed
        first: no connection, socket or task of it is left.
        """
        if self._pc is not None or self._closed:
            raise RuntimeError("a peer negotiates once")
        try:
            self.audio_direction = check_offer(offer_sdp)
            self.return_audio = self.audio_direction != "sendonly"
            pc = self._pc = RTCPeerConnection(rtc_configuration(self._config))
            audio, video = await self._apply_offer(pc, offer_sdp)
            session = await make_session(self.return_audio)
            answer = await self._answer(pc, audio, video, session)
        except BaseException:
            await self.aclose()
            raise
        self._spawn(_set_initial_bitrate(video.sender, self._config.video_bitrate_bps))
        return answer

    async def _apply_offer(self, pc: RTCPeerConnection, offer_sdp: str) -> tuple[RTCRtpTransceiver, RTCRtpTransceiver]:
        @pc.on("connectionstatechange")
        def _on_state() -> None:
            state = pc.connectionState
            self._log.info("connection %s", state)
            if state in ("failed", "closed"):
                self.failed.set()

        # Our transceivers exist before the offer is applied (aiortc matches them to the offer's
        # sections by kind), so the codec preference and the jitter buffer are in place in time.
        ours = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly"}[self.audio_direction]
        audio = pc.addTransceiver("audio", direction=ours)
        video = pc.addTransceiver("video", direction="sendonly")
        video.setCodecPreferences(_video_preferences(self._config.video_codec))
        set_audio_jitter_prefetch(audio.receiver, self._config.audio_jitter_prefetch)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except Exception as exc:
            raise bad_sdp(refusal("the offer was refused", exc)) from None
        wants_track = self.audio_direction != "recvonly"  # a presenter's offer brings no microphone
        if (wants_track and audio.receiver.track is None) or len(pc.getTransceivers()) != 2:
            raise bad_sdp("the offer's media sections do not fit (one audio, one video)")
        if any(t.receiver.transport is None for t in pc.getTransceivers()):
            raise bad_sdp("the offer's BUNDLE group leaves a section without a transport")
        return audio, video

    async def _answer(
        self, pc: RTCPeerConnection, audio: RTCRtpTransceiver, video: RTCRtpTransceiver, session: MediaSession
    ) -> str:
        if self.return_audio and session.audio_track is None:
            raise RuntimeError("the session has no audio track to send back")
        try:
            video.sender.replaceTrack(session.video_track)
            if self.return_audio:
                audio.sender.replaceTrack(session.audio_track)
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)  # gathers every candidate: a complete answer
        except Exception as exc:
            raise bad_sdp(refusal("no answer fits the offer", exc)) from None
        if self.audio_direction != "recvonly":  # a presenter sends no microphone
            assert audio.receiver.track is not None  # checked in _apply_offer
            session.attach_audio(audio.receiver.track)
        return pc.localDescription.sdp

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        pc, self._pc = self._pc, None
        if pc is not None:
            await _close_connection(pc)
        self.failed.set()
