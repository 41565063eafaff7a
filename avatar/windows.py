"""Sliding audio windows: one causal window per video frame.

Frame k stands at time t_k = k / fps. Its window holds `window_s` of audio before t_k and
`lookahead_s` after it, so it can be emitted once audio up to t_k + lookahead_s has arrived:
the lookahead is the only delay the chain adds. Audio before the stream began reads as silence.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from avatar.audio import Reframer
from avatar.config import SAMPLE_RATE_HZ, VadConfig, WindowConfig
from avatar.errors import AudioError
from avatar.vad import SpeechState, VoiceActivityDetector


def frame_sample_index(k: np.ndarray | int, fps: int) -> np.ndarray:
    """The 16 kHz sample index of frame k's time, round(k * 16000 / fps), in integer arithmetic
    (no ties occur for fps <= 60); works on one index or an array of them."""
    return (2 * np.asarray(k, dtype=np.int64) * SAMPLE_RATE_HZ + fps) // (2 * fps)


@dataclass(frozen=True)
class AudioWindow:
    frame_index: int
    samples: np.ndarray  # (past_samples + lookahead_samples,) float32 in [-1, 1], 16 kHz mono
    past_samples: int  # samples[past_samples] is the sample at t_k; the rest is lookahead
    speaking: bool  # voice activity at t_k + lookahead (after start/hangover smoothing)
    fps: int

    @property
    def time_s(self) -> float:
        return self.frame_index / self.fps


class AudioWindower:
    """16 kHz mono int16 stream -> exactly one AudioWindow per video frame, in order.

    Frame k stands at sample s_k = round(k * SAMPLE_RATE_HZ / fps). Its window covers samples
    [s_k - past_samples, s_k + lookahead_samples) and is emitted as soon as audio up to its end has
    arrived. `speaking` is the smoothed VAD state after the latest VAD frame lying fully inside the
    window. Only the audio and VAD states that future windows still need are kept, so memory stays
    bounded on an endless stream.
    """

    def __init__(self, window: WindowConfig, vad: VadConfig, fps: int) -> None:
        if fps <= 0:
            raise AudioError(f"fps must be positive, got {fps}")
        self.window = window
        self.fps = fps
        self._vad = VoiceActivityDetector(vad)
        self._reframer = Reframer(self._vad.frame_samples)
        self._buffer = np.zeros(0, dtype=np.int16)  # samples [_buffer_start, _end)
        self._buffer_start = 0
        self._end = 0  # received samples plus the silence added by flush()
        self._received = 0
        self._vad_states: deque[bool] = deque()  # speaking after VAD frames _vad_base, _vad_base + 1, ...
        self._vad_base = 0
        self._next_frame = 0
        self._flushed = False

    @property
    def samples_received(self) -> int:
        return self._received

    @property
    def next_frame_index(self) -> int:
        return self._next_frame

    @property
    def buffered_samples(self) -> int:
        """Audio samples held now (bounded by one window plus the last push)."""
        return int(self._buffer.size)

    @property
    def buffered_vad_states(self) -> int:
        return len(self._vad_states)

    def frame_sample_index(self, k: int) -> int:
        """The sample index of frame k's time (see the module-level frame_sample_index)."""
        return int(frame_sample_index(k, self.fps))

    def _window_end(self, k: int) -> int:
        return self.frame_sample_index(k) + self.window.lookahead_samples

    def push(self, samples: np.ndarray) -> list[AudioWindow]:
        """Append audio; return the windows that became complete, oldest first."""
        if self._flushed:
            raise AudioError("this windower was flushed; start a new one for a new stream")
        samples = np.asarray(samples)
        if samples.dtype != np.int16 or samples.ndim != 1:
            raise AudioError(f"windower takes 1-D int16 16 kHz samples, got {samples.dtype} {samples.shape}")
        self._received += samples.size
        return self._extend(samples)

    def flush(self) -> list[AudioWindow]:
        """End of stream: emit the rest of the ceil(N * fps / 16000) frames, padding with silence."""
        if self._flushed:
            return []
        self._flushed = True
        frame_count = -(-self._received * self.fps // SAMPLE_RATE_HZ)
        if self._next_frame >= frame_count:
            return []
        # Frame frame_count - 1 is not out yet, so its window ends past the audio: pad up to there.
        return self._extend(np.zeros(self._window_end(frame_count - 1) - self._end, dtype=np.int16))

    def _extend(self, samples: np.ndarray) -> list[AudioWindow]:
        if samples.size:
            self._buffer = np.concatenate([self._buffer, samples])
            self._end += samples.size
            for frame in self._reframer.push(samples):
                self._vad_states.append(self._vad.process(frame) is SpeechState.SPEAKING)
        windows: list[AudioWindow] = []
        while self._window_end(self._next_frame) <= self._end:
            windows.append(self._make_window(self._next_frame))
            self._next_frame += 1
        self._forget()
        return windows

    def _make_window(self, k: int) -> AudioWindow:
        end = self._window_end(k)
        start = end - self.window.total_samples
        samples = np.zeros(self.window.total_samples, dtype=np.float32)
        lo = max(start, self._buffer_start)  # before the stream: silence
        samples[lo - start :] = self._buffer[lo - self._buffer_start : end - self._buffer_start] / 32768.0
        return AudioWindow(
            frame_index=k,
            samples=samples,
            past_samples=self.window.past_samples,
            speaking=self._speaking_at(end),
            fps=self.fps,
        )

    def _speaking_at(self, end: int) -> bool:
        last_vad_frame = end // self._vad.frame_samples - 1
        if last_vad_frame < 0:
            return False
        return self._vad_states[last_vad_frame - self._vad_base]

    def _forget(self) -> None:
        """Drop audio and VAD states that no future window can read."""
        end = self._window_end(self._next_frame)
        keep_from = max(self._buffer_start, end - self.window.total_samples)
        if keep_from > self._buffer_start:
            self._buffer = self._buffer[keep_from - self._buffer_start :].copy()
            self._buffer_start = keep_from
        keep_vad = max(self._vad_base, end // self._vad.frame_samples - 1)
        while self._vad_base < keep_vad and self._vad_states:
            self._vad_states.popleft()
            self._vad_base += 1


CLIP_CHUNK_S = 0.02
"""A whole clip is pushed in chunks of this length, like WebRTC's 20 ms packets."""


def iter_clip_windows(samples: np.ndarray, window: WindowConfig, vad: VadConfig, fps: int) -> Iterator[AudioWindow]:
    """Every video frame's window of a whole 16 kHz mono int16 clip, made the streaming way (pushed
    in 20 ms chunks, then flushed), lazily, so a long clip never holds all its windows at once."""
    windower = AudioWindower(window, vad, fps)
    chunk = round(CLIP_CHUNK_S * SAMPLE_RATE_HZ)
    for start in range(0, len(samples), chunk):
        yield from windower.push(samples[start : start + chunk])
    yield from windower.flush()
