"""A stand-in for the avatar media path (engine + session), for testing the signaling alone.

It keeps the real portrait loading and replaces generation with a trivial animation: the mouth
region of the portrait darkens with the loudness of the latest received audio. Tracks are paced
in real time like the real ones and the voice is echoed back when asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from avatar.config import AppConfig
from avatar.portrait import Portrait, builtin_portrait_names, default_portrait
from signaling.server import AvatarBackend, LiveSession


class _VideoTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, session: FakeSession) -> None:
        super().__init__()
        self._s = session
        self._index = 0
        self._t0: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        fps = self._s.fps
        if self._t0 is None:
            self._t0 = time.monotonic()
        due = self._t0 + self._index / fps
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        rgb = self._s.portrait.rgb.copy()
        x, y, w, h = self._s.portrait.face_box
        level = min(1.0, self._s.level * 8)
        mouth = rgb[y + int(0.7 * h) : y + int(0.9 * h), x + int(0.3 * w) : x + int(0.7 * w)]
        mouth[:] = (mouth * (1.0 - 0.9 * level)).astype(np.uint8)
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = round(self._index * 90000 / fps)
        frame.time_base = fractions.Fraction(1, 90000)
        self._index += 1
        self._s.frames = self._index
        return frame


class _AudioTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.queue: asyncio.Queue[np.ndarray] = asyncio.Queue(maxsize=50)
        self._index = 0
        self._t0: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._t0 is None:
            self._t0 = time.monotonic()
        due = self._t0 + self._index * 0.02
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        try:
            samples = self.queue.get_nowait()
        except asyncio.QueueEmpty:
            samples = np.zeros((1, 1920), dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="stereo")
        frame.sample_rate = 48000
        frame.pts = self._index * 960
        frame.time_base = fractions.Fraction(1, 48000)
        self._index += 1
        return frame


class FakeSession:
    def __init__(self, config: AppConfig, portrait: Portrait, return_audio: bool) -> None:
        self.fps = config.video.fps
        self.portrait = portrait
        self.level = 0.0
        self.frames = 0
        self.ended = asyncio.Event()
        self.video_track = _VideoTrack(self)
        self._audio_out = _AudioTrack() if return_audio else None
        self.audio_track: MediaStreamTrack | None = self._audio_out
        self._task: asyncio.Task[None] | None = None
        self._input: MediaStreamTrack | None = None

    def attach_audio(self, track: MediaStreamTrack) -> None:
        self._input = track

    async def start(self) -> None:
        if self._input is not None:
            self._task = asyncio.create_task(self._read(self._input))

    async def _read(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                samples = frame.to_ndarray()  # type: ignore[union-attr]
                self.level = float(np.sqrt(np.mean((samples.astype(np.float32) / 32768) ** 2)))
                if self._audio_out is not None and samples.shape == (1, 1920):
                    with contextlib.suppress(asyncio.QueueFull):
                        self._audio_out.queue.put_nowait(samples.astype(np.int16))
        except MediaStreamError:
            self.ended.set()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.video_track.stop()
        if self._audio_out is not None:
            self._audio_out.stop()

    def stats(self) -> dict[str, Any]:
        return {
            "fps": float(self.fps),
            "frames": self.frames,
            "speaking": self.level > 0.01,
            "latency_ms": None,
        }


class FakeBackend(AvatarBackend):
    """The real portrait loading, a trivial media path."""

    async def start(self) -> None:
        self.portrait_names = list(builtin_portrait_names())
        self._default = await asyncio.to_thread(default_portrait, self._config)

    async def aclose(self) -> None:
        pass

    def new_session(self, portrait: Portrait, session_id: str, return_audio: bool) -> LiveSession:
        return FakeSession(self._config, portrait, return_audio)  # type: ignore[return-value]
