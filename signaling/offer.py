"""The offer a client sends, checked before aiortc sees it: `check_offer(sdp)` -> voice back or not.

The offer must hold exactly one audio section (``sendrecv``: the voice comes back in sync;
``sendonly``: video only) and one video section the client only receives (``recvonly``). Anything
unusable or hostile raises ``ProtocolError("bad_sdp")`` with a message a person can read.

aiortc parses an offer loosely and trusts what it parsed: a candidate port above 65535 reaches
`sendto` (asyncio then logs a fatal write error and closes the ICE socket), an ICE ufrag of
100 kB cannot be packed into a STUN message (the check task dies), a BUNDLE group naming an
unknown mid leaves a transceiver without a transport (createAnswer and close both raise), and
some parsing is quadratic (10 000 a=ssrc lines block the event loop for seconds). So the offer is
checked first, line by line before aiortc's parser sees it, then field by field; everything a
browser sends passes (a browser's offer has a few candidates, a few dozen codecs, 1-4 ssrcs).
"""

from __future__ import annotations

import ipaddress
import re

from aiortc import RTCIceCandidate
from aiortc.sdp import MediaDescription, SessionDescription

from signaling.messages import BAD_SDP, MAX_SDP_CHARS, ProtocolError

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


def quoted(value: object, limit: int = 40) -> str:
    """A value from the offer, safe to put in a message: ASCII, quoted, cut short."""
    text = ascii(str(value))
    return text if len(text) <= limit else text[: limit - 3] + "...'"


def bad_sdp(message: str) -> ProtocolError:
    return ProtocolError(BAD_SDP, message)


def _scan_lines(sdp: str) -> None:
    """Checks on the raw text, before aiortc's parser: size, characters, counts per section."""
    if not isinstance(sdp, str):
        raise bad_sdp("the offer's SDP must be text")
    if len(sdp) > MAX_SDP_CHARS:
        raise bad_sdp(f"the offer is too long ({len(sdp)} characters, at most {MAX_SDP_CHARS})")
    try:
        sdp.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_sdp("the offer is not valid text (it holds a lone UTF-16 surrogate)") from None
    lines = sdp.splitlines()  # as aiortc splits it
    if len(lines) > _MAX_LINES:
        raise bad_sdp(f"the offer has too many lines ({len(lines)}, at most {_MAX_LINES})")
    sections: list[tuple[str, list[str]]] = [("session", [])]
    for number, line in enumerate(lines, 1):
        if len(line) > _MAX_LINE_CHARS:
            raise bad_sdp(f"line {number} of the offer is too long ({len(line)} characters, at most {_MAX_LINE_CHARS})")
        control = _CONTROL.search(line)
        if control:
            raise bad_sdp(f"line {number} of the offer holds a control character (U+{ord(control.group()):04X})")
        if line.startswith("a=setup:") and line[8:] not in ("actpass", "active", "passive"):
            raise bad_sdp(f"line {number} of the offer has a=setup {quoted(line[8:])} (actpass, active or passive)")
        if line.startswith("m="):
            if len(sections) > 2:
                raise bad_sdp("the offer may hold only one audio and one video section")
            _check_m_line(number, line)
            kind = line[2:].split(" ", 1)[0]
            sections.append((kind if kind in ("audio", "video") else quoted(kind), []))
        else:
            if line.startswith("a=candidate:") and len(line.split()) < 8:
                raise bad_sdp(f"line {number} of the offer is a candidate with fewer than 8 fields")
            if line.startswith("c=") and not _CONNECTION.fullmatch(line):
                raise bad_sdp(f"line {number} of the offer is a c= line that is not 'c=IN IP4|IP6 <address>'")
            sections[-1][1].append(line)
    for kind, section in sections:
        where = f"the offer's {kind} section" if kind != "session" else "the offer's session part"
        for prefix, limit in _MAX_PER_SECTION.items():
            count = sum(1 for line in section if line.startswith(prefix))
            if count > limit:
                raise bad_sdp(f"{where} has {count} {prefix.rstrip(':')} lines (at most {limit})")
        # aiortc's parser fails on a=fmtp for a payload type that has no a=rtpmap (StopIteration)
        mapped = {line[9:].split(" ", 1)[0] for line in section if line.startswith("a=rtpmap:")}
        for line in section:
            if line.startswith("a=fmtp:") and line[7:].split(" ", 1)[0] not in mapped:
                raise bad_sdp(f"{where} has {quoted(line, 60)} for a payload type without an a=rtpmap")


def _check_m_line(number: int, line: str) -> None:
    match = _M_LINE.fullmatch(line)
    if not match:
        raise bad_sdp(f"line {number} of the offer is an m= line that is not 'm=<kind> <port> <profile> <formats>'")
    if match.group(1) in ("audio", "video"):
        for fmt in match.group(4).split():
            if not fmt.isascii() or not fmt.isdigit() or not 0 <= int(fmt) <= 127 or 72 <= int(fmt) <= 76:
                raise bad_sdp(f"line {number} of the offer lists payload type {quoted(fmt)} (0 to 127 but 72 to 76)")


def _check_port(what: str, port: int | None, *, lowest: int) -> None:
    if port is not None and not lowest <= port <= 65535:
        raise bad_sdp(f"{what} has port {quoted(port)} (a port is {lowest} to 65535)")


def _check_candidate(where: str, number: int, candidate: RTCIceCandidate) -> None:
    what = f"candidate {number} of {where}"
    if candidate.protocol.lower() not in _TRANSPORTS:
        raise bad_sdp(f"{what} has transport {quoted(candidate.protocol)} (udp or tcp)")
    if candidate.type not in _CANDIDATE_TYPES:
        raise bad_sdp(f"{what} has type {quoted(candidate.type)} (host, srflx, prflx or relay)")
    if not 1 <= candidate.component <= 256:
        raise bad_sdp(f"{what} has component {quoted(candidate.component)} (1 to 256)")
    if not 1 <= candidate.priority <= _U32:
        raise bad_sdp(f"{what} has priority {quoted(candidate.priority)} (1 to 2**32 - 1)")
    _check_port(what, candidate.port, lowest=1)
    problem = _address_problem(candidate.ip, related=False)
    if problem:
        raise bad_sdp(f"{what} has address {quoted(candidate.ip)}, which {problem}")
    if candidate.relatedAddress is not None:
        problem = _address_problem(candidate.relatedAddress, related=True)
        if problem:
            raise bad_sdp(f"{what} has related address {quoted(candidate.relatedAddress)}, which {problem}")
    _check_port(f"{what} (related)", candidate.relatedPort, lowest=0)
    if candidate.tcpType is not None and (candidate.protocol.lower() != "tcp" or candidate.tcpType not in _TCP_TYPES):
        raise bad_sdp(f"{what} has tcptype {quoted(candidate.tcpType)} (active, passive or so, on tcp only)")


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
        raise bad_sdp(f"{where} has profile {quoted(media.profile)} (WebRTC uses UDP/TLS/RTP/SAVPF)")
    _check_port(where, media.port, lowest=0)
    _check_port(f"{where}'s a=rtcp", media.rtcp_port, lowest=0)
    if not media.rtcp_mux:
        raise bad_sdp(f"{where} has no a=rtcp-mux (RTP and RTCP must share a port)")
    if media.direction is None:
        raise bad_sdp(f"{where} has no direction (a=sendrecv, a=sendonly, a=recvonly or a=inactive)")
    mid = media.rtp.muxId
    if not mid:  # aiortc's parser leaves "" when the line is missing
        raise bad_sdp(f"{where} has no a=mid")
    if not _MID.fullmatch(mid):
        raise bad_sdp(f"{where} has a=mid {quoted(mid)} (1 to 32 letters, digits or SDP token characters)")

    # ICE and DTLS (session-level values are already copied into each section by the parser)
    ice = media.ice
    if ice is None or not ice.usernameFragment or not ice.password:
        raise bad_sdp(f"{where} has no ICE credentials (a=ice-ufrag and a=ice-pwd)")
    if not _UFRAG.fullmatch(ice.usernameFragment):
        raise bad_sdp(f"{where} has a=ice-ufrag {quoted(ice.usernameFragment)} (4 to 256 letters, digits, + or /)")
    if not _PASSWORD.fullmatch(ice.password):
        raise bad_sdp(f"{where} has an a=ice-pwd that is not 22 to 256 letters, digits, + or /")
    if media.dtls is None:
        raise bad_sdp(f"{where} has no a=setup (actpass, active or passive)")
    usable = 0
    for fingerprint in media.dtls.fingerprints:
        size = _DIGEST_BYTES.get(fingerprint.algorithm.lower())
        if size is None:
            continue  # aiortc ignores algorithms it does not know, as RFC 8122 asks
        if not _HEX_BYTES.fullmatch(fingerprint.value) or len(fingerprint.value) != 3 * size - 1:
            raise bad_sdp(f"{where} has a malformed {quoted(fingerprint.algorithm)} fingerprint")
        usable += 1
    if not usable:
        raise bad_sdp(f"{where} has no DTLS fingerprint aiortc can check (sha-256, sha-384 or sha-512)")

    # RTP: payload types, codecs, header extensions, SSRCs
    if len(set(media.fmt)) != len(media.fmt):
        raise bad_sdp(f"{where} lists a payload type twice on its m= line")
    for pt in media.fmt:
        if not 0 <= pt <= 127:
            raise bad_sdp(f"{where} lists payload type {quoted(pt)} (0 to 127)")
    seen: set[int] = set()
    for codec in media.rtp.codecs:
        name = f"{where}'s codec {quoted(codec.mimeType)}"
        pt = codec.payloadType
        if pt is None or not 0 <= pt <= 127:
            raise bad_sdp(f"{name} has payload type {quoted(pt)} (0 to 127)")
        if pt in seen:
            raise bad_sdp(f"{where} maps payload type {pt} twice")
        seen.add(pt)
        if not 1 <= codec.clockRate <= _U32:
            raise bad_sdp(f"{name} has clock rate {quoted(codec.clockRate)}")
        if codec.channels is not None and not 1 <= codec.channels <= 255:
            raise bad_sdp(f"{name} has {quoted(codec.channels)} channels")
    ids: set[int] = set()
    for extension in media.rtp.headerExtensions:
        if not 1 <= extension.id <= 255:
            raise bad_sdp(f"{where} has header extension id {quoted(extension.id)} (1 to 255)")
        if extension.id in ids:
            raise bad_sdp(f"{where} uses header extension id {extension.id} twice")
        ids.add(extension.id)
    ssrcs = [s.ssrc for s in media.ssrc] + [int(item) for group in media.ssrc_group for item in group.items]
    for ssrc in ssrcs:
        if not 0 <= ssrc <= _U32:
            raise bad_sdp(f"{where} has SSRC {quoted(ssrc)} (0 to 2**32 - 1)")

    for number, candidate in enumerate(media.ice_candidates, 1):
        _check_candidate(where, number, candidate)


def refusal(what: str, exc: BaseException) -> str:
    """A bad_sdp message for an exception aiortc raised: its type and a safe, short text."""
    detail = quoted(exc, 200)[1:-1] if str(exc) else ""
    return f"{what} ({type(exc).__name__}{': ' + detail if detail else ''})"


def check_offer(sdp: str) -> str:
    """Validate the offer; return its audio direction: "sendrecv" (a microphone, the voice comes
    back), "sendonly" (a microphone, video only) or "recvonly" (no microphone, a presenter: the
    voice of its speech items comes back). Raises ProtocolError(bad_sdp)."""
    _scan_lines(sdp)
    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises many types on malformed input
        raise bad_sdp(refusal("the offer could not be read", exc)) from None
    audio = [m for m in description.media if m.kind == "audio"]
    video = [m for m in description.media if m.kind == "video"]
    if len(audio) != 1:
        raise bad_sdp(f"the offer must have exactly one audio track (it has {len(audio)})")
    if len(video) != 1:
        raise bad_sdp(f"the offer must have exactly one video transceiver (it has {len(video)})")
    if len(description.media) != 2:
        raise bad_sdp("the offer may hold only one audio and one video section")
    for media in description.media:
        _check_section(media)
    mids = [m.rtp.muxId for m in description.media]
    if len(set(mids)) != len(mids):
        raise bad_sdp(f"the offer's sections share the a=mid {quoted(mids[0])}")
    bundles = [g for g in description.group if g.semantic == "BUNDLE"]
    if len(bundles) > 1:
        raise bad_sdp("the offer has more than one BUNDLE group")
    for bundle in bundles:
        items = [str(item) for item in bundle.items]
        if len(set(items)) != len(items):
            raise bad_sdp(f"the offer's BUNDLE group {quoted(' '.join(items))} names a mid twice")
        if not set(items) <= set(mids):
            raise bad_sdp(f"the offer's BUNDLE group {quoted(' '.join(items))} names a mid no section has")
    audio_direction = audio[0].direction
    video_direction = video[0].direction
    if audio_direction not in ("sendrecv", "sendonly", "recvonly"):
        raise bad_sdp(f"the audio track must be sendrecv, sendonly or recvonly, not {audio_direction}")
    if video_direction != "recvonly":
        raise bad_sdp(f"the video transceiver must be recvonly, not {video_direction}")
    return str(audio_direction)
