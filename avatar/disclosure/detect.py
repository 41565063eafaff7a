"""Finding the watermark (watermark.py) again in frames of any size, after encoders and edits.

Frames are taken in windows of about 2 s. In each window the cell residuals are averaged (the
watermark is the same in every frame, so averaging keeps it and thins out the codec's noise), then
every group's projection gives one bit by its sign. The evidence is the pilot: in a frame that does
not carry the watermark, each of the 32 pilot signs matches by chance (1 in 2), so the chance that
`a` or more match is a binomial tail; a payload whose CRC checks is a further 1 in 65536 chance.

    score = -log10(chance that an unmarked window looks this marked), best window,
            less log10(number of windows) for having looked at several

Once a window is detected, a payload whose CRC fails is decoded again by flipping its least certain
bits (the smallest projections; up to CHASE_BITS of them, most likely combination first): a codec
that took a bit or two is then undone, at a chance of a wrong payload of 2^CHASE_BITS / 65536.

A score of 4 means one unmarked video in 10,000 would reach it. `DETECTION_SCORE` is the threshold,
chosen from the measurements in bench/watermark.py (marked clips through the transforms against a
negative set of real images and unmarked renders). A single still image is one window of one frame.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from avatar.disclosure.payload import CRC_BITS, PAYLOAD_BITS, Payload
from avatar.disclosure.watermark import PILOT_BITS, cell_residuals, layout, luma

DETECTION_SCORE = 4.0
CHASE_BITS = 5
WINDOW_S = 2.0
_BATCH = 16  # frames turned into residuals at a time


def _chance_at_least(matches: int, n: int) -> float:
    """P(X >= matches) for X ~ Binomial(n, 1/2)."""
    return sum(math.comb(n, k) for k in range(matches, n + 1)) / 2.0**n


@dataclass(frozen=True)
class WindowEvidence:
    """What one window of frames says."""

    frames: int
    pilot_matches: int
    payload: Payload | None
    score: float


@dataclass(frozen=True)
class WatermarkResult:
    detected: bool
    score: float
    payload: Payload | None
    frames: int
    windows: list[WindowEvidence] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        best = max(self.windows, key=lambda w: w.score, default=None)
        return {
            "detected": self.detected,
            "score": round(self.score, 2),
            "threshold": DETECTION_SCORE,
            "payload": self.payload.as_dict() if self.payload is not None else None,
            "frames": self.frames,
            "pilot_matches": f"{best.pilot_matches}/{PILOT_BITS}" if best is not None else None,
        }


def evidence(residuals: np.ndarray) -> tuple[int, Payload | None, float]:
    """(pilot matches, payload or None, score) of the mean of some frames' cell residuals."""
    lay = layout()
    projection = lay.chips @ residuals
    signs = (projection > 0).astype(np.uint8)
    matches = int((signs[PAYLOAD_BITS:] == lay.pilot).sum())
    payload = Payload.from_bits(signs[:PAYLOAD_BITS])
    chance = _chance_at_least(matches, PILOT_BITS)
    if payload is not None:
        chance *= 2.0**-CRC_BITS
    return matches, payload, -math.log10(max(chance, 1e-300))


def decode_payload(residuals: np.ndarray) -> Payload | None:
    """The payload of the mean of some frames' residuals, repairing up to CHASE_BITS uncertain bits."""
    projection = layout().chips[:PAYLOAD_BITS] @ residuals
    signs = (projection > 0).astype(np.uint8)
    payload = Payload.from_bits(signs)
    if payload is not None:
        return payload
    doubtful = np.argsort(np.abs(projection))[:CHASE_BITS]
    masks = np.array([[(m >> i) & 1 for i in range(CHASE_BITS)] for m in range(1, 2**CHASE_BITS)], dtype=bool)
    costs = (masks * np.abs(projection[doubtful])).sum(axis=1)
    for mask in masks[np.argsort(costs, kind="stable")]:
        candidate = signs.copy()
        candidate[doubtful[mask]] ^= 1
        payload = Payload.from_bits(candidate)
        if payload is not None:
            return payload
    return None


class WatermarkDetector:
    """Accumulates frames (RGB uint8, any size) and says whether they carry the watermark."""

    def __init__(self, fps: float = 25.0) -> None:
        self.window_frames = max(1, round(WINDOW_S * fps))
        self._sums: list[np.ndarray] = []  # per window: the sum of its frames' residuals
        self._counts: list[int] = []
        self._pending: list[np.ndarray] = []
        self.frames = 0

    def add(self, rgb: np.ndarray) -> None:
        """One frame, (H, W, 3) uint8."""
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"a frame must be (H, W, 3), got {rgb.shape}")
        self._pending.append(rgb)
        if len(self._pending) >= _BATCH:
            self._flush()

    def add_all(self, frames: Iterable[np.ndarray]) -> None:
        for rgb in frames:
            self.add(rgb)

    def _flush(self) -> None:
        # Frames of one batch may differ in size (a stream that changed resolution): group them.
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, rgb in enumerate(self._pending):
            by_shape.setdefault(rgb.shape, []).append(i)
        residuals: list[np.ndarray] = [np.empty(0)] * len(self._pending)
        for indices in by_shape.values():
            batch = torch.from_numpy(np.stack([self._pending[i] for i in indices])).permute(0, 3, 1, 2).float()
            for i, row in zip(indices, cell_residuals(luma(batch)).numpy(), strict=True):
                residuals[i] = row.astype(np.float64)
        self._pending = []
        for row in residuals:
            if not self._counts or self._counts[-1] >= self.window_frames:
                self._sums.append(np.zeros_like(row))
                self._counts.append(0)
            self._sums[-1] += row
            self._counts[-1] += 1
            self.frames += 1

    def result(self) -> WatermarkResult:
        self._flush()
        if not self._counts:
            return WatermarkResult(detected=False, score=0.0, payload=None, frames=0)
        windows = []
        for total, count in zip(self._sums, self._counts, strict=True):
            matches, payload, score = evidence(total / count)
            windows.append(WindowEvidence(count, matches, payload, score))
        looked = math.log10(len(windows))
        score = max(0.0, max(w.score for w in windows) - looked)
        detected = score >= DETECTION_SCORE
        payload = None
        if detected:
            best = max(range(len(windows)), key=lambda i: windows[i].score)
            payload = windows[best].payload or decode_payload(self._sums[best] / self._counts[best])
            if payload is None and len(windows) > 1:  # the whole clip, averaged, may still decode
                payload = decode_payload(np.sum(self._sums, axis=0) / self.frames)
        return WatermarkResult(detected, score, payload, self.frames, windows)
