"""Test doubles for the live media path: a real FrameGenerator whose output follows loudness.

`LoudnessGenerator` paints the whole frame one grey level that follows the RMS of the window around
its frame time (the last 40 ms before t_k plus the lookahead), so a test can read "how loud was the
audio of the frame I received" from any pixel, even after a lossy video codec. It records every
batch it is stepped with, so batching across sessions can be checked. `SessionDouble` is the
least a `signaling.peer.Peer` needs of a session, for tests of the peer alone.
"""

from __future__ import annotations

import asyncio
import fractions
import threading
import time
from collections.abc import Sequence
from typing import Any

import av
import numpy as np
import torch
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack, VideoStreamTrack
from scipy.signal import resample_poly

from avatar.generators.base import FrameGenerator, FrameStage, GeneratorStream
from avatar.portrait import Portrait
from avatar.windows import AudioWindow

REST_LEVEL = 40  # grey level of silence (and of the idle frame)
LOUD_LEVEL = 220  # grey level of loud speech


class LoudnessStream(GeneratorStream):
    def __init__(self, seed: int) -> None:
        self.frame_index = 0
        self.seed = seed


class LoudnessGenerator(FrameGenerator[LoudnessStream]):
    name = "loudness"
    stream_type = LoudnessStream

    def __init__(
        self,
        width_px: int = 64,
        height_px: int = 64,
        fps: int = 25,
        step_s: float = 0.0,
        disclosure: FrameStage | None = None,
    ) -> None:
        super().__init__(torch.device("cpu"), width_px, height_px, fps, disclosure)
        self.step_s = step_s
        self.batches: list[list[tuple[int, int]]] = []  # per step: (stream seed, frame index)
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def _new_stream(self, portrait: Portrait, seed: int) -> LoudnessStream:
        return LoudnessStream(seed)

    def level(self, window: AudioWindow) -> int:
        around = window.samples[max(0, window.past_samples - 640) :]
        rms = float(np.sqrt(np.mean(np.square(around, dtype=np.float64)))) if around.size else 0.0
        return int(min(LOUD_LEVEL, REST_LEVEL + rms * 2000.0))

    def _generate(
        self, streams: Sequence[LoudnessStream], windows: Sequence[AudioWindow]
    ) -> tuple[torch.Tensor, list[dict[str, float]]]:
        with self._lock:
            self.threads.add(threading.current_thread().name)
            self.batches.append([(s.seed, w.frame_index) for s, w in zip(streams, windows, strict=True)])
        if self.step_s:
            time.sleep(self.step_s)
        levels = [self.level(window) for window in windows]
        frames = torch.tensor(levels, dtype=torch.float32).div(255.0)[:, None, None, None]
        frames = frames.expand(-1, 3, self.height_px, self.width_px).clone()
        drives = [
            {"level": float(level), "index": float(w.frame_index)} for level, w in zip(levels, windows, strict=True)
        ]
        for stream in streams:
            stream.frame_index += 1
        return frames, drives

    def _rest_frame(self, stream: LoudnessStream) -> torch.Tensor:
        return torch.full((3, self.height_px, self.width_px), REST_LEVEL / 255.0)


def flat_portrait(width_px: int = 64, height_px: int = 64) -> Portrait:
    """A plain portrait for generators that ignore it (landmarks on a rough face layout)."""
    rgb = np.full((height_px, width_px, 3), REST_LEVEL, dtype=np.uint8)
    landmarks = np.zeros((68, 2), dtype=np.float32)
    landmarks[:, 0] = width_px / 2
    landmarks[:, 1] = height_px / 2
    return Portrait("flat", rgb, landmarks, (width_px // 4, height_px // 4, width_px // 2, height_px // 2))


def window(index: int, fps: int = 25, level: float = 0.0, past: int = 3200, ahead: int = 640) -> AudioWindow:
    """A window of constant amplitude `level` (so its RMS is `level`)."""
    samples = np.full(past + ahead, level, dtype=np.float32)
    return AudioWindow(index, samples, past, level > 0, fps)


class ArrayAudioTrack(MediaStreamTrack):
    """Plays 48 kHz mono int16 samples in real time, 20 ms per frame, like a microphone.

    `sent_at` records the clock time each frame left (for latency measurements). After the last
    sample the track ends (MediaStreamError) or, with `then_silence`, sends silence forever.
    """

    kind = "audio"

    def __init__(self, samples: np.ndarray, *, then_silence: bool = False) -> None:
        super().__init__()
        self.samples = np.asarray(samples, dtype=np.int16).reshape(-1)
        self.then_silence = then_silence
        self.index = 0
        self.start: float | None = None
        self.sent_at: list[float] = []

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.start is None:
            self.start = time.monotonic()
        due = self.start + self.index * 0.02
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        chunk = self.samples[self.index * 960 : (self.index + 1) * 960]
        if chunk.size == 0 and not self.then_silence:
            self.stop()
            raise MediaStreamError
        if chunk.size < 960:
            chunk = np.concatenate([chunk, np.zeros(960 - chunk.size, dtype=np.int16)])
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48_000
        frame.pts = self.index * 960
        frame.time_base = fractions.Fraction(1, 48_000)
        self.index += 1
        self.sent_at.append(time.monotonic())
        return frame


def wav_to_48k(path: Any) -> np.ndarray:
    """A 16-bit WAV (any rate, mono or stereo) -> 48 kHz mono int16."""
    from avatar.audio import load_audio_file

    pcm16k = load_audio_file(path)  # int16 mono 16 kHz
    up = resample_poly(pcm16k.astype(np.float32), 3, 1)
    return np.clip(up, -32768, 32767).astype(np.int16)


def tone_48k(seconds: float, amplitude: float = 0.3, hz: float = 220.0) -> np.ndarray:
    t = np.arange(round(seconds * 48_000)) / 48_000
    return (np.sin(2 * np.pi * hz * t) * amplitude * 32767).astype(np.int16)


class Recorder:
    """Consumes a received track, keeping (arrival time, frame) pairs."""

    def __init__(self, track: MediaStreamTrack) -> None:
        self.track = track
        self.frames: list[tuple[float, Any]] = []
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                frame = await self.track.recv()
            except MediaStreamError:
                return
            self.frames.append((time.monotonic(), frame))

    async def aclose(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def connect_in_process(session: Any, source: MediaStreamTrack) -> tuple[Any, Any]:
    """A client RTCPeerConnection and the server's own Peer (signaling/peer.py) on loopback,
    offer/answer in-process, without the websocket in between.

    The client sends `source` (sendrecv) and receives video; the server's Peer attaches `session`.
    Both audio receivers release packets on arrival (prefetch 0, the server's default).
    Returns (client_pc, server_peer).
    """
    from aiortc import RTCPeerConnection, RTCSessionDescription

    from avatar.config import WebRtcConfig
    from signaling.peer import Peer, set_audio_jitter_prefetch

    client = RTCPeerConnection()
    client.addTrack(source)
    client.addTransceiver("video", direction="recvonly")
    await client.setLocalDescription(await client.createOffer())

    async def use_session(return_audio: bool) -> Any:
        return session

    server = Peer(WebRtcConfig(audio_jitter_prefetch=0), "test")
    answer = await server.negotiate(client.localDescription.sdp, use_session)
    client_audio = next(t for t in client.getTransceivers() if t.kind == "audio")
    set_audio_jitter_prefetch(client_audio.receiver, 0)
    await client.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return client, server


class SessionDouble:
    """What a signaling.peer.Peer needs of a session: tracks to send, and where the received audio goes."""

    def __init__(self, return_audio: bool) -> None:
        self.video_track = VideoStreamTrack()
        self.audio_track = AudioStreamTrack() if return_audio else None
        self.attached: MediaStreamTrack | None = None

    def attach_audio(self, track: MediaStreamTrack) -> None:
        self.attached = track
