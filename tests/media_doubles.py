"""Test doubles for the live media path: a real FrameGenerator whose output follows loudness.

`LoudnessGenerator` paints the whole frame one grey level that follows the RMS of the window around
its frame time (the last 40 ms before t_k plus the lookahead), so a test can read "how loud was the
audio of the frame I received" from any pixel, even after a lossy video codec. It records every
batch it is stepped with, so batching across sessions can be checked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import torch

from avatar.generators.base import FrameGenerator, GeneratedFrame, GeneratorStream
from avatar.portrait import Portrait
from avatar.windows import AudioWindow

REST_LEVEL = 40  # grey level of silence (and of the idle frame)
LOUD_LEVEL = 220  # grey level of loud speech


class LoudnessStream(GeneratorStream):
    def __init__(self, seed: int) -> None:
        self.frame_index = 0
        self.seed = seed


class LoudnessGenerator(FrameGenerator):
    name = "loudness"

    def __init__(self, width_px: int = 64, height_px: int = 64, fps: int = 25, step_s: float = 0.0) -> None:
        super().__init__(torch.device("cpu"), width_px, height_px, fps)
        self.step_s = step_s
        self.batches: list[list[tuple[int, int]]] = []  # per step: (stream seed, frame index)
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def new_stream(self, portrait: Portrait, seed: int) -> LoudnessStream:
        return LoudnessStream(seed)

    def level(self, window: AudioWindow) -> int:
        around = window.samples[max(0, window.past_samples - 640) :]
        rms = float(np.sqrt(np.mean(np.square(around, dtype=np.float64)))) if around.size else 0.0
        return int(min(LOUD_LEVEL, REST_LEVEL + rms * 2000.0))

    def step(self, streams: Sequence[GeneratorStream], windows: Sequence[AudioWindow]) -> list[GeneratedFrame]:
        with self._lock:
            self.threads.add(threading.current_thread().name)
            self.batches.append([(s.seed, w.frame_index) for s, w in zip(streams, windows, strict=True)])  # type: ignore[attr-defined]
        if self.step_s:
            time.sleep(self.step_s)
        frames = []
        for stream, window in zip(streams, windows, strict=True):
            level = self.level(window)
            rgb = np.full((self.height_px, self.width_px, 3), level, dtype=np.uint8)
            frames.append(GeneratedFrame(rgb, {"level": float(level), "index": float(window.frame_index)}))
            stream.frame_index += 1
        return frames

    def idle_frame(self, stream: GeneratorStream) -> np.ndarray:
        return np.full((self.height_px, self.width_px, 3), REST_LEVEL, dtype=np.uint8)


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
