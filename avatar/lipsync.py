"""Lip-sync and blink measures of DESIGN.md section 5, from output pixels and audio.

Shared by `avatar eval`, the benchmarks and the tests, so they all mean the same thing:
- `audio_envelope`: the speech loudness (RMS) around each video frame's time;
- `mouth_opening` / `eye_darkness`: per-frame darkness of the mouth and eye regions, placed by the
  portrait's 68 landmarks (an open mouth shows the dark cavity; a closed lid hides the dark iris);
- `lagged_corr` / `lip_sync`: Pearson correlation of the mouth against the envelope at a lag in
  frames (positive: the mouth follows the sound), and the best lag (0 is the goal);
- `count_blinks`: runs of frames whose eyes are much brighter than usual.
"""

from __future__ import annotations

import numpy as np

from avatar.config import SAMPLE_RATE_HZ
from avatar.windows import frame_sample_index

MAX_LAG_FRAMES = 5


def luminance(frames: np.ndarray) -> np.ndarray:
    """[T, H, W, 3] uint8 -> [T, H, W] float32 in 0..1."""
    return (frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)) / 255.0


def landmark_box(
    points: np.ndarray, shape: tuple[int, int], grow_x: float, grow_up: float, grow_down: float
) -> tuple[slice, slice]:
    """(rows, cols) of the box around `points`, grown by fractions of its size, clipped to `shape`."""
    h, w = shape
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    bw, bh = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    xs = slice(int(max(0, np.floor(x0 - grow_x * bw))), int(min(w, np.ceil(x1 + grow_x * bw))) or 1)
    ys = slice(int(max(0, np.floor(y0 - grow_up * bh))), int(min(h, np.ceil(y1 + grow_down * bh))) or 1)
    return ys, xs


def mouth_opening(frames: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Per-frame darkness of the mouth region (outer lips, grown down for the jaw): [T]."""
    ys, xs = landmark_box(landmarks[48:60], frames.shape[1:3], 0.1, 0.2, 0.6)
    return 1.0 - luminance(frames[:, ys, xs]).mean(axis=(1, 2))


def eye_darkness(frames: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Per-frame darkness of both eye regions: [T] (drops when the eyes close)."""
    values = []
    for eye in (landmarks[36:42], landmarks[42:48]):
        ys, xs = landmark_box(eye, frames.shape[1:3], 0.15, 0.6, 0.6)
        values.append(1.0 - luminance(frames[:, ys, xs]).mean(axis=(1, 2)))
    return np.mean(values, axis=0)


def audio_envelope(audio: np.ndarray, frames: int, fps: int, window_s: float | None = None) -> np.ndarray:
    """RMS (of int16 audio scaled to [-1, 1]) over `window_s` (default one frame period) centred on
    each frame's time: [frames] float32."""
    half = round((window_s if window_s is not None else 1.0 / fps) * SAMPLE_RATE_HZ / 2)
    centres = frame_sample_index(np.arange(frames), fps)
    x = audio.astype(np.float32) / 32768.0
    padded = np.concatenate([np.zeros(half, np.float32), x, np.zeros(half + 1, np.float32)])
    cumsum = np.concatenate([[0.0], np.cumsum(padded.astype(np.float64) ** 2)])
    lo = np.clip(centres, 0, padded.size)
    hi = np.clip(centres + 2 * half, 0, padded.size)
    return np.sqrt((cumsum[hi] - cumsum[lo]) / np.maximum(hi - lo, 1)).astype(np.float32)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 3 or np.std(a) < 1e-8 or np.std(b) < 1e-8:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def lagged_corr(opening: np.ndarray, envelope: np.ndarray, lag: int) -> float:
    """corr(opening[k], envelope[k - lag]): lag > 0 means the mouth follows the sound."""
    if lag >= 0:
        return _corr(opening[lag:], envelope[: envelope.size - lag])
    return _corr(opening[: opening.size + lag], envelope[-lag:])


def lip_sync(opening: np.ndarray, envelope: np.ndarray, max_lag: int = MAX_LAG_FRAMES) -> tuple[float, int, float]:
    """(correlation at lag 0, best lag in frames, correlation at the best lag); lag > 0: mouth later."""
    best_lag, best = 0, -2.0
    for lag in range(-max_lag, max_lag + 1):
        c = lagged_corr(opening, envelope, lag)
        if c > best:
            best_lag, best = lag, c
    return lagged_corr(opening, envelope, 0), best_lag, best


def count_blinks(darkness: np.ndarray) -> int:
    """Runs of frames whose eye darkness falls well below the clip's usual level."""
    if darkness.size < 3:
        return 0
    median = float(np.median(darkness))
    mad = float(np.median(np.abs(darkness - median)))
    closed = darkness < median - max(4.0 * mad, 0.15 * median)
    return int(np.sum(closed[1:] & ~closed[:-1]) + int(closed[0]))
