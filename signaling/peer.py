"""One RTCPeerConnection per client: take a complete offer, attach a session's tracks, answer.

The offer must hold exactly one audio section (``sendrecv``: the voice comes back in sync;
``sendonly``: video only) and one video section the client only receives (``recvonly``). Every
unusable or hostile offer gets ``ProtocolError("bad_sdp")`` with a message a person can read, and
nothing of the peer is left: `_check_offer` refuses, before aiortc sees it, what aiortc would
choke on later in a background task or handle badly (impossible candidate ports and addresses,
ICE credentials STUN cannot carry, mids and BUNDLE groups that break its transceiver matching,
sizes that make its parser slow); whatever aiortc still raises (ValueError, AttributeError,
AssertionError, IndexError, KeyError, ...) is caught at the boundary, and the connection is closed
by `_close_connection`, which never raises even when aiortc's own ``close()`` does. Candidates are
gathered completely before the answer is returned (no trickle).

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
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiortc import (
    MediaStreamTrack,
    RTCIceCandidate,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.sdp import MediaDescription, SessionDescription

from avatar.config import WebRtcConfig
from signaling.ice import rtc_configuration
from signaling.messages import BAD_SDP, MAX_SDP_CHARS, ProtocolError

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


# --- the offer: what aiortc can handle safely ---------------------------------------------------
#
# aiortc parses an offer loosely and trusts what it parsed: a candidate port above 65535 reaches
# `sendto` (asyncio then logs a fatal write error and closes the ICE socket), an ICE ufrag of
# 100 kB cannot be packed into a STUN message (the check task dies), a BUNDLE group naming an
# unknown mid leaves a transceiver without a transport (createAnswer and close both raise), and
# some parsing is quadratic (10 000 a=ssrc lines block the event loop for seconds). So the offer is
# checked first, line by line before aiortc's parser sees it, then field by field; everything a
# browser sends passes (a browser's offer has a few candidates, a few dozen codecs, 1-4 ssrcs).

_MAX_LINES = 2000
_MAX_LINE_CHARS = 2048
_MAX_PER_SECTION = {  # attribute lines per media section
    "a=candidate:": 64,
    "a=rtpmap:": 128,
    "a=fmtp:": 128,
    "a=rtcp-fb:": 512,
    "a=ssrc": 64,  # a=ssrc: and a=ssrc-group:
    "a=extmap:": 32,
    "a=fingerprint:": 16,
}
_PROFILES = frozenset({"UDP/TLS/RTP/SAVPF", "UDP/TLS/RTP/SAVP", "TCP/TLS/RTP/SAVPF", "TCP/DTLS/RTP/SAVPF"})
_DIGEST_BYTES = {"sha-256": 32, "sha-384": 48, "sha-512": 64}  # what aiortc's DTLS checks
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # any control character but TAB, LF, CR
_MID = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]{1,32}")  # an SDP token, short (RTP carries it)
_UFRAG = re.compile(r"[A-Za-z0-9+/]{4,256}")  # ice-char, RFC 8839
_PASSWORD = re.compile(r"[A-Za-z0-9+/]{22,256}")
_HEX_BYTES = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2})*")
_MDNS_NAME = re.compile(r"[A-Za-z0-9-]{1,63}\.local")  # browsers hide host addresses behind these
_M_LINE = re.compile(r"m=([^ ]+) ([0-9]+) ([A-Z/]+) (.+)")  # what aiortc's parser expects
_CONNECTION = re.compile(r"c=IN IP[46] [^ ]+")
_TRANSPORTS = frozenset({"udp", "tcp"})
_CANDIDATE_TYPES = frozenset({"host", "srflx", "prflx", "relay"})
_TCP_TYPES = frozenset({"active", "passive", "so"})
_U32 = 2**32 - 1


def _show(value: object, limit: int = 40) -> str:
    """A value from the offer, safe to put in a message: ASCII, quoted, cut short."""
    text = ascii(str(value))
    return text if len(text) <= limit else text[: limit - 3] + "...'"


def _bad(message: str) -> ProtocolError:
    return ProtocolError(BAD_SDP, message)


def _scan_lines(sdp: str) -> None:
    """Checks on the raw text, before aiortc's parser: size, characters, counts per section."""
    if not isinstance(sdp, str):
        raise _bad("the offer's SDP must be text")
    if len(sdp) > MAX_SDP_CHARS:
        raise _bad(f"the offer is too long ({len(sdp)} characters, at most {MAX_SDP_CHARS})")
    try:
        sdp.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad("the offer is not valid text (it holds a lone UTF-16 surrogate)") from None
    lines = sdp.splitlines()  # as aiortc splits it
    if len(lines) > _MAX_LINES:
        raise _bad(f"the offer has too many lines ({len(lines)}, at most {_MAX_LINES})")
    sections: list[tuple[str, list[str]]] = [("session", [])]
    for number, line in enumerate(lines, 1):
        if len(line) > _MAX_LINE_CHARS:
            raise _bad(f"line {number} of the offer is too long ({len(line)} characters, at most {_MAX_LINE_CHARS})")
        control = _CONTROL.search(line)
        if control:
            raise _bad(f"line {number} of the offer holds a control character (U+{ord(control.group()):04X})")
        if line.startswith("a=setup:") and line[8:] not in ("actpass", "active", "passive"):
            raise _bad(f"line {number} of the offer has a=setup {_show(line[8:])} (actpass, active or passive)")
        if line.startswith("m="):
            if len(sections) > 2:
                raise _bad("the offer may hold only one audio and one video section")
            _check_m_line(number, line)
            kind = line[2:].split(" ", 1)[0]
            sections.append((kind if kind in ("audio", "video") else _show(kind), []))
        else:
            if line.startswith("a=candidate:") and len(line.split()) < 8:
                raise _bad(f"line {number} of the offer is a candidate with fewer than 8 fields")
            if line.startswith("c=") and not _CONNECTION.fullmatch(line):
                raise _bad(f"line {number} of the offer is a c= line that is not 'c=IN IP4|IP6 <address>'")
            sections[-1][1].append(line)
    for kind, section in sections:
        where = f"the offer's {kind} section" if kind != "session" else "the offer's session part"
        for prefix, limit in _MAX_PER_SECTION.items():
            count = sum(1 for line in section if line.startswith(prefix))
            if count > limit:
                raise _bad(f"{where} has {count} {prefix.rstrip(':')} lines (at most {limit})")
        # aiortc's parser fails on a=fmtp for a payload type that has no a=rtpmap (StopIteration)
        mapped = {line[9:].split(" ", 1)[0] for line in section if line.startswith("a=rtpmap:")}
        for line in section:
            if line.startswith("a=fmtp:") and line[7:].split(" ", 1)[0] not in mapped:
                raise _bad(f"{where} has {_show(line, 60)} for a payload type without an a=rtpmap")


def _check_m_line(number: int, line: str) -> None:
    match = _M_LINE.fullmatch(line)
    if not match:
        raise _bad(f"line {number} of the offer is an m= line that is not 'm=<kind> <port> <profile> <formats>'")
    if match.group(1) in ("audio", "video"):
        for fmt in match.group(4).split():
            if not fmt.isascii() or not fmt.isdigit() or not 0 <= int(fmt) <= 127 or 72 <= int(fmt) <= 76:
                raise _bad(f"line {number} of the offer lists payload type {_show(fmt)} (0 to 127 but 72 to 76)")


def _check_port(what: str, port: int | None, *, lowest: int) -> None:
    if port is not None and not lowest <= port <= 65535:
        raise _bad(f"{what} has port {_show(port)} (a port is {lowest} to 65535)")


def _check_candidate(where: str, number: int, candidate: RTCIceCandidate) -> None:
    what = f"candidate {number} of {where}"
    if candidate.protocol.lower() not in _TRANSPORTS:
        raise _bad(f"{what} has transport {_show(candidate.protocol)} (udp or tcp)")
    if candidate.type not in _CANDIDATE_TYPES:
        raise _bad(f"{what} has type {_show(candidate.type)} (host, srflx, prflx or relay)")
    if not 1 <= candidate.component <= 256:
        raise _bad(f"{what} has component {_show(candidate.component)} (1 to 256)")
    if not 1 <= candidate.priority <= _U32:
        raise _bad(f"{what} has priority {_show(candidate.priority)} (1 to 2**32 - 1)")
    _check_port(what, candidate.port, lowest=1)
    problem = _address_problem(candidate.ip, related=False)
    if problem:
        raise _bad(f"{what} has address {_show(candidate.ip)}, which {problem}")
    if candidate.relatedAddress is not None:
        problem = _address_problem(candidate.relatedAddress, related=True)
        if problem:
            raise _bad(f"{what} has related address {_show(candidate.relatedAddress)}, which {problem}")
    _check_port(f"{what} (related)", candidate.relatedPort, lowest=0)
    if candidate.tcpType is not None and (candidate.protocol.lower() != "tcp" or candidate.tcpType not in _TCP_TYPES):
        raise _bad(f"{what} has tcptype {_show(candidate.tcpType)} (active, passive or so, on tcp only)")


def _address_problem(text: str, *, related: bool) -> str | None:
    """Why a candidate's address cannot be a peer's (None when it can).

    An IP address or an mDNS name (``<uuid>.local``, what browsers send to hide host addresses);
    never unspecified, multicast or broadcast. A related address is only information (browsers
    send 0.0.0.0 there), so only its form is checked.
    """
    if _MDNS_NAME.fullmatch(text):
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return "is neither an IP address nor an mDNS name"
    if related:
        return None
    if address.is_unspecified:
        return "is unspecified"
    if address.is_multicast:
        return "is a multicast address"
    if address == ipaddress.IPv4Address("255.255.255.255"):
        return "is the broadcast address"
    return None


def _check_section(media: MediaDescription) -> None:
    """One media section, field by field, as aiortc parsed it."""
    where = f"the offer's {media.kind} section"
    if media.profile not in _PROFILES:
        raise _bad(f"{where} has profile {_show(media.profile)} (WebRTC uses UDP/TLS/RTP/SAVPF)")
    _check_port(where, media.port, lowest=0)
    _check_port(f"{where}'s a=rtcp", media.rtcp_port, lowest=0)
    if not media.rtcp_mux:
        raise _bad(f"{where} has no a=rtcp-mux (RTP and RTCP must share a port)")
    if media.direction is None:
        raise _bad(f"{where} has no direction (a=sendrecv, a=sendonly, a=recvonly or a=inactive)")
    mid = media.rtp.muxId
    if not mid:  # aiortc's parser leaves "" when the line is missing
        raise _bad(f"{where} has no a=mid")
    if not _MID.fullmatch(mid):
        raise _bad(f"{where} has a=mid {_show(mid)} (1 to 32 letters, digits or SDP token characters)")

    # ICE and DTLS (session-level values are already copied into each section by the parser)
    ice = media.ice
    if ice is None or not ice.usernameFragment or not ice.password:
        raise _bad(f"{where} has no ICE credentials (a=ice-ufrag and a=ice-pwd)")
    if not _UFRAG.fullmatch(ice.usernameFragment):
        raise _bad(f"{where} has a=ice-ufrag {_show(ice.usernameFragment)} (4 to 256 letters, digits, + or /)")
    if not _PASSWORD.fullmatch(ice.password):
        raise _bad(f"{where} has an a=ice-pwd that is not 22 to 256 letters, digits, + or /")
    if media.dtls is None:
        raise _bad(f"{where} has no a=setup (actpass, active or passive)")
    usable = 0
    for fingerprint in media.dtls.fingerprints:
        size = _DIGEST_BYTES.get(fingerprint.algorithm.lower())
        if size is None:
            continue  # aiortc ignores algorithms it does not know, as RFC 8122 asks
        if not _HEX_BYTES.fullmatch(fingerprint.value) or len(fingerprint.value) != 3 * size - 1:
            raise _bad(f"{where} has a malformed {_show(fingerprint.algorithm)} fingerprint")
        usable += 1
    if not usable:
        raise _bad(f"{where} has no DTLS fingerprint aiortc can check (sha-256, sha-384 or sha-512)")

    # RTP: payload types, codecs, header extensions, SSRCs
    if len(set(media.fmt)) != len(media.fmt):
        raise _bad(f"{where} lists a payload type twice on its m= line")
    for pt in media.fmt:
        if not 0 <= pt <= 127:
            raise _bad(f"{where} lists payload type {_show(pt)} (0 to 127)")
    seen: set[int] = set()
    for codec in media.rtp.codecs:
        name = f"{where}'s codec {_show(codec.mimeType)}"
        pt = codec.payloadType
        if pt is None or not 0 <= pt <= 127:
            raise _bad(f"{name} has payload type {_show(pt)} (0 to 127)")
        if pt in seen:
            raise _bad(f"{where} maps payload type {pt} twice")
        seen.add(pt)
        if not 1 <= codec.clockRate <= _U32:
            raise _bad(f"{name} has clock rate {_show(codec.clockRate)}")
        if codec.channels is not None and not 1 <= codec.channels <= 255:
            raise _bad(f"{name} has {_show(codec.channels)} channels")
    ids: set[int] = set()
    for extension in media.rtp.headerExtensions:
        if not 1 <= extension.id <= 255:
            raise _bad(f"{where} has header extension id {_show(extension.id)} (1 to 255)")
        if extension.id in ids:
            raise _bad(f"{where} uses header extension id {extension.id} twice")
        ids.add(extension.id)
    ssrcs = [s.ssrc for s in media.ssrc] + [int(item) for group in media.ssrc_group for item in group.items]
    for ssrc in ssrcs:
        if not 0 <= ssrc <= _U32:
            raise _bad(f"{where} has SSRC {_show(ssrc)} (0 to 2**32 - 1)")

    for number, candidate in enumerate(media.ice_candidates, 1):
        _check_candidate(where, number, candidate)


def _check_offer(sdp: str) -> bool:
    """Validate the offer; return True when the voice should come back. Raises ProtocolError(bad_sdp)."""
    _scan_lines(sdp)
    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises many types on malformed input
        raise _bad(_refusal("the offer could not be read", exc)) from None
    audio = [m for m in description.media if m.kind == "audio"]
    video = [m for m in description.media if m.kind == "video"]
    if len(audio) != 1:
        raise _bad(f"the offer must have exactly one audio track (it has {len(audio)})")
    if len(video) != 1:
        raise _bad(f"the offer must have exactly one video transceiver (it has {len(video)})")
    if len(description.media) != 2:
        raise _bad("the offer may hold only one audio and one video section")
    for media in description.media:
        _check_section(media)
    mids = [m.rtp.muxId for m in description.media]
    if len(set(mids)) != len(mids):
        raise _bad(f"the offer's sections share the a=mid {_show(mids[0])}")
    bundles = [g for g in description.group if g.semantic == "BUNDLE"]
    if len(bundles) > 1:
        raise _bad("the offer has more than one BUNDLE group")
    for bundle in bundles:
        items = [str(item) for item in bundle.items]
        if len(set(items)) != len(items):
            raise _bad(f"the offer's BUNDLE group {_show(' '.join(items))} names a mid twice")
        if not set(items) <= set(mids):
            raise _bad(f"the offer's BUNDLE group {_show(' '.join(items))} names a mid no section has")
    audio_direction = audio[0].direction
    video_direction = video[0].direction
    if audio_direction not in ("sendrecv", "sendonly"):
        raise _bad(f"the audio track must be sendrecv or sendonly, not {audio_direction}")
    if video_direction != "recvonly":
        raise _bad(f"the video transceiver must be recvonly, not {video_direction}")
    return audio_direction == "sendrecv"


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
        return
    except Exception as exc:
        log.debug("RTCPeerConnection.close failed (%s: %s); stopping its parts one by one", type(exc).__name__, exc)
    parts: list[Any] = []
    for transceiver in pc.getTransceivers():
        parts.append(transceiver)
        dtls = transceiver.receiver.transport
        if dtls is not None:
            parts += [dtls, dtls.transport]
    for name in ("_RTCPeerConnection__dtlsTransports", "_RTCPeerConnection__iceTransports"):
        parts += list(getattr(pc, name, ()))
    for part in parts:
        with contextlib.suppress(Exception):
            await part.stop()
    closed = getattr(pc, "_RTCPeerConnection__isClosed", None)
    if isinstance(closed, asyncio.Future) and not closed.done():
        closed.set_result(True)
    with contextlib.suppress(Exception):
        pc.remove_all_listeners()


class Peer:
    """One client's RTCPeerConnection; `aclose()` is idempotent, never raises and always closes it."""

    def __init__(self, config: WebRtcConfig, session_id: str) -> None:
        self._config = config
        self._session_id = session_id
        self._pc: RTCPeerConnection | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.failed = asyncio.Event()
        """Set when the connection fails or closes: the session should end."""
        self.return_audio = False
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
            self.return_audio = _check_offer(offer_sdp)
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
            log.info("session %s: connection %s", self._session_id, state)
            if state in ("failed", "closed"):
                self.failed.set()

        # Our transceivers exist before the offer is applied (aiortc matches them to the offer's
        # sections by kind), so the codec preference and the jitter buffer are in place in time.
        audio = pc.addTransceiver("audio", direction="sendrecv" if self.return_audio else "recvonly")
        video = pc.addTransceiver("video", direction="sendonly")
        video.setCodecPreferences(_video_preferences(self._config.video_codec))
        set_audio_jitter_prefetch(audio.receiver, self._config.audio_jitter_prefetch)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except Exception as exc:
            raise _bad(_refusal("the offer was refused", exc)) from None
        if audio.receiver.track is None or len(pc.getTransceivers()) != 2:
            raise _bad("the offer's media sections do not fit (one audio, one video)")
        if any(t.receiver.transport is None for t in pc.getTransceivers()):
            raise _bad("the offer's BUNDLE group leaves a section without a transport")
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
            raise _bad(_refusal("no answer fits the offer", exc)) from None
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


def _refusal(what: str, exc: BaseException) -> str:
    """A bad_sdp message for an exception aiortc raised: its type and a safe, short text."""
    detail = _show(exc, 200)[1:-1] if str(exc) else ""
    return f"{what} ({type(exc).__name__}{': ' + detail if detail else ''})"
