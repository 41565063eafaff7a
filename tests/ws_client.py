"""A Python client of the signaling protocol for tests: websockets + a real aiortc peer.

Beside it, two small tools for tests of the same server: a raw HTTP request (any method, exact
path, no client library normalising either) and reading the URL `avatar serve` prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed


async def http_request(
    http_url: str, method: str, raw_path: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on a fresh connection: (status, lower-cased headers, body)."""
    host, port = http_url.split("//")[1].split("/")[0].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = f"{method} {raw_path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}Connection: close\r\n\r\n"
    writer.write(head.encode() + body)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    response_headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, response_headers, body


def printed_url(proc: subprocess.Popen[str], timeout_s: float = 60.0) -> str | None:
    """The URL `avatar serve` prints on its first stdout line with http:// (None if it never does)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            return None
        if "http://" in line:
            return line[line.index("http://") :].split()[0]
    return None


def ws_url(http_url: str) -> str:
    return http_url.replace("http://", "ws://", 1).rstrip("/") + "/ws"


@dataclass
class Received:
    video_times: list[float] = field(default_factory=list)  # arrival, seconds since media start
    video_frames: list[np.ndarray] = field(default_factory=list)  # RGB frames (every `keep_every`-th)
    video_frame_times: list[float] = field(default_factory=list)
    audio_times: list[float] = field(default_factory=list)
    audio_rms: list[float] = field(default_factory=list)  # per received audio frame, in [0, 1]


class Client:
    """One signaling client. `async with Client(url) as c: await c.hello(); ...`."""

    def __init__(self, http_url: str, max_size: int | None = 64 * 1024 * 1024) -> None:
        self.url = ws_url(http_url)
        self.max_size = max_size
        self.ws: ClientConnection | None = None
        self.pc: RTCPeerConnection | None = None
        self.player: MediaPlayer | None = None
        self.received = Received()
        self.stats: list[dict[str, Any]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._t0 = 0.0

    async def __aenter__(self) -> Client:
        self.ws = await connect(self.url, max_size=self.max_size, open_timeout=10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        if self.pc is not None:
            await self.pc.close()
        if self.player is not None and self.player.audio is not None:
            self.player.audio.stop()
        if self.ws is not None:
            await self.ws.close()

    async def send(self, obj: dict[str, Any] | str | bytes) -> None:
        assert self.ws is not None
        await self.ws.send(json.dumps(obj) if isinstance(obj, dict) else obj)

    async def recv(self, timeout: float = 20.0, skip_stats: bool = True) -> dict[str, Any]:
        assert self.ws is not None
        while True:
            text = await asyncio.wait_for(self.ws.recv(), timeout)
            message = json.loads(text)
            if skip_stats and message.get("type") == "stats":
                self.stats.append(message)
                continue
            return message

    async def closed(self, timeout: float = 10.0) -> bool:
        """True when the server closes the socket within `timeout` (other messages are skipped)."""
        assert self.ws is not None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    text = await self.ws.recv()
                    with contextlib.suppress(ValueError):
                        message = json.loads(text)
                        if message.get("type") == "stats":
                            self.stats.append(message)
        except ConnectionClosed:
            return True
        except TimeoutError:
            return False

    async def hello(self, token: str | None = None) -> dict[str, Any]:
        await self.send({"type": "hello", **({"token": token} if token is not None else {})})
        return await self.recv()

    async def offer(
        self,
        wav: Path | None = None,
        *,
        return_audio: bool = True,
        keep_every: int = 1,
        microphone: bool = True,
        prompt_audio: bool = False,
    ) -> dict[str, Any]:
        """Make a complete offer (mic from `wav`, or silence; `microphone=False`: none, a presenter),
        send it, apply the answer. `prompt_audio`: the voice's receiver holds no packets back."""
        self.pc = pc = RTCPeerConnection()
        if not microphone:
            audio = pc.addTransceiver("audio", direction="recvonly")
        else:
            if wav is not None:
                self.player = MediaPlayer(str(wav))
                assert self.player.audio is not None
                track: MediaStreamTrack = self.player.audio
            else:
                from aiortc.mediastreams import AudioStreamTrack

                track = AudioStreamTrack()
            audio = pc.addTransceiver(track, direction="sendrecv" if return_audio else "sendonly")
        if prompt_audio:
            from signaling.peer import set_audio_jitter_prefetch

            set_audio_jitter_prefetch(audio.receiver, 0)
        pc.addTransceiver("video", direction="recvonly")

        @pc.on("track")
        def on_track(t: MediaStreamTrack) -> None:
            reader = self._read_video(t, keep_every) if t.kind == "video" else self._read_audio(t)
            self._tasks.append(asyncio.ensure_future(reader))

        await pc.setLocalDescription(await pc.createOffer())
        self._t0 = time.monotonic()
        await self.send({"type": "offer", "sdp": pc.localDescription.sdp})
        answer = await self.recv()
        if answer.get("type") == "answer":
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        return answer

    async def _read_video(self, track: MediaStreamTrack, keep_every: int) -> None:
        n = 0
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                now = time.monotonic() - self._t0
                self.received.video_times.append(now)
                if n % keep_every == 0:
                    self.received.video_frames.append(frame.to_ndarray(format="rgb24"))  # type: ignore[union-attr]
                    self.received.video_frame_times.append(now)
                n += 1

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                samples = frame.to_ndarray().astype(np.float32) / 32768.0  # type: ignore[union-attr]
                self.received.audio_times.append(time.monotonic() - self._t0)
                self.received.audio_rms.append(float(np.sqrt(np.mean(samples**2))))
