"""The audio edge: every input becomes mono int16 at SAMPLE_RATE_HZ, then exact-size frames.

`AudioNormalizer` takes av.AudioFrame objects (aiortc delivers s16 packed stereo 48 kHz, 960
samples per frame) or numpy arrays, and sends both through one av.AudioResampler per stream, so
live and offline audio are converted by the same code. `load_audio_file` decodes a whole file the
same way. `Reframer` cuts the resulting stream into frames of exactly N samples (the VAD needs 10,
20 or 30 ms).
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from avatar.config import SAMPLE_RATE_HZ
from avatar.errors import AudioError

_EMPTY = np.zeros(0, dtype=np.int16)


def _concat(frames: list[av.AudioFrame]) -> np.ndarray:
    """Resampled s16 mono frames -> one 1-D int16 array (possibly empty)."""
    if not frames:
        return _EMPTY.copy()
    return np.concatenate([frame.to_ndarray().reshape(-1) for frame in frames]).astype(np.int16, copy=False)


class AudioNormalizer:
    """Any audio frames or arrays -> mono int16 at 16 kHz, one resampler per stream.

    The resampler keeps a few samples of filter delay: its first output is shorter than the input
    and `flush()` returns the rest. When the input format, layout or rate changes mid-stream, the
    old resampler is drained and a new one takes over, so no sample is lost and nothing raises.
    """

    def __init__(self, rate_hz: int = SAMPLE_RATE_HZ) -> None:
        self.rate_hz = rate_hz  # the chain's 16 kHz; the delayed voice uses this at 48 kHz
        self._resampler: av.AudioResampler | None = None
        self._input_key: tuple[str, str, int] | None = None

    def push_frame(self, frame: av.AudioFrame) -> np.ndarray:
        """Convert one frame; returns int16 (n,), possibly empty (the resampler buffers a little)."""
        key = (frame.format.name, frame.layout.name, int(frame.sample_rate))
        drained = _EMPTY
        if key != self._input_key:
            drained = self.flush()
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=self.rate_hz)
            self._input_key = key
        assert self._resampler is not None
        try:
            out = _concat(self._resampler.resample(frame))
        except (av.error.FFmpegError, ValueError) as exc:
            raise AudioError(f"cannot resample audio frame ({key[0]}, {key[1]}, {key[2]} Hz): {exc}") from exc
        return np.concatenate([drained, out]) if drained.size else out

    def push_array(self, samples: np.ndarray, sample_rate_hz: int) -> np.ndarray:
        """Convert int16 or float (in [-1, 1]) samples of shape (n,) or (n, channels)."""
        samples = np.asarray(samples)
        if samples.ndim == 1:
            samples = samples[:, None]
        if samples.ndim != 2 or samples.shape[1] < 1:
            raise AudioError(f"audio must have shape (n,) or (n, channels), got {samples.shape}")
        if sample_rate_hz <= 0:
            raise AudioError(f"sample rate must be positive, got {sample_rate_hz}")
        if samples.shape[0] == 0:
            return _EMPTY.copy()
        if samples.dtype == np.int16:
            fmt = "s16"
        elif np.issubdtype(samples.dtype, np.floating):
            fmt = "flt"
            samples = np.clip(samples, -1.0, 1.0).astype(np.float32)
        else:
            raise AudioError(f"audio samples must be int16 or float, got {samples.dtype}")
        channels = samples.shape[1]
        # Packed formats take one row of interleaved samples: (1, n * channels).
        packed = np.ascontiguousarray(samples).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(packed, format=fmt, layout=f"{channels}c")
        frame.sample_rate = sample_rate_hz
        return self.push_frame(frame)

    def flush(self) -> np.ndarray:
        """Drain the resampler's delayed samples; the next push starts a fresh resampler."""
        if self._resampler is None:
            return _EMPTY.copy()
        resampler, self._resampler, self._input_key = self._resampler, None, None
        return _concat(resampler.resample(None))


def load_audio_file(path: Path | str, rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Decode the first audio stream of any file av can open to mono int16 at `rate_hz` (16 kHz)."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    normalizer = AudioNormalizer(rate_hz)
    chunks: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(f"{path}: no audio stream in this file")
            stream = container.streams.audio[0]
            for frame in container.decode(stream):
                chunks.append(normalizer.push_frame(frame))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise AudioError(f"{path}: cannot decode audio: {exc}") from exc
    chunks.append(normalizer.flush())
    return np.concatenate(chunks)


class Reframer:
    """Cut a stream of samples into frames of exactly `frame_samples`, keeping the remainder."""

    def __init__(self, frame_samples: int) -> None:
        if frame_samples <= 0:
            raise AudioError(f"frame size must be positive, got {frame_samples}")
        self.frame_samples = frame_samples
        self._pending = _EMPTY.copy()

    @property
    def pending_samples(self) -> int:
        return int(self._pending.size)

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        """Append `samples` (1-D) and return every complete frame, oldest first."""
        samples = np.asarray(samples)
        if samples.ndim != 1:
            raise AudioError(f"reframer takes 1-D samples, got shape {samples.shape}")
        if self._pending.size == 0 and self._pending.dtype != samples.dtype:
            self._pending = self._pending.astype(samples.dtype)
        data = np.concatenate([self._pending, samples]) if self._pending.size else samples
        count = data.size // self.frame_samples
        cut = count * self.frame_samples
        frames = [data[i : i + self.frame_samples].copy() for i in range(0, cut, self.frame_samples)]
        self._pending = data[cut:].copy()
        return frames

    def flush(self, pad: bool = True) -> list[np.ndarray]:
        """Return the remainder as a last frame: zero-padded to full size, or short if `pad` is False."""
        rest, self._pending = self._pending, self._pending[:0].copy()
        if rest.size == 0:
            return []
        if pad:
            rest = np.concatenate([rest, np.zeros(self.frame_samples - rest.size, dtype=rest.dtype)])
        return [rest]
