"""The live server end to end: a real server on 127.0.0.1, real aiortc clients, real media.

One server serves the whole module (loading the generator once): 256x256 at 25 fps, ICE restricted
to 127.0.0.1, a token, a cap of 3 sessions and a 1 MB upload limit.
"""

from __future__ import annotations

import asyncio
import io
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import torch
from PIL import Image

from avatar.config import AppConfig, with_overrides
from avatar.disclosure.mark import VisibleMark
from avatar.speech import synthesize_speech
from signaling.server import SignalingServer
from tests.conftest import SENTENCE
from tests.label_check import label_masks
from tests.ws_client import Client, http_request, printed_url

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKEN = "letmein"
MAX_MESSAGE = 1_000_000
REPO = Path(__file__).resolve().parent.parent


def server_config() -> AppConfig:
    return with_overrides(
        AppConfig(),
        server={
            "host": "127.0.0.1",
            "port": 0,
            "token": TOKEN,
            "max_sessions": 3,
            "stats_interval_s": 0.5,
            "drain_timeout_s": 2.0,
        },
        portrait={"max_bytes": MAX_MESSAGE},
        webrtc={"host_addresses": ["127.0.0.1"]},
        video={"width_px": 256, "height_px": 256, "fps": 25},
        warp={"head_motion": 0.0, "breathing": 0.0},  # keep the mouth region still but for speech
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> AsyncIterator[SignalingServer]:
    config = server_config()
    srv = SignalingServer(config)
    await srv.start()
    yield srv
    await srv.aclose()


@pytest.fixture(scope="module")
def talk_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 s of silence, the sentence (about 3 s), 2 s of silence; 16 kHz mono."""
    path = tmp_path_factory.mktemp("talk") / "talk.wav"
    return synthesize_speech(SENTENCE, path, lead_silence_s=1.0, tail_silence_s=2.0)


def _jpeg(rgb: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="JPEG", quality=90)
    return out.getvalue()


async def _welcomed(srv: SignalingServer) -> Client:
    client = await Client(srv.url).__aenter__()
    welcome = await client.hello(TOKEN)
    assert welcome["type"] == "welcome", welcome
    return client


async def _expect_error(client: Client, code: str) -> dict:
    message = await client.recv()
    assert message["type"] == "error", message
    assert message["code"] == code, message
    assert isinstance(message["message"], str) and message["message"]
    return message


async def _settle(srv: SignalingServer, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while (srv.active_sessions or srv.clients) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------------------------------
# Static files


async def _http_get(srv: SignalingServer, raw_path: str) -> tuple[int, dict[str, str], bytes]:
    return await http_request(srv.url, "GET", raw_path)


async def test_static_files(server: SignalingServer) -> None:
    status, headers, body = await _http_get(server, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"Talking portrait" in body and b"app.js" in body
    for path, kind in (("/app.js", "text/javascript"), ("/style.css", "text/css"), ("/index.html?x=1", "text/html")):
        status, headers, body = await _http_get(server, path)
        assert status == 200, path
        assert headers["content-type"].startswith(kind), (path, headers)
        assert int(headers["content-length"]) == len(body) > 0


@pytest.mark.parametrize(
    "path",
    [
        "/nope.html",
        "/../pyproject.toml",
        "/%2e%2e/pyproject.toml",
        "/..%2fpyproject.toml",
        "/web/../../pyproject.toml",
        "//etc/passwd",
        "/%2fetc%2fpasswd",
        "/.git/config",
        "/app.js%00.html",
        "/..\\pyproject.toml",
    ],
)
async def test_no_path_traversal(server: SignalingServer, path: str) -> None:
    status, _, body = await _http_get(server, path)
    assert status == 404, (path, body[:80])
    assert b"[project]" not in body and b"root:" not in body


# --------------------------------------------------------------------------------------------------
# The happy path


def _mouth_box(face: list[int], size: int) -> tuple[slice, slice]:
    x, y, w, h = face
    rows = slice(max(0, y + int(0.62 * h)), min(size, y + int(1.05 * h)))
    cols = slice(max(0, x + w // 4), min(size, x + 3 * w // 4))
    return rows, cols


@pytest.mark.slow
async def test_session_end_to_end(server: SignalingServer, talk_wav: Path) -> None:
    async with Client(server.url) as client:
        welcome = await client.hello(TOKEN)
        assert welcome["type"] == "welcome"
        assert (welcome["fps"], welcome["width"], welcome["height"]) == (25, 256, 256)
        assert "astronaut" in welcome["portraits"] and welcome["session"]
        assert welcome["disclosure"] == {"mark": True, "watermark": True}

        await client.send({"type": "portrait", "name": "astronaut"})
        portrait = await client.recv()
        assert portrait["type"] == "portrait" and portrait["ok"] is True
        assert (portrait["width"], portrait["height"]) == (256, 256)
        x, y, w, h = portrait["face"]
        assert 0 <= x and 0 <= y and 20 < w <= 256 and 20 < h <= 256

        answer = await client.offer(talk_wav, keep_every=1)
        assert answer["type"] == "answer"
        lines = answer["sdp"].splitlines()
        candidates = [line for line in lines if line.startswith("a=candidate")]
        assert candidates and all(" 127.0.0.1 " in line for line in candidates), candidates
        assert any("VP8/90000" in line for line in lines)
        assert server.active_sessions == 1

        await asyncio.sleep(7.0)  # the WAV lasts about 6 s
        received = client.received
        await client.send({"type": "bye"})
        assert await client.closed(5.0), "bye must close the socket"
    await _settle(server)
    assert server.active_sessions == 0 and server.clients == 0

    # Video arrives at about the configured fps.
    times = np.asarray(received.video_times)
    assert len(times) > 100, len(times)
    steady = times[(times > 1.0) & (times < times[-1] - 0.2)]
    fps = (len(steady) - 1) / (steady[-1] - steady[0])
    assert 22.0 <= fps <= 27.5, fps
    assert np.percentile(np.diff(steady), 99) < 0.25  # no long stalls

    # The mouth moves with speech and rests in silence.
    rows, cols = _mouth_box(portrait["face"], 256)
    frames = np.stack([f[rows, cols].astype(np.float32).mean(axis=2) for f in received.video_frames])
    frame_times = np.asarray(received.video_frame_times)
    rest = np.median(frames[frame_times < 0.8], axis=0) if (frame_times < 0.8).sum() >= 3 else frames[0]
    motion = np.abs(frames - rest).mean(axis=(1, 2))
    speech_motion = motion[(frame_times > 1.2) & (frame_times < 4.3)]
    tail_motion = motion[frame_times > frame_times[-1] - 1.0]
    print(f"fps {fps:.2f}; mouth motion: speech max {speech_motion.max():.2f}, tail max {tail_motion.max():.2f}")
    assert speech_motion.max() > 4.0, speech_motion.max()
    assert tail_motion.max() < 0.35 * speech_motion.max(), (tail_motion.max(), speech_motion.max())

    # The voice comes back, louder in speech than in silence.
    audio_t = np.asarray(received.audio_times)
    rms = np.asarray(received.audio_rms)
    assert len(rms) > 100
    assert rms[(audio_t > 1.0) & (audio_t < 4.8)].max() > 0.02
    assert rms[audio_t > audio_t[-1] - 0.8].max() < 0.01

    # Stats arrived with at least fps, frames, speaking; some while speaking.
    assert client.stats, "no stats"
    assert all({"fps", "frames", "speaking"} <= set(s) for s in client.stats)
    assert any(s["speaking"] for s in client.stats)
    assert client.stats[-1]["frames"] > client.stats[0]["frames"]


@pytest.mark.slow
async def test_video_only_session(server: SignalingServer) -> None:
    async with Client(server.url) as client:
        await client.hello(TOKEN)
        answer = await client.offer(None, return_audio=False)
        assert answer["type"] == "answer"
        audio_section = answer["sdp"].split("m=audio")[1].split("m=video")[0]
        assert "a=recvonly" in audio_section
        await asyncio.sleep(2.0)
        assert len(client.received.video_times) > 25
        assert not client.received.audio_times
    await _settle(server)


# --------------------------------------------------------------------------------------------------
# Disclosure: welcome says what the frames carry, and the frames carry the visible label


async def test_welcome_reports_disclosure_from_the_stage_else_the_config() -> None:
    from signaling.backend import AvatarBackend
    from signaling.messages import Disclosure, Welcome, dump
    from signaling.metrics import ServerMetrics

    config = with_overrides(server_config(), disclosure={"mark": False})
    backend = AvatarBackend(config, ServerMetrics())
    assert backend.disclosure() == Disclosure(mark=False, watermark=True)  # no generator yet: the config

    class Stage:
        summary = {"mark": True, "watermark": False}

    class Generator:
        disclosure = Stage()

    backend._generator = Generator()  # the stage that marks the frames is the one that says so
    assert backend.disclosure() == Disclosure(mark=True, watermark=False)
    welcome = Welcome("s", 25, 256, 256, ("astronaut",), disclosure=backend.disclosure())
    assert json.loads(dump(welcome))["disclosure"] == {"mark": True, "watermark": False}
    Generator.disclosure = None  # type: ignore[assignment]  # a generator loaded without a stage marks nothing
    assert backend.disclosure() == Disclosure(mark=False, watermark=False)


@pytest.mark.slow
async def test_live_frames_carry_the_visible_mark(server: SignalingServer) -> None:
    async with Client(server.url) as client:
        welcome = await client.hello(TOKEN)
        assert welcome["disclosure"] == {"mark": True, "watermark": True}
        assert (await client.offer(None, return_audio=False))["type"] == "answer"
        await asyncio.sleep(2.5)
        frames = [
            f for f, t in zip(client.received.video_frames, client.received.video_frame_times, strict=True) if t > 0.8
        ]
    await _settle(server)
    assert len(frames) > 20, len(frames)

    d = server_config().disclosure
    mark = VisibleMark(d.mark_text, d.mark_corner, 256, 256, torch.device("cpu"))
    x, y, w, h = mark.box
    plain = server.backend.default_portrait().rgb.astype(np.float32) / 255.0  # the same portrait, unmarked
    marked = mark.apply(torch.from_numpy(plain).permute(2, 0, 1)[None].clone())[0].permute(1, 2, 0).numpy()
    text, pill = label_masks(mark)  # where the label is white text, and where it is the dark pill
    for frame in frames[:: max(1, len(frames) // 10)]:
        got = frame.astype(np.float32) / 255.0
        box = (slice(y, y + h), slice(x, x + w))
        to_marked = np.abs(got[box] - marked[box]).mean()
        to_plain = np.abs(got[box] - plain[box]).mean()
        assert to_marked < 0.5 * to_plain, (to_marked, to_plain)
        grey = got[box].mean(axis=2)
        assert grey[text].mean() - grey[pill].mean() > 0.4, (grey[text].mean(), grey[pill].mean())
        assert grey[pill].mean() < plain[box].mean(axis=2)[pill].mean() - 0.15  # darker than the portrait there
        # Outside the label the frame is the portrait (the mouth may move, the corners may not).
        corner = (slice(y - 20, y - 4), slice(x, x + w))
        assert np.abs(got[corner] - plain[corner]).mean() < 0.04


# --------------------------------------------------------------------------------------------------
# Errors: each gets its code, only that session ends, a concurrent session keeps working


async def _bad_json(c: Client) -> str:
    await c.send("{not json")
    return "bad_message"


async def _unknown_type(c: Client) -> str:
    await c.send({"type": "dance"})
    return "bad_message"


async def _oversized(c: Client) -> str:
    await c.send(json.dumps({"type": "offer", "sdp": "x" * (MAX_MESSAGE + 10)}))
    return "bad_message"


async def _oversized_upload(c: Client) -> str:
    await c.send(b"\xff" * (MAX_MESSAGE + 10))
    return "bad_message"


async def _garbage_sdp(c: Client) -> str:
    await c.send({"type": "offer", "sdp": "v=0\r\nthis is not sdp\r\nm=audio x\r\n"})
    return "bad_sdp"


async def _truncated_sdp(c: Client) -> str:
    from aiortc import RTCPeerConnection
    from aiortc.mediastreams import AudioStreamTrack

    pc = RTCPeerConnection()
    pc.addTransceiver(AudioStreamTrack(), direction="sendrecv")
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    await c.send({"type": "offer", "sdp": sdp[: len(sdp) // 2]})
    return "bad_sdp"


async def _no_video_sdp(c: Client) -> str:
    from aiortc import RTCPeerConnection
    from aiortc.mediastreams import AudioStreamTrack

    pc = RTCPeerConnection()
    pc.addTransceiver(AudioStreamTrack(), direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    await pc.close()
    await c.send({"type": "offer", "sdp": pc.localDescription.sdp})
    return "bad_sdp"


async def _second_hello(c: Client) -> str:
    await c.send({"type": "hello", "token": TOKEN})
    return "bad_message"


@pytest.mark.parametrize(
    "misbehave",
    [
        _bad_json,
        _unknown_type,
        _oversized,
        _oversized_upload,
        _garbage_sdp,
        _truncated_sdp,
        _no_video_sdp,
        _second_hello,
    ],
)
async def test_protocol_error_ends_only_that_session(server: SignalingServer, misbehave) -> None:  # type: ignore[no-untyped-def]
    async with Client(server.url) as healthy:
        await healthy.hello(TOKEN)
        await healthy.offer(None)
        await asyncio.sleep(0.5)
        frames_before = len(healthy.received.video_times)

        async with Client(server.url) as bad:
            assert (await bad.hello(TOKEN))["type"] == "welcome"
            code = await misbehave(bad)
            await _expect_error(bad, code)
            assert await bad.closed(5.0), "the session must end"

        await asyncio.sleep(0.6)
        assert len(healthy.received.video_times) > frames_before + 5, "the other session must keep working"
        await healthy.send({"type": "portrait", "name": "astronaut"})  # after the offer: refused, not fatal
        await _expect_error(healthy, "bad_portrait")
        await healthy.send({"type": "bye"})
        assert await healthy.closed(5.0)
    await _settle(server)
    assert server.active_sessions == 0


@pytest.mark.parametrize(
    ("hello", "code"),
    [
        ({"type": "hello"}, "unauthorized"),
        ({"type": "hello", "token": "nope"}, "unauthorized"),
        ({"type": "offer", "sdp": "v=0"}, "bad_message"),
    ],
)
async def test_bad_hello(server: SignalingServer, hello: dict, code: str) -> None:
    async with Client(server.url) as client:
        await client.send(hello)
        await _expect_error(client, code)
        assert await client.closed(5.0)
    await _settle(server)
    assert server.active_sessions == 0


async def test_bad_portraits_keep_the_session(server: SignalingServer) -> None:
    from avatar.portrait import default_portrait

    async with Client(server.url) as client:
        await client.hello(TOKEN)
        await client.send(b"this is not an image")
        await _expect_error(client, "bad_portrait")
        gray = np.full((300, 300, 3), 128, np.uint8)
        await client.send(_jpeg(gray))  # an image without a face
        message = await _expect_error(client, "bad_portrait")
        assert "face" in message["message"].lower()
        await client.send({"type": "portrait", "name": "nobody"})
        await _expect_error(client, "bad_portrait")
        # The session goes on: a real face uploads fine.
        face = default_portrait(server.config).rgb
        await client.send(_jpeg(np.ascontiguousarray(face)))
        reply = await client.recv()
        assert reply["type"] == "portrait" and reply["ok"] is True, reply
        await client.send({"type": "bye"})
        assert await client.closed(5.0)


async def test_session_cap(server: SignalingServer) -> None:
    waiting = await _welcomed(server)  # open but not started: holds no slot
    clients = [await _welcomed(server) for _ in range(3)]
    try:
        for client in clients:
            assert (await client.offer(None))["type"] == "answer"
        assert server.active_sessions == 3
        async with Client(server.url) as extra:  # all slots taken: refused at hello
            await extra.send({"type": "hello", "token": TOKEN})
            await _expect_error(extra, "busy")
            assert await extra.closed(5.0)
        reply = await waiting.offer(None)  # welcomed earlier, but the slots filled up meanwhile
        assert (reply["type"], reply.get("code")) == ("error", "busy"), reply
        assert await waiting.closed(5.0)
        await clients.pop().close()
        await _settle_to(server, 2)
        again = await _welcomed(server)
        clients.append(again)
        assert (await again.offer(None))["type"] == "answer"
    finally:
        await waiting.close()
        for client in clients:
            await client.close()
    await _settle(server)
    assert server.active_sessions == 0


async def _settle_to(srv: SignalingServer, sessions: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while srv.active_sessions > sessions and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------------------------------
# Nothing is left behind


@pytest.mark.slow
async def test_connect_disconnect_cycles_leave_nothing(server: SignalingServer) -> None:
    async def cycle(i: int) -> None:
        client = await Client(server.url).__aenter__()
        try:
            await client.hello(TOKEN)
            if i % 2 == 0:
                await client.offer(None)
                await asyncio.sleep(0.3)
            if i % 3 == 0:
                await client.send({"type": "bye"})
        finally:
            await client.close()  # abrupt for the others: the socket just closes

    await cycle(0)  # warm up thread pools and caches
    await _settle(server)
    await asyncio.sleep(0.5)
    tasks_before = len(asyncio.all_tasks())
    threads_before = threading.active_count()
    for i in range(12):
        await cycle(i)
    await _settle(server)
    deadline = time.monotonic() + 5
    while len(asyncio.all_tasks()) > tasks_before and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert server.active_sessions == 0 and server.clients == 0
    assert len(asyncio.all_tasks()) <= tasks_before, [t.get_coro() for t in asyncio.all_tasks()]
    assert threading.active_count() <= threads_before + 4
    engine = getattr(server.backend, "_engine", None)
    if engine is not None:
        assert engine.handles == 0


# --------------------------------------------------------------------------------------------------
# The command line


@pytest.mark.slow
async def test_avatar_serve_prints_url_logs_json_and_stops_on_sigterm(tmp_path: Path) -> None:
    await asyncio.to_thread(_serve_from_the_command_line, tmp_path)


def _serve_from_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[webrtc]\nhost_addresses = ["127.0.0.1"]\n[video]\nwidth_px = 256\nheight_px = 256\n')
    command = ["serve", "--config", str(config), "--port", "0", "--host", "127.0.0.1", "--log-format", "json"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "avatar", *command],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = printed_url(proc)
        assert url and url.startswith("http://127.0.0.1:"), (
            url,
            proc.stderr.read() if proc.stderr and proc.poll() is not None else "",
        )
        import urllib.request

        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200 and b"Talking portrait" in response.read()
        session = asyncio.run(_hello_and_bye(url))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # --log-format json: every line is a JSON object; a session's lines name it and its client.
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    mine = [r for r in records if r.get("session") == session]
    assert any(r["message"] == "welcome" for r in mine), records[-5:]
    assert all(r["client"] == "127.0.0.1" for r in mine)


async def _hello_and_bye(url: str) -> str:
    async with Client(url) as client:
        welcome = await client.hello()
        assert welcome["type"] == "welcome"
        await client.send({"type": "bye"})
        assert await client.closed(5.0)
    return str(welcome["session"])


@pytest.mark.slow
async def test_shutdown_drains_open_sessions() -> None:
    config = with_overrides(server_config(), server={"token": "", "drain_timeout_s": 3.0})
    srv = SignalingServer(config)
    await srv.start()
    try:
        async with Client(srv.url) as client:
            assert (await client.hello())["type"] == "welcome"  # no token needed here
            await client.offer(None)
            await asyncio.sleep(0.5)
            assert srv.active_sessions == 1
            started = time.monotonic()
            await srv.aclose()
            assert time.monotonic() - started < 3.0
            assert await client.closed(2.0)
            assert client.ws is not None and client.ws.close_code == 1001  # going away
            assert srv.active_sessions == 0 and srv.clients == 0
    finally:
        await srv.aclose()  # idempotent


@pytest.mark.slow
async def test_peer_closing_ends_the_session_and_the_socket(server: SignalingServer) -> None:
    async with Client(server.url) as client:
        await client.hello(TOKEN)
        await client.offer(None)
        await asyncio.sleep(0.8)
        assert client.pc is not None and len(client.received.video_times) > 5
        await client.pc.close()  # the media connection goes; the socket stays open on our side
        assert await client.closed(10.0), "the server must close the socket when the peer is gone"
    await _settle(server)
    assert server.active_sessions == 0


async def test_internal_error_ends_only_that_session(server: SignalingServer, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(server.backend, "new_session", boom)
    async with Client(server.url) as client:
        await client.hello(TOKEN)
        reply = await client.offer(None)
        assert (reply["type"], reply.get("code")) == ("error", "internal"), reply
        assert await client.closed(5.0)
    monkeypatch.undo()
    async with Client(server.url) as other:
        assert (await other.hello(TOKEN))["type"] == "welcome"
        answer = await other.offer(None)
        assert answer["type"] == "answer"
    await _settle(server)
    assert server.active_sessions == 0


async def test_port_in_use_is_a_clear_error(server: SignalingServer) -> None:
    from avatar.errors import AvatarError

    port = int(server.url.rstrip("/").rsplit(":", 1)[1])
    config = with_overrides(server_config(), server={"port": port})
    other = SignalingServer(config)
    with pytest.raises(AvatarError, match="cannot listen"):
        await other.start()
