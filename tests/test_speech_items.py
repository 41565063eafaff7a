"""Speech items in a live session (`say`, `play`, `clear`), over the real server and a real aiortc
client: the mouth moves and the voice comes back while the portrait speaks, items keep their order
with their speaking/spoken events, `clear` cuts them short, a presenter session has no microphone,
and bad items are refused one by one while the session goes on."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from avatar.config import with_overrides
from signaling.server import SignalingServer
from tests.test_server import TOKEN, server_config
from tests.ws_client import Client, http_request

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

RECORDING = Path("/usr/share/sounds/alsa/Front_Center.wav")  # a human voice (Debian alsa-utils)
SAY = "Hello. I am the portrait, and I say what you type."


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> AsyncIterator[SignalingServer]:
    srv = SignalingServer(with_overrides(server_config(), tts={"max_text_chars": 200}))
    await srv.start()
    yield srv
    await srv.aclose()


class Events:
    """Every non-stats message of a client, with its arrival time, collected in the background."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.items: list[tuple[float, dict[str, Any]]] = []
        self._task = asyncio.ensure_future(self._collect())

    async def _collect(self) -> None:
        while True:
            message = await self.client.recv(timeout=60)
            self.items.append((time.monotonic() - self.client._t0, message))

    async def wait_for(self, predicate: Any, timeout: float = 20.0) -> tuple[float, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for item in self.items:
                if predicate(item[1]):
                    return item
            await asyncio.sleep(0.02)
        raise AssertionError(f"no such message in {[m for _, m in self.items]}")

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for _, m in self.items if m.get("type") == kind]

    async def aclose(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def _started(srv: SignalingServer, *, microphone: bool = True) -> tuple[Client, Events, dict[str, Any]]:
    client = await Client(srv.url).__aenter__()
    welcome = await client.hello(TOKEN)
    answer = await client.offer(None, microphone=microphone, prompt_audio=True)
    assert answer["type"] == "answer", answer
    return client, Events(client), welcome


def _mouth(frames: list[np.ndarray], reference: list[np.ndarray] | None = None) -> np.ndarray:
    """Mean distance of the mouth region (256x256 astronaut) of each frame from the median of
    `reference` (default: the frames themselves)."""

    def region(fs: list[np.ndarray]) -> np.ndarray:
        return np.stack([f[150:200, 95:160].astype(np.float32) for f in fs])

    median = np.median(region(frames if reference is None else reference), axis=0)
    return np.abs(region(frames) - median).mean(axis=(1, 2, 3))


def _between(times: list[float], values: list[Any], t0: float, t1: float) -> list[Any]:
    return [v for t, v in zip(times, values, strict=False) if t0 <= t < t1]


async def test_say_and_play_move_the_mouth_and_come_back_as_voice(server: SignalingServer) -> None:
    client, events, _ = await _started(server)
    try:
        await asyncio.sleep(1.0)  # rest frames first
        await client.send({"type": "say", "text": SAY, "id": "greeting"})
        await client.send({"type": "play", "audio": base64.b64encode(RECORDING.read_bytes()).decode()})
        t_spoken, _ = await events.wait_for(lambda m: m.get("type") == "spoken" and m["id"] != "greeting", 30)
        await asyncio.sleep(0.8)
        kinds = [(m["type"], m.get("id")) for _, m in events.items if m["type"] in ("speaking", "spoken")]
        assert kinds == [("speaking", "greeting"), ("spoken", "greeting"), ("speaking", "speech-2"),
                         ("spoken", "speech-2")], kinds  # fmt: skip
        speaking = events.of("speaking")
        assert speaking[0]["text"] == SAY and "text" not in speaking[1]
        assert all(m["interrupted"] is False for m in events.of("spoken"))
        r = client.received
        times = dict((m.get("id"), t) for t, m in events.items if m["type"] == "speaking")
        ends = dict((m.get("id"), t) for t, m in events.items if m["type"] == "spoken")
        mouth = _mouth(r.video_frames)
        rest = _between(r.video_frame_times, list(mouth), 0.3, times["greeting"] - 0.1)
        for item in ("greeting", "speech-2"):
            during = _between(r.video_frame_times, list(mouth), times[item], ends[item])
            voice = _between(r.audio_times, r.audio_rms, times[item], ends[item])
            assert np.percentile(during, 90) > 3 * max(1.0, float(np.median(rest))), (item, during, rest)
            assert np.percentile(voice, 75) > 0.02, (item, voice)
        # At rest again: the mouth looks as it did before the portrait spoke (the median of those
        # frames), far closer to it than while speaking. (Not the median of all frames: with the
        # learned shapes the mouth is open for most of them, and that median is a half-open mouth.)
        before = _between(r.video_frame_times, r.video_frames, 0.3, times["greeting"] - 0.1)
        at_rest = _mouth(r.video_frames, before)
        after = _between(r.video_frame_times, list(at_rest), t_spoken + 0.3, t_spoken + 0.8)
        spoken = _between(r.video_frame_times, list(at_rest), times["greeting"], ends["speech-2"])
        assert max(after) < 0.25 * float(np.percentile(spoken, 90)), (after, np.percentile(spoken, 90))
        quiet = _between(r.audio_times, r.audio_rms, t_spoken + 0.2, t_spoken + 0.8)
        assert quiet and max(quiet) < 0.005, quiet
    finally:
        await events.aclose()
        await client.close()


async def test_clear_cuts_the_speech_and_drops_the_queue(server: SignalingServer) -> None:
    client, events, _ = await _started(server)
    try:
        long = "This is a long sentence that will not be finished at all."
        await client.send({"type": "say", "text": long, "id": "a"})
        await client.send({"type": "say", "text": "Nor this one.", "id": "b"})
        t_speaking, _ = await events.wait_for(lambda m: m.get("type") == "speaking")
        await asyncio.sleep(0.8)
        await client.send({"type": "clear"})
        t_cut, cut = await events.wait_for(lambda m: m.get("type") == "spoken" and m["id"] == "a")
        await events.wait_for(lambda m: m.get("type") == "spoken" and m["id"] == "b")
        await asyncio.sleep(0.5)
        assert cut["interrupted"] is True
        assert events.of("spoken")[1] == {"type": "spoken", "id": "b", "interrupted": True}
        assert [m["id"] for m in events.of("speaking")] == ["a"]
        r = client.received
        loud_before = _between(r.audio_times, r.audio_rms, t_speaking, t_cut)
        assert np.percentile(loud_before, 75) > 0.02
        # The voice stops within 2 frames (80 ms, four 20 ms packets) of the cut.
        loud_after = [v for v in _between(r.audio_times, r.audio_rms, t_cut, t_cut + 0.5) if v > 0.005]
        assert len(loud_after) <= 4, loud_after
    finally:
        await events.aclose()
        await client.close()


async def test_presenter_session_without_a_microphone(server: SignalingServer) -> None:
    client, events, _ = await _started(server, microphone=False)
    try:
        # Rest frames come before any speech (within 5 s: the first frame's arrival after the
        # connection varies with the machine's load).
        for _ in range(50):
            if client.received.video_times:
                break
            await asyncio.sleep(0.1)
        assert client.received.video_times, "rest frames come before any speech"
        await client.send({"type": "say", "text": SAY})
        t0, _ = await events.wait_for(lambda m: m.get("type") == "speaking")
        t1, _ = await events.wait_for(lambda m: m.get("type") == "spoken", 30)
        r = client.received
        assert np.percentile(_between(r.audio_times, r.audio_rms, t0, t1), 75) > 0.02
        during = _between(r.video_frame_times, list(_mouth(r.video_frames)), t0, t1)
        assert max(during) > 6.0
        fps = len(_between(r.video_times, r.video_times, t0, t1)) / (t1 - t0)
        assert fps > 20, fps
    finally:
        await events.aclose()
        await client.close()


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({"type": "say", "text": "   "}, "empty"),
        ({"type": "say", "text": "x" * 201}, "too long"),
        ({"type": "say", "text": "Hello", "voice": "klingon-xx"}, "unknown voice"),
        ({"type": "play", "audio": base64.b64encode(b"not audio at all" * 50).decode()}, "cannot be decoded"),
        ({"type": "play", "audio": "%%% not base64"}, "not base64"),
        ({"type": "play", "audio": "A" * 1_333_340}, "larger than 1000000 bytes"),  # [portrait] max_bytes
    ],
)
async def test_bad_items_are_refused_one_by_one(server: SignalingServer, message: dict[str, Any], reason: str) -> None:
    client, events, _ = await _started(server)
    try:
        await client.send(message)
        _, error = await events.wait_for(lambda m: m.get("type") == "error")
        assert error["code"] == "bad_speech" and reason in error["message"], error
        await client.send({"type": "say", "text": "Still here.", "id": "ok"})
        await events.wait_for(lambda m: m.get("type") == "spoken" and m["id"] == "ok", 30)
        assert server.active_sessions >= 1
    finally:
        await events.aclose()
        await client.close()


async def test_a_failing_or_hanging_synthesiser_fails_only_its_item(tmp_path: Path) -> None:
    hang = tmp_path / "hang.sh"
    hang.write_text("#!/bin/sh\nsleep 30\n")
    fail = tmp_path / "fail.sh"
    fail.write_text("#!/bin/sh\necho 'no voice model here' >&2\nexit 3\n")
    for script in (hang, fail):
        script.chmod(0o755)
    for script, reason in ((hang, "longer than 1 s"), (fail, "exit status 3) no voice model here")):
        config = with_overrides(server_config(), tts={"command": [str(script), "{out}"], "timeout_s": 1.0})
        srv = SignalingServer(config)
        await srv.start()
        try:
            client, events, _ = await _started(srv)
            try:
                await client.send({"type": "say", "text": "Hello", "id": "x"})
                _, error = await events.wait_for(lambda m: m.get("type") == "error", 10)
                assert error == {"type": "error", "code": "bad_speech", "message": error["message"], "id": "x"}
                assert reason in error["message"], error
                await client.send({"type": "play", "audio": base64.b64encode(RECORDING.read_bytes()).decode()})
                await events.wait_for(lambda m: m.get("type") == "spoken", 10)
            finally:
                await events.aclose()
                await client.close()
        finally:
            await srv.aclose()


async def test_http_speech_endpoints_drive_a_watched_session(server: SignalingServer) -> None:
    client, events, welcome = await _started(server)
    session = welcome["session"]
    try:
        body = json.dumps({"text": "Spoken from another service."})
        auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        status, _, reply = await _post(server, f"/sessions/{session}/say", body.encode(), auth)
        assert status == 202 and json.loads(reply)["id"], reply
        await events.wait_for(lambda m: m.get("type") == "speaking" and m.get("text") == "Spoken from another service.")
        status, _, reply = await _post(server, f"/sessions/{session}/clear", b"", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and json.loads(reply) == {"cleared": 1}, reply
        status, _, reply = await _post(server, f"/sessions/{session}/play", RECORDING.read_bytes(),
                                       {"Authorization": f"Bearer {TOKEN}", "Content-Type": "audio/wav"})  # fmt: skip
        assert status == 202, reply
        await events.wait_for(lambda m: m.get("type") == "spoken" and m["interrupted"] is False, 10)
        # The token is needed (this server has one), the session must exist, bad items are 400.
        no_token = {"Content-Type": "application/json"}
        status, _, _ = await _post(server, f"/sessions/{session}/say", body.encode(), no_token)
        assert status == 403
        status, _, _ = await _post(server, "/sessions/nosuchsession/say", body.encode(), auth)
        assert status == 404
        status, _, reply = await _post(server, f"/sessions/{session}/say", b'{"text": ""}', auth)
        assert status == 400 and json.loads(reply)["error"]["code"] == "bad_speech", reply
    finally:
        await events.aclose()
        await client.close()


async def _post(
    srv: SignalingServer, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    return await http_request(srv.url, "POST", path, {**headers, "Content-Length": str(len(body))}, body)


async def test_a_flood_of_items_is_bounded_by_the_queue(server: SignalingServer) -> None:
    client, events, _ = await _started(server)
    try:
        for i in range(24):
            await client.send({"type": "say", "text": f"Item {i}.", "id": f"n{i}"})
        await events.wait_for(lambda m: m.get("type") == "error", 20)
        await asyncio.sleep(0.5)
        refused = [m for m in events.of("error") if m["code"] == "bad_speech"]
        assert refused and all("at most 16" in m["message"] for m in refused), refused
        await client.send({"type": "clear"})
        await events.wait_for(lambda m: m.get("type") == "spoken" and m.get("interrupted") is True)
        await client.send({"type": "say", "text": "Fine again.", "id": "after"})
        await events.wait_for(lambda m: m.get("type") == "spoken" and m["id"] == "after", 30)
    finally:
        await events.aclose()
        await client.close()


async def test_speech_before_the_offer_is_refused_and_the_session_goes_on(server: SignalingServer) -> None:
    async with Client(server.url) as client:
        assert (await client.hello(TOKEN))["type"] == "welcome"
        await client.send({"type": "say", "text": "Too early.", "id": "early"})
        error = await client.recv()
        assert error["code"] == "bad_speech" and error["id"] == "early" and "offer" in error["message"], error
        await client.send({"type": "clear"})  # nothing to clear: no reply, no harm
        answer = await client.offer(None)
        assert answer["type"] == "answer", answer
