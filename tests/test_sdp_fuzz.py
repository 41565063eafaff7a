"""Hostile SDP offers against `signaling.peer.Peer.negotiate` (issue 7), in one process.

Every offer is either answered or refused with ProtocolError("bad_sdp"); nothing else is raised,
and nothing is left behind: the peer's RTCPeerConnection is closed, every task started while
negotiating ends, no task dies with an exception nobody retrieves, and asyncio reports nothing
(such as "Fatal write error on datagram transport"). ICE gathers on 127.0.0.1 only and the offers
point only at 127.0.0.1 or at addresses refused before aiortc sees them (tests/sdp_mutations.py).
"""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import Callable
from typing import Any

import pytest
from aiortc import RTCPeerConnection

import signaling.peer
from avatar.config import WebRtcConfig
from signaling.ice import host_addresses
from signaling.messages import MAX_SDP_CHARS, ProtocolError
from signaling.offer import check_offer
from signaling.peer import Peer
from tests.media_doubles import SessionDouble
from tests.sdp_mutations import base_offers_sync, mutated_offers

HOLD_S = 0.03  # an answered peer lives this long before it is closed: its ICE checks start
SETTLE_S = 3.0  # how long the tasks of a closed peer may take to end


async def make_session(return_audio: bool) -> SessionDouble:
    return SessionDouble(return_audio)


class Watch:
    """Records the tasks started, the errors asyncio reports and the connections the peers make."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.tasks: list[asyncio.Task[Any]] = []
        self.reports: list[dict[str, Any]] = []
        self.connections: list[RTCPeerConnection] = []

    def __enter__(self) -> Watch:
        self._factory = self.loop.get_task_factory()
        self._handler = self.loop.get_exception_handler()
        self._connection_class = signaling.peer.RTCPeerConnection
        connections = self.connections

        class Recorded(RTCPeerConnection):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                connections.append(self)

        signaling.peer.RTCPeerConnection = Recorded  # type: ignore[misc]

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
            task = asyncio.Task(coro, loop=loop, **kwargs)
            self.tasks.append(task)
            return task

        self.loop.set_task_factory(factory)  # type: ignore[arg-type]
        self.loop.set_exception_handler(lambda loop, context: self.reports.append(context))
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.set_task_factory(self._factory)
        self.loop.set_exception_handler(self._handler)
        signaling.peer.RTCPeerConnection = self._connection_class  # type: ignore[misc]

    async def settle(self, what: str) -> None:
        """Wait for every recorded task to end, then fail on what was left or reported."""
        deadline = self.loop.time() + SETTLE_S
        while any(not t.done() for t in self.tasks) and self.loop.time() < deadline:
            await asyncio.sleep(0.005)
        pending = [t for t in self.tasks if not t.done()]
        # asyncio's own flag behind "Task exception was never retrieved" (logged when the task is
        # collected, which may be much later): a task that died and nobody looked.
        unretrieved = [t for t in self.tasks if t.done() and getattr(t, "_log_traceback", False)]
        problems = [f"pending task {t!r}" for t in pending]
        problems += [f"task {t.get_coro()!r} died unseen: {t.exception()!r}" for t in unretrieved]
        problems += [f"asyncio reported {c.get('message')!r}: {c.get('exception')!r}" for c in self.reports]
        for pc in self.connections:  # closed, with no UDP socket left open by its ICE transports
            transports = getattr(pc, "_RTCPeerConnection__iceTransports")  # noqa: B009
            sockets = sum(len(t._connection._protocols) for t in transports)
            if pc.signalingState != "closed" or sockets:
                problems.append(f"connection left open: {pc.signalingState}, {sockets} ICE sockets")
        self.connections.clear()
        for task in pending:
            task.cancel()
        self.tasks.clear()
        self.reports.clear()
        assert not problems, f"{what}: {problems}"


async def negotiate_once(sdp: str, what: str, hold_s: float = HOLD_S) -> tuple[str, str]:
    """One offer through a fresh Peer: ("answer", sdp) or ("bad_sdp", message); anything else fails."""
    peer = Peer(WebRtcConfig(), "fuzz")
    try:
        answer = await peer.negotiate(sdp, make_session)
    except ProtocolError as exc:
        assert exc.code == "bad_sdp", f"{what}: {exc.code} {exc.message}"
        assert exc.message and len(exc.message) <= 400 and exc.message.isascii(), f"{what}: {exc.message!r}"
        assert peer.connection_state == "closed" and peer.failed.is_set(), f"{what}: peer left open"
        await peer.aclose()
        return "bad_sdp", exc.message
    except Exception as exc:
        await peer.aclose()
        pytest.fail(f"{what}: {type(exc).__name__}: {exc}")
    try:
        assert answer.startswith("v=0"), what
        await asyncio.sleep(hold_s)
    finally:
        await peer.aclose()
    assert peer.connection_state == "closed", what
    return "answer", answer


@pytest.fixture(scope="module")
def bases() -> list[tuple[str, str]]:
    """Real aiortc offers made now, then a real Chromium offer (more codecs, tcp candidates)."""
    return [*base_offers_sync(), ("Chromium sendrecv audio + recvonly video", CHROMIUM_OFFER)]


async def run_corpus(count: int, seed: int, bases: list[tuple[str, str]]) -> collections.Counter[str]:
    outcomes: collections.Counter[str] = collections.Counter()
    with host_addresses(["127.0.0.1"]), Watch(asyncio.get_running_loop()) as watch:
        for what, sdp in mutated_offers(count, seed, bases):
            outcome, _ = await negotiate_once(sdp, what)
            await watch.settle(what)
            outcomes[outcome] += 1
    return outcomes


def test_mutations_are_deterministic(bases: list[tuple[str, str]]) -> None:
    assert [name for name, _ in bases[:2]] == ["sendrecv audio + recvonly video", "sendonly audio + recvonly video"]
    first = list(mutated_offers(60, 7, bases))
    assert first == list(mutated_offers(60, 7, bases))
    assert first != list(mutated_offers(60, 8, bases))
    assert len({sdp for _, sdp in first}) > 50


async def test_the_unmutated_offers_are_answered(bases: list[tuple[str, str]]) -> None:
    with host_addresses(["127.0.0.1"]), Watch(asyncio.get_running_loop()) as watch:
        for name, sdp in bases:
            outcome, answer = await negotiate_once(sdp, name)
            assert outcome == "answer", answer
            await watch.settle(name)


async def test_mutated_offers_are_answered_or_bad_sdp(bases: list[tuple[str, str]]) -> None:
    outcomes = await run_corpus(500, 1, bases)
    assert set(outcomes) <= {"answer", "bad_sdp"}
    assert outcomes["answer"] >= 50 and outcomes["bad_sdp"] >= 250, outcomes  # the corpus tests both


@pytest.mark.slow
async def test_many_mutated_offers_are_answered_or_bad_sdp(bases: list[tuple[str, str]]) -> None:
    outcomes = await run_corpus(2000, 2, bases)
    assert set(outcomes) <= {"answer", "bad_sdp"}


# --- targeted hostile offers: each was answered, or raised something else, before the fix ----------


def _sub(pattern: str, replacement: str | None, count: int = 0) -> Callable[[str], str]:
    """Replace each whole line matching `pattern` (groups usable in `replacement`; None deletes it)."""

    def edit(sdp: str) -> str:
        out, changed = [], 0
        for line in sdp.split("\r\n"):
            match = re.fullmatch(pattern, line)
            if match and (count == 0 or changed < count):
                changed += 1
                if replacement is not None:
                    out.append(match.expand(replacement))
            else:
                out.append(line)
        return "\r\n".join(out)

    return edit


def _candidate_field(index: int, value: str) -> Callable[[str], str]:
    """Set one field of the first candidate (1 component, 2 transport, 3 priority, 4 address, 5 port)."""

    def edit(sdp: str) -> str:
        lines = sdp.split("\r\n")
        i = next(k for k, line in enumerate(lines) if line.startswith("a=candidate:"))
        fields = lines[i].split(" ")
        fields[index] = value
        lines[i] = " ".join(fields)
        return "\r\n".join(lines)

    return edit


def _more_lines(prefix: str, make: Callable[[int], str], count: int) -> Callable[[str], str]:
    """Insert `count` lines after the first line starting with `prefix`."""

    def edit(sdp: str) -> str:
        lines = sdp.split("\r\n")
        i = next(k for k, line in enumerate(lines) if line.startswith(prefix))
        return "\r\n".join(lines[: i + 1] + [make(k) for k in range(count)] + lines[i + 1 :])

    return edit


def _only_md5_fingerprints(sdp: str) -> str:
    sdp = _sub(r"a=fingerprint:sha-(384|512) .*", None)(sdp)
    return _sub(r"a=fingerprint:sha-256 (.*)", r"a=fingerprint:md5 \1")(sdp)


HOSTILE: dict[str, tuple[Callable[[str], str], str]] = {
    # mids and BUNDLE: aiortc's failure, then its close(), raised AttributeError
    "no a=mid in the audio section": (_sub(r"a=mid:0", None), "has no a=mid"),
    "no a=mid at all": (_sub(r"a=mid:.*", None), "has no a=mid"),
    "BUNDLE names a mid no section has": (_sub(r"a=mid:0", "a=mid:2"), "names a mid no section has"),
    "two sections share a mid": (_sub(r"a=mid:1", "a=mid:0"), "share the a=mid"),
    "a=mid with a lone surrogate": (_sub(r"a=mid:1", "a=mid:\ud800"), "lone UTF-16 surrogate"),
    "a=mid with a space": (_sub(r"a=mid:1", "a=mid:1 2"), "has a=mid '1 2'"),
    "BUNDLE names a mid twice": (_sub(r"a=group:BUNDLE 0 1", "a=group:BUNDLE 0 0"), "names a mid twice"),
    # candidates: ports above 65535 made asyncio log fatal write errors; the rest were answered
    "candidate port 65536": (_candidate_field(5, "65536"), "has port '65536'"),
    "candidate port 0": (_candidate_field(5, "0"), "has port '0'"),
    "candidate port -1": (_candidate_field(5, "-1"), "has port '-1'"),
    "candidate port 2**64": (_candidate_field(5, str(2**64)), "has port"),
    "candidate address 999.1.1.1": (_candidate_field(4, "999.1.1.1"), "neither an IP address nor an mDNS name"),
    "candidate address is a host name": (_candidate_field(4, "localhost"), "neither an IP address nor an mDNS name"),
    "candidate address 0.0.0.0": (_candidate_field(4, "0.0.0.0"), "is unspecified"),
    "candidate address multicast": (_candidate_field(4, "224.0.0.1"), "is a multicast address"),
    "candidate address broadcast": (_candidate_field(4, "255.255.255.255"), "is the broadcast address"),
    "candidate transport sctp": (_candidate_field(2, "sctp"), "has transport 'sctp'"),
    "candidate priority 0": (_candidate_field(3, "0"), "has priority '0'"),
    "candidate priority 2**64": (_candidate_field(3, str(2**64)), "has priority"),
    "candidate component 0": (_candidate_field(1, "0"), "has component '0'"),
    "candidate type unknown": (_sub(r"(a=candidate:.*) typ host", r"\1 typ hostx", 1), "has type 'hostx'"),
    "tcptype on a udp candidate": (
        _sub(r"(a=candidate:.*) typ host", r"\1 typ host tcptype active", 1),
        "has tcptype 'active'",
    ),
    "100 candidates": (
        _more_lines("a=candidate:", lambda k: f"a=candidate:{k} 1 udp 2130706431 127.0.0.1 {20000 + k} typ host", 100),
        "a=candidate lines (at most 64)",
    ),
    # ICE credentials: a 100 kB ufrag cannot be packed into a STUN message (the check task died)
    "ufrag of 100 000 characters": (_sub(r"a=ice-ufrag:.*", "a=ice-ufrag:" + "y" * 100_000), "is too long"),
    "ufrag of 300 characters": (_sub(r"a=ice-ufrag:.*", "a=ice-ufrag:" + "y" * 300), "a=ice-ufrag 'yyy"),
    "ufrag not ice-chars": (_sub(r"a=ice-ufrag:.*", "a=ice-ufrag:\u00fc\u00fc\u00fc\u00fc"), "a=ice-ufrag"),
    "ice-pwd too short": (_sub(r"a=ice-pwd:.*", "a=ice-pwd:abc"), "a=ice-pwd that is not"),
    # RTP
    "SSRC 2**32": (_sub(r"a=ssrc:\d+ (.*)", f"a=ssrc:{2**32} \\1", 1), "has SSRC '4294967296'"),
    "10 000 a=ssrc lines (seconds of parsing)": (
        _more_lines("a=ssrc:", lambda k: f"a=ssrc:{k + 1} cname:x", 10_000),
        "too many lines",
    ),
    "header extension id 256": (_sub(r"a=extmap:1 (.*)", r"a=extmap:256 \1", 1), "header extension id '256'"),
    "header extension id used twice": (_sub(r"a=extmap:2 (.*)", r"a=extmap:1 \1", 1), "header extension id 1 twice"),
    "payload type 128": (_sub(r"a=rtpmap:0 (.*)", r"a=rtpmap:128 \1", 1), "payload type '128'"),
    "payload type mapped twice": (_sub(r"a=rtpmap:9 (.*)", r"a=rtpmap:0 \1", 1), "maps payload type 0 twice"),
    "m= port 65536": (_sub(r"m=audio \d+ (.*)", r"m=audio 65536 \1"), "has port '65536'"),
    "profile RTP/AVP": (_sub(r"m=audio (\d+) UDP/TLS/RTP/SAVPF (.*)", r"m=audio \1 RTP/AVP \2"), "profile 'RTP/AVP'"),
    "no direction": (_sub(r"a=sendrecv|a=sendonly", None), "has no direction"),
    # DTLS: answered although DTLS could only fail
    "malformed sha-256 fingerprint": (_sub(r"a=fingerprint:sha-256 .*", "a=fingerprint:sha-256 00"), "malformed"),
    "only an md5 fingerprint": (_only_md5_fingerprints, "no DTLS fingerprint aiortc can check"),
    "a=setup:holdconn": (_sub(r"a=setup:actpass", "a=setup:holdconn", 1), "has a=setup 'holdconn'"),
    # the text itself
    "a 5000-character line": (_sub(r"a=msid:.*", "a=msid:" + "x" * 5000, 1), "is too long"),
    "a NUL character": (_sub(r"s=-", "s=-\x00"), "control character (U+0000)"),
    f"more than {MAX_SDP_CHARS} characters": (lambda sdp: sdp + "a=x:" + "y" * MAX_SDP_CHARS, "is too long"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_hostile_offer_is_bad_sdp(case: str, bases: list[tuple[str, str]]) -> None:
    edit, expected = HOSTILE[case]
    sdp = edit(bases[0][1])
    assert sdp != bases[0][1], "the edit changed nothing"
    with pytest.raises(ProtocolError) as info:
        check_offer(sdp)  # refused before aiortc sees it
    assert info.value.code == "bad_sdp" and expected in info.value.message, info.value.message
    with host_addresses(["127.0.0.1"]), Watch(asyncio.get_running_loop()) as watch:
        outcome, message = await negotiate_once(sdp, case)
        assert outcome == "bad_sdp" and message == info.value.message
        await watch.settle(case)


async def test_chromium_offer_is_answered() -> None:
    with host_addresses(["127.0.0.1"]), Watch(asyncio.get_running_loop()) as watch:
        outcome, answer = await negotiate_once(CHROMIUM_OFFER, "Chromium's offer")
        assert outcome == "answer", answer
        await watch.settle("Chromium's offer")


async def test_browser_like_offer_passes_the_checks(bases: list[tuple[str, str]]) -> None:
    """What browsers send passes: mDNS and tcp candidates, srflx with raddr 0.0.0.0, extra fields."""
    sdp = bases[0][1].replace(
        "a=end-of-candidates",
        "a=candidate:2 1 udp 2113937151 0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d.local 50000 typ host generation 0\r\n"
        "a=candidate:3 1 tcp 1518280447 127.0.0.1 9 typ host tcptype active generation 0 network-id 1\r\n"
        "a=candidate:4 1 UDP 1686052607 127.0.0.1 50001 typ srflx raddr 0.0.0.0 rport 0\r\n"
        "a=end-of-candidates",
        1,
    )
    sdp = sdp.replace("a=rtcp-mux", "a=rtcp-mux\r\na=rtcp-rsize\r\na=ice-options:trickle", 1)
    check_offer(sdp)  # not refused; not negotiated (aioice would resolve the mDNS name by multicast)


# --- the cleanup after aiortc fails can never raise ------------------------------------------------


async def test_cleanup_is_safe_when_aiortc_breaks_its_own_close(
    bases: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An offer aiortc cannot apply, past the checks: createAnswer raises, then close() raises too.

    A BUNDLE group naming an unknown mid leaves the video transceiver without a transport; before
    the fix negotiate raised AttributeError from inside aclose(), with the peer half closed.
    """
    sdp = _sub(r"a=mid:0", "a=mid:2")(bases[1][1])
    monkeypatch.setattr(signaling.peer, "check_offer", lambda sdp: "sendonly")  # as if the check missed it
    with host_addresses(["127.0.0.1"]), Watch(asyncio.get_running_loop()) as watch:
        outcome, message = await negotiate_once(sdp, "bundle with an unknown mid")
        assert outcome == "bad_sdp"
        await watch.settle("bundle with an unknown mid")


async def test_close_connection_recovers_from_a_failing_close(bases: list[tuple[str, str]]) -> None:
    """`_close_connection` stops what aiortc's close() left running and never raises; close() ends."""
    from aiortc import RTCSessionDescription

    sdp = _sub(r"a=mid:0", "a=mid:2")(bases[1][1])
    with host_addresses(["127.0.0.1"]), Watch(asyncio.get_running_loop()) as watch:
        pc = RTCPeerConnection()
        pc.addTransceiver("audio", direction="recvonly")
        pc.addTransceiver("video", direction="sendonly")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        with pytest.raises(AttributeError):
            await pc.createAnswer()  # aiortc itself is broken by this offer
        await signaling.peer._close_connection(pc)
        await asyncio.wait_for(pc.close(), 2)  # a second close does not wait forever
        await watch.settle("close after a failed close")


async def test_peer_is_closed_when_negotiation_is_cancelled(bases: list[tuple[str, str]]) -> None:
    started = asyncio.Event()

    async def slow_session(return_audio: bool) -> SessionDouble:
        started.set()
        await asyncio.sleep(3600)
        raise AssertionError("not reached")

    with host_addresses(["127.0.0.1"]), Watch(asyncio.get_running_loop()) as watch:
        peer = Peer(WebRtcConfig(), "cancel")
        task = asyncio.create_task(peer.negotiate(bases[0][1], slow_session))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert peer.connection_state == "closed" and peer.failed.is_set()
        await watch.settle("cancelled negotiation")


async def test_peer_is_closed_when_the_session_cannot_be_made(bases: list[tuple[str, str]]) -> None:
    async def failing_session(return_audio: bool) -> SessionDouble:
        raise RuntimeError("no session today")

    with host_addresses(["127.0.0.1"]), Watch(asyncio.get_running_loop()) as watch:
        peer = Peer(WebRtcConfig(), "no-session")
        with pytest.raises(RuntimeError, match="no session today"):  # not bad_sdp: the offer was fine
            await peer.negotiate(bases[0][1], failing_session)
        assert peer.connection_state == "closed" and peer.failed.is_set()
        await watch.settle("session failed")


# A real offer from Chromium 156 (headless, fake microphone, in a network namespace with only lo up):
# sendrecv audio + recvonly video, with Chromium's udp and tcp (tcptype active, port 9) candidates.
CHROMIUM_OFFER = "\r\n".join(
    (
        "v=0",
        "o=- 4150769430802385169 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=extmap-allow-mixed",
        "a=msid-semantic: WMS",
        "m=audio 49762 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
        "c=IN IP4 127.0.0.1",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=candidate:2756367707 1 udp 2122260223 127.0.0.1 49762 typ host generation 0 network-id 1 network-cost 50",
        "a=candidate:3666163651 1 tcp 1518280447 127.0.0.1 9 typ ho"
        "st tcptype active generation 0 network-id 1 network-cost 50",
        "a=ice-ufrag:z9ly",
        "a=ice-pwd:YwvKcbdy3MxabR8bHqZ0ayZ5",
        "a=ice-options:trickle",
        "a=fingerprint:sha-256 5B:C3:D2:A8:96:31:25:F0:63:50:E6:6A:"
        "12:94:00:C0:3E:4A:40:85:40:68:47:94:01:F4:A6:C0:C7:7E:6A:6C",
        "a=setup:actpass",
        "a=mid:0",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=sendrecv",
        "a=msid:- c7551db3-e190-4266-82be-0901f5366d95",
        "a=rtcp-mux",
        "a=rtcp-rsize",
        "a=rtcp-xr:rcvr-rtt=all",
        "a=rtpmap:111 opus/48000/2",
        "a=rtcp-fb:111 transport-cc",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=rtpmap:63 red/48000/2",
        "a=fmtp:63 111/111",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:13 CN/8000",
        "a=rtpmap:110 telephone-event/48000",
        "a=rtpmap:126 telephone-event/8000",
        "a=ssrc:1479910915 cname:J6Q8fS8jTZ2VkbBn",
        "a=ssrc:1479910915 msid:- c7551db3-e190-4266-82be-0901f5366d95",
        "m=video 33971 UDP/TLS/RTP/SAVPF 96 97 98 99 100 101 35 36 37 38 102 103 10"
        "4 107 108 109 114 115 116 117 39 40 41 42 43 44 45 46 47 48 118 119 120 49",
        "c=IN IP4 127.0.0.1",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=candidate:2756367707 1 udp 2122260223 127.0.0.1 33971 typ host generation 0 network-id 1 network-cost 50",
        "a=candidate:3666163651 1 tcp 1518280447 127.0.0.1 9 typ ho"
        "st tcptype active generation 0 network-id 1 network-cost 50",
        "a=ice-ufrag:z9ly",
        "a=ice-pwd:YwvKcbdy3MxabR8bHqZ0ayZ5",
        "a=ice-options:trickle",
        "a=fingerprint:sha-256 5B:C3:D2:A8:96:31:25:F0:63:50:E6:6A:"
        "12:94:00:C0:3E:4A:40:85:40:68:47:94:01:F4:A6:C0:C7:7E:6A:6C",
        "a=setup:actpass",
        "a=mid:1",
        "a=extmap:14 urn:ietf:params:rtp-hdrext:toffset",
        "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "a=extmap:13 urn:3gpp:video-orientation",
        "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
        "a=extmap:5 http://www.webrtc.org/experiments/rtp-hdrext/playout-delay",
        "a=extmap:6 http://www.webrtc.org/experiments/rtp-hdrext/video-content-type",
        "a=extmap:7 http://www.webrtc.org/experiments/rtp-hdrext/video-timing",
        "a=extmap:8 http://www.webrtc.org/experiments/rtp-hdrext/color-space",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
        "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
        "a=recvonly",
        "a=rtcp-mux",
        "a=rtcp-rsize",
        "a=rtcp-xr:rcvr-rtt=all",
        "a=rtpmap:96 VP8/90000",
        "a=rtcp-fb:96 goog-remb",
        "a=rtcp-fb:96 transport-cc",
        "a=rtcp-fb:96 ccm fir",
        "a=rtcp-fb:96 nack",
        "a=rtcp-fb:96 nack pli",
        "a=rtpmap:97 rtx/90000",
        "a=fmtp:97 apt=96",
        "a=rtpmap:98 VP9/90000",
        "a=rtcp-fb:98 goog-remb",
        "a=rtcp-fb:98 transport-cc",
        "a=rtcp-fb:98 ccm fir",
        "a=rtcp-fb:98 nack",
        "a=rtcp-fb:98 nack pli",
        "a=fmtp:98 profile-id=0",
        "a=rtpmap:99 rtx/90000",
        "a=fmtp:99 apt=98",
        "a=rtpmap:100 VP9/90000",
        "a=rtcp-fb:100 goog-remb",
        "a=rtcp-fb:100 transport-cc",
        "a=rtcp-fb:100 ccm fir",
        "a=rtcp-fb:100 nack",
        "a=rtcp-fb:100 nack pli",
        "a=fmtp:100 profile-id=2",
        "a=rtpmap:101 rtx/90000",
        "a=fmtp:101 apt=100",
        "a=rtpmap:35 VP9/90000",
        "a=rtcp-fb:35 goog-remb",
        "a=rtcp-fb:35 transport-cc",
        "a=rtcp-fb:35 ccm fir",
        "a=rtcp-fb:35 nack",
        "a=rtcp-fb:35 nack pli",
        "a=fmtp:35 profile-id=1",
        "a=rtpmap:36 rtx/90000",
        "a=fmtp:36 apt=35",
        "a=rtpmap:37 VP9/90000",
        "a=rtcp-fb:37 goog-remb",
        "a=rtcp-fb:37 transport-cc",
        "a=rtcp-fb:37 ccm fir",
        "a=rtcp-fb:37 nack",
        "a=rtcp-fb:37 nack pli",
        "a=fmtp:37 profile-id=3",
        "a=rtpmap:38 rtx/90000",
        "a=fmtp:38 apt=37",
        "a=rtpmap:102 H264/90000",
        "a=rtcp-fb:102 goog-remb",
        "a=rtcp-fb:102 transport-cc",
        "a=rtcp-fb:102 ccm fir",
        "a=rtcp-fb:102 nack",
        "a=rtcp-fb:102 nack pli",
        "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
        "a=rtpmap:103 rtx/90000",
        "a=fmtp:103 apt=102",
        "a=rtpmap:104 H264/90000",
        "a=rtcp-fb:104 goog-remb",
        "a=rtcp-fb:104 transport-cc",
        "a=rtcp-fb:104 ccm fir",
        "a=rtcp-fb:104 nack",
        "a=rtcp-fb:104 nack pli",
        "a=fmtp:104 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f",
        "a=rtpmap:107 rtx/90000",
        "a=fmtp:107 apt=104",
        "a=rtpmap:108 H264/90000",
        "a=rtcp-fb:108 goog-remb",
        "a=rtcp-fb:108 transport-cc",
        "a=rtcp-fb:108 ccm fir",
        "a=rtcp-fb:108 nack",
        "a=rtcp-fb:108 nack pli",
        "a=fmtp:108 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        "a=rtpmap:109 rtx/90000",
        "a=fmtp:109 apt=108",
        "a=rtpmap:114 H264/90000",
        "a=rtcp-fb:114 goog-remb",
        "a=rtcp-fb:114 transport-cc",
        "a=rtcp-fb:114 ccm fir",
        "a=rtcp-fb:114 nack",
        "a=rtcp-fb:114 nack pli",
        "a=fmtp:114 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f",
        "a=rtpmap:115 rtx/90000",
        "a=fmtp:115 apt=114",
        "a=rtpmap:116 H264/90000",
        "a=rtcp-fb:116 goog-remb",
        "a=rtcp-fb:116 transport-cc",
        "a=rtcp-fb:116 ccm fir",
        "a=rtcp-fb:116 nack",
        "a=rtcp-fb:116 nack pli",
        "a=fmtp:116 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f",
        "a=rtpmap:117 rtx/90000",
        "a=fmtp:117 apt=116",
        "a=rtpmap:39 H264/90000",
        "a=rtcp-fb:39 goog-remb",
        "a=rtcp-fb:39 transport-cc",
        "a=rtcp-fb:39 ccm fir",
        "a=rtcp-fb:39 nack",
        "a=rtcp-fb:39 nack pli",
        "a=fmtp:39 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=4d001f",
        "a=rtpmap:40 rtx/90000",
        "a=fmtp:40 apt=39",
        "a=rtpmap:41 H264/90000",
        "a=rtcp-fb:41 goog-remb",
        "a=rtcp-fb:41 transport-cc",
        "a=rtcp-fb:41 ccm fir",
        "a=rtcp-fb:41 nack",
        "a=rtcp-fb:41 nack pli",
        "a=fmtp:41 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=f4001f",
        "a=rtpmap:42 rtx/90000",
        "a=fmtp:42 apt=41",
        "a=rtpmap:43 H264/90000",
        "a=rtcp-fb:43 goog-remb",
        "a=rtcp-fb:43 transport-cc",
        "a=rtcp-fb:43 ccm fir",
        "a=rtcp-fb:43 nack",
        "a=rtcp-fb:43 nack pli",
        "a=fmtp:43 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=f4001f",
        "a=rtpmap:44 rtx/90000",
        "a=fmtp:44 apt=43",
        "a=rtpmap:45 AV1/90000",
        "a=rtcp-fb:45 goog-remb",
        "a=rtcp-fb:45 transport-cc",
        "a=rtcp-fb:45 ccm fir",
        "a=rtcp-fb:45 nack",
        "a=rtcp-fb:45 nack pli",
        "a=fmtp:45 level-idx=5;profile=0;tier=0",
        "a=rtpmap:46 rtx/90000",
        "a=fmtp:46 apt=45",
        "a=rtpmap:47 AV1/90000",
        "a=rtcp-fb:47 goog-remb",
        "a=rtcp-fb:47 transport-cc",
        "a=rtcp-fb:47 ccm fir",
        "a=rtcp-fb:47 nack",
        "a=rtcp-fb:47 nack pli",
        "a=fmtp:47 level-idx=5;profile=1;tier=0",
        "a=rtpmap:48 rtx/90000",
        "a=fmtp:48 apt=47",
        "a=rtpmap:118 red/90000",
        "a=rtpmap:119 rtx/90000",
        "a=fmtp:119 apt=118",
        "a=rtpmap:120 ulpfec/90000",
        "a=rtpmap:49 flexfec-03/90000",
        "a=rtcp-fb:49 goog-remb",
        "a=rtcp-fb:49 transport-cc",
        "a=fmtp:49 repair-window=10000000",
        "",
    )
)
