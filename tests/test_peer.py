"""signaling.peer and signaling.ice with real aiortc peers in one process (no server)."""

from __future__ import annotations

import aioice.ice
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack
from aiortc.rtp import RtpPacket

from avatar.config import WebRtcConfig
from avatar.errors import ConfigError
from signaling.ice import host_addresses, install_host_addresses, installed_host_addresses, rtc_configuration
from signaling.messages import ProtocolError
from signaling.peer import Peer, PromptAudioJitterBuffer
from tests.media_doubles import SessionDouble


async def _client_offer(
    audio_direction: str = "sendrecv", video: str | None = "recvonly"
) -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection()
    pc.addTransceiver(AudioStreamTrack(), direction=audio_direction)
    if video is not None:
        pc.addTransceiver("video", direction=video)
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


def _video_codecs(sdp: str) -> list[str]:
    section = sdp.split("m=video")[1]
    return [line.split()[1].split("/")[0] for line in section.splitlines() if line.startswith("a=rtpmap:")]


@pytest.mark.parametrize(("codec", "prefetch"), [("vp8", 0), ("h264", 3)])
async def test_answer_prefers_codec_and_owns_the_jitter_buffer(codec: str, prefetch: int) -> None:
    made: list[SessionDouble] = []

    async def make(return_audio: bool) -> SessionDouble:
        made.append(SessionDouble(return_audio))
        return made[-1]

    with host_addresses(["127.0.0.1"]):
        client, offer = await _client_offer()
        peer = Peer(WebRtcConfig(video_codec=codec, audio_jitter_prefetch=prefetch), "t")
        try:
            answer = await peer.negotiate(offer, make)
            assert peer.return_audio is True and made[0].attached is not None
            assert _video_codecs(answer)[0] == codec.upper()
            assert "a=sendrecv" in answer.split("m=video")[0]  # the voice comes back
            assert "a=sendonly" in answer.split("m=video")[1]
            candidates = [line for line in answer.splitlines() if line.startswith("a=candidate")]
            assert candidates and all(" 127.0.0.1 " in line for line in candidates)
            audio = next(t for t in peer._pc.getTransceivers() if t.kind == "audio")  # type: ignore[union-attr]
            buffer = getattr(audio.receiver, "_RTCRtpReceiver__jitter_buffer")  # noqa: B009
            assert buffer._prefetch == prefetch
            assert isinstance(buffer, PromptAudioJitterBuffer) == (prefetch == 0)
            await client.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        finally:
            await peer.aclose()
            await client.close()
    assert peer.connection_state == "closed" and peer.failed.is_set()
    await peer.aclose()  # idempotent


async def test_sendonly_audio_means_video_only() -> None:
    async def make(return_audio: bool) -> SessionDouble:
        assert return_audio is False
        return SessionDouble(return_audio)

    with host_addresses(["127.0.0.1"]):
        client, offer = await _client_offer("sendonly")
        peer = Peer(WebRtcConfig(), "t")
        try:
            answer = await peer.negotiate(offer, make)
            assert "a=recvonly" in answer.split("m=video")[0]
        finally:
            await peer.aclose()
            await client.close()


async def _offer_variants() -> list[str]:
    variants = ["", "garbage", "v=0\r\nm=audio x y z\r\n", "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"]
    for audio, video in (("sendrecv", None), ("inactive", "recvonly"), ("sendrecv", "sendrecv")):
        pc, sdp = await _client_offer(audio, video)
        await pc.close()
        variants.append(sdp)
    pc, sdp = await _client_offer()
    await pc.close()
    variants += [
        sdp[: len(sdp) // 3],
        sdp.replace("a=fingerprint", "a=fingerprunt"),
        sdp.replace("VP8", "XV8").replace("H264", "X264"),
    ]
    variants.append(sdp.replace("a=ice-ufrag", "a=ice-xx"))
    return variants


async def test_bad_offers_are_bad_sdp() -> None:
    async def make(return_audio: bool) -> SessionDouble:
        return SessionDouble(return_audio)

    with host_addresses(["127.0.0.1"]):
        for sdp in await _offer_variants():
            peer = Peer(WebRtcConfig(), "t")
            with pytest.raises(ProtocolError) as info:
                await peer.negotiate(sdp, make)
            assert info.value.code == "bad_sdp", sdp[:200]
            assert peer.connection_state in ("closed", "new")
            await peer.aclose()


def test_host_address_patch_is_idempotent_and_restores() -> None:
    before = install_host_addresses([])  # from aioice's own discovery (whatever ran before)
    original = aioice.ice.get_host_addresses
    with host_addresses(["127.0.0.1", "::1", "127.0.0.1"]):
        assert installed_host_addresses() == ("127.0.0.1", "::1")
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == ["127.0.0.1"]
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1", "::1"]
        patched = aioice.ice.get_host_addresses
        assert install_host_addresses(["127.0.0.1", "::1"]) == ("127.0.0.1", "::1")
        assert aioice.ice.get_host_addresses is patched  # same list: nothing changes
    assert aioice.ice.get_host_addresses is original
    with host_addresses([]):
        assert aioice.ice.get_host_addresses is original
    with pytest.raises(ConfigError):
        install_host_addresses(["localhost"])
    install_host_addresses(before)


def test_rtc_configuration() -> None:
    assert rtc_configuration(WebRtcConfig()).iceServers == []  # not None: aiortc would add a public STUN
    config = rtc_configuration(
        WebRtcConfig(
            stun_urls=("stun:a.example:3478",), turn_urls=("turn:b.example:3478",), turn_username="u", turn_password="p"
        )
    )
    stun, turn = config.iceServers or []
    assert stun.urls == ["stun:a.example:3478"]
    assert (turn.urls, turn.username, turn.credential) == (["turn:b.example:3478"], "u", "p")


def _packet(seq: int) -> RtpPacket:
    packet = RtpPacket(payload_type=96, sequence_number=seq % 65536, timestamp=(seq * 960) % 2**32)
    packet._data = seq.to_bytes(4, "big")  # type: ignore[attr-defined]
    return packet


def _feed(buffer: PromptAudioJitterBuffer, seqs: list[int]) -> list[int | None]:
    out: list[int | None] = []
    for seq in seqs:
        _, frame = buffer.add(_packet(seq))
        out.append(None if frame is None else int.from_bytes(frame.data, "big"))
    return out


def test_prompt_audio_jitter_buffer_releases_on_arrival() -> None:
    buffer = PromptAudioJitterBuffer()
    start = 65530  # across the 16-bit wrap
    assert _feed(buffer, list(range(start, start + 12))) == list(range(start, start + 12))


def test_prompt_audio_jitter_buffer_waits_briefly_for_a_late_packet() -> None:
    buffer = PromptAudioJitterBuffer(max_hole=2)
    assert _feed(buffer, [10, 11]) == [10, 11]
    assert _feed(buffer, [13, 12]) == [None, 12]  # 12 late by one packet: nothing lost
    assert _feed(buffer, [14]) == [13]  # one packet behind now, catching up on the next hole
    assert buffer.skipped == 0


def test_prompt_audio_jitter_buffer_skips_a_lost_packet() -> None:
    buffer = PromptAudioJitterBuffer(max_hole=2)
    assert _feed(buffer, [1, 2]) == [1, 2]
    assert _feed(buffer, [4, 5, 6]) == [None, None, 4]  # 3 lost: skipped once 3 packets wait
    assert buffer.skipped == 1
    assert _feed(buffer, [3]) == [None]  # too late: dropped
    assert _feed(buffer, [7]) == [5]
