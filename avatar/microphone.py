"""The local microphone: recorded for `avatar render --record SECONDS`, or live for `avatar camera`.

sounddevice needs PortAudio (Debian's libportaudio2) and an input device. Where either is missing
(a server, a container, CI) both fail with a DeviceError that says which, before any work.

`MicrophoneTrack` is the live source: an audio track (the interface a session reads its voice
from) whose frames are 20 ms of the device's mono int16, at the device's own rate (the session's
audio edge resamples), stamped on arrival. PortAudio's thread hands each block to the event loop;
when the loop falls behind, the oldest blocks are dropped (a short gap, never a growing delay).
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import logging
import wave
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from avatar.config import SAMPLE_RATE_HZ
from avatar.errors import DeviceError
from avatar.sound_devices import find_device, sounddevice_module

log = logging.getLogger(__name__)

_BLOCK_S = 0.02
_MAX_QUEUED_BLOCKS = 25  # half a second: past that the oldest are dropped


def _sounddevice():  # type: ignore[no-untyped-def]
    try:
        return sounddevice_module()
    except DeviceError as exc:
        raise DeviceError(f"cannot use the microphone: {exc}") from exc


def default_input_device() -> str:
    """The name of the default input device; DeviceError when there is none."""
    sd = _sounddevice()
    try:
        info = sd.query_devices(kind="input")
    except sd.PortAudioError as exc:
        raise DeviceError(f"cannot use the microphone: no input device found ({exc})") from exc
    return str(info["name"])


def record_microphone(seconds: float, out_path: Path) -> Path:
    """Record `seconds` of mono 16 kHz audio from the default input device into a WAV file."""
    if not 0 < seconds <= 600:
        raise DeviceError("record between 0 and 600 seconds")
    sd = _sounddevice()
    name = default_input_device()
    log.info("recording %.1f s from %r", seconds, name)
    try:
        samples = sd.rec(round(seconds * SAMPLE_RATE_HZ), samplerate=SAMPLE_RATE_HZ, channels=1, dtype="int16")
        sd.wait()
    except sd.PortAudioError as exc:
        raise DeviceError(f"recording from {name!r} failed: {exc}") from exc
    with wave.open(str(out_path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE_HZ)
        wav.writeframes(np.ascontiguousarray(samples, dtype="<i2").tobytes())
    return out_path


class MicrophoneTrack(MediaStreamTrack):
    """The live microphone as an audio track; see the module docstring. `spec`: a device index or
    (part of) its name, "" the default input. The device is checked here; capture starts at the
    first `recv()` and ends with `stop()`."""

    kind = "audio"

    def __init__(self, spec: str = "") -> None:
        super().__init__()
        self.device = find_device(spec, "input")
        self.rate_hz = self.device.default_rate_hz
        self._sd: Any = sounddevice_module()
        self._stream: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._blocks = collections.deque[np.ndarray]()
        self._ready = asyncio.Event()
        self._pts = 0
        self.dropped_blocks = 0
        self.overflows = 0

    def _on_block(self, block: np.ndarray) -> None:  # on the event loop
        if len(self._blocks) >= _MAX_QUEUED_BLOCKS:
            self._blocks.popleft()
            self.dropped_blocks += 1
        self._blocks.append(block)
        self._ready.set()

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:  # PortAudio's thread
        if status.input_overflow:
            self.overflows += 1
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._on_block, indata[:, 0].copy())

    def _open(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            self._stream = self._sd.InputStream(
                device=self.device.index,
                samplerate=self.rate_hz,
                channels=1,
                dtype="int16",
                blocksize=round(_BLOCK_S * self.rate_hz),
                callback=self._callback,
            )
            self._stream.start()
        except self._sd.PortAudioError as exc:
            raise DeviceError(f"cannot open the microphone {self.device.name!r}: {exc}") from exc
        log.info("capturing from %r at %d Hz", self.device.name, self.rate_hz)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._stream is None:
            self._open()
        while not self._blocks:
            self._ready.clear()
            await self._ready.wait()
            if self.readyState != "live":
                raise MediaStreamError
        block = self._blocks.popleft()
        frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate_hz
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, self.rate_hz)
        self._pts += block.size
        return frame

    def stop(self) -> None:
        super().stop()
        self._ready.set()  # a waiting recv() sees the end
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.stop()
                stream.close()
            except self._sd.PortAudioError:
                log.debug("closing the microphone stream failed", exc_info=True)
