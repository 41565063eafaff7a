"""Sliding audio windows: one causal window per video frame.

Frame k stands at time t_k = k / fps. Its window holds `window_s` of audio before t_k and
`lookahead_s` after it, so it can be emitted once audio up to t_k + lookahead_s has arrived:
the lookahead is the only delay the chain adds. Audio before the stream began reads as silence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
