"""The synced voice to a sound output device (normally a virtual audio cable a call app listens to).

`SoundOutput` is an audio sink of `avatar camera`: it takes the delayed voice as the session plays
it out (20 ms of 48 kHz mono int16 at a time, on the session clock) and hands it to PortAudio's
callback through a small buffer. The device runs on its own clock: when it plays slower than the
session clock the buffer is cut back to `latency_s` (a few samples skipped), when it plays faster
it gets silence. So the voice never drifts away from the lips by more than the buffer. The device's
rate and channel count are its own: the voice is resampled (the same audio edge as everywhere) and
copied to every channel.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any

import numpy as np

from avatar.audio import AudioNormalizer
from avatar.errors import DeviceError
from avatar.sound_devices import OUTPUT_HINT, find_device, sounddevice_module
from avatar.tracks import AUDIO_RATE_HZ

log = logging.getLogger(__name__)


class SoundOutput:
    """An output device fed from the session's voice; `write_audio()` on the event loop, `close()`."""

    def __init__(self, spec: str = "", *, latency_s: float = 0.04) -> None:
        self._sd: Any = sounddevice_module()
        self.device = find_device(spec, "output")
        self.rate_hz = self.device.default_rate_hz or AUDIO_RATE_HZ
        self.channels = min(2, self.device.channels)
        self.latency_s = latency_s
        self._resampler = AudioNormalizer(self.rate_hz) if self.rate_hz != AUDIO_RATE_HZ else None
        self._lock = threading.Lock()
        self._chunks = collections.deque[np.ndarray]()
        self._buffered = 0
        self._offset = 0  # samples of _chunks[0] already played
        self.underruns = 0
        self.cut_samples = 0
        try:
            self._stream = self._sd.OutputStream(
                device=self.device.index,
                samplerate=self.rate_hz,
                channels=self.channels,
                dtype="int16",
                latency=latency_s,
                callback=self._callback,
            )
            self._stream.start()
        except self._sd.PortAudioError as exc:
            raise DeviceError(f"cannot open the voice output {self.device.name!r}: {exc}; {OUTPUT_HINT}") from exc
        log.info(
            "voice to %r at %d Hz, %d ch (output latency %.0f ms)",
            self.device.name, self.rate_hz, self.channels, float(self._stream.latency) * 1000,
        )

    def write_audio(self, t_s: float, samples: np.ndarray) -> None:
        """Queue 48 kHz mono int16 samples that the session plays out at clock time `t_s`."""
        if self._resampler is not None:
            samples = self._resampler.push_array(samples, AUDIO_RATE_HZ)
        if samples.size == 0:
            return
        limit = round(self.latency_s * self.rate_hz) + samples.size
        with self._lock:
            self._chunks.append(np.asarray(samples, np.int16))
            self._buffered += samples.size
            while self._buffered > limit and self._chunks:  # the device is slower than our clock
                drop = min(self._buffered - limit, self._chunks[0].size - self._offset)
                self._offset += drop
                self._buffered -= drop
                self.cut_samples += drop
                if self._offset >= self._chunks[0].size:
                    self._chunks.popleft()
                    self._offset = 0

    def _callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:  # PortAudio's thread
        out = np.zeros(frames, np.int16)
        filled = 0
        with self._lock:
            while filled < frames and self._chunks:
                chunk = self._chunks[0]
                take = min(frames - filled, chunk.size - self._offset)
                out[filled : filled + take] = chunk[self._offset : self._offset + take]
                filled += take
                self._offset += take
                self._buffered -= take
                if self._offset >= chunk.size:
                    self._chunks.popleft()
                    self._offset = 0
        if filled < frames:
            self.underruns += 1
        outdata[:] = out[:, None]

    def close(self) -> None:
        try:
            self._stream.stop()
            self._stream.close()
        except self._sd.PortAudioError:
            log.debug("closing the voice output failed", exc_info=True)
