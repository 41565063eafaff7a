"""Expression from the voice: pitch and energy -> brows, widened eyes, nods, a slight smile.

Causal and batched across streams, like the mouth drive (avatar/generators/warp_drive.py): frame k
reads only its own audio window (16 kHz, t_k at index `past`, the lookahead after it), and each
stream's running pitch statistics live in an `ExpressionState`.

- Pitch: a YIN-style tracker (cumulative mean normalised difference) on the 40 ms that end where the
  window's audio ends, 70-400 Hz, with a voiced/unvoiced decision from the difference's depth and the
  loudness against the stream's speech level.
- Every voice has its own register: pitch is read in semitones against the stream's running
  baseline (a slow mean of its voiced pitch) and range (a slow mean of the deviation), so a deep and
  a high voice raise their brows on their own accents.
- brows: a pitch accent (pitch well above the baseline, counted in the stream's range) or a rise;
- widen: the brows' share when the accent is also loud;
- nod: a short dip of the head when a stressed syllable begins (loud against the level and accented);
- smile: a lively voice (a wide pitch range in use) smiles slightly; a low, loud, flat stretch
  frowns slightly. A monotone has no accents and no range: the face stays calm, as in silence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from avatar.config import SAMPLE_RATE_HZ

_SEGMENT_S = 0.04  # the pitch tracker's analysis window
_AHEAD_S = 0.04  # it ends here after t_k, as far as the default lookahead reaches
_F0_MIN_HZ, _F0_MAX_HZ = 70.0, 400.0
_VOICED_DEPTH = 0.2  # a voiced frame's normalised difference dips below this
_BASELINE_S = 2.0  # the pitch baseline follows voiced frames this slowly
_RANGE_S = 3.0  # and the range (mean absolute deviation, semitones)
_RANGE_MIN_ST = 1.0  # a monotone's range is held at this, so its small wobbles are not accents
_ACCENT_FROM = 1.0  # an accent starts this many ranges above the baseline ...
_ACCENT_SPAN = 1.5  # ... and is full this many ranges further
_RISE_ST_PER_S = 25.0  # a rise this fast (semitones per second) raises the brows fully
_BROW_UP_S, _BROW_DOWN_S = 0.08, 0.35
_NOD_S = 0.3  # length of one nod
_NOD_GAP_S = 0.35  # least time between nod starts
_SMILE_S = 1.5  # the tone's smile follows this slowly
_LIVELY_FROM_ST, _LIVELY_SPAN_ST = 1.1, 0.8  # a range in use above this smiles, fully this much further
_EPS = 1e-10


@dataclass
class ExpressionState:
    """Causal state of one stream's expression drive."""

    baseline_st: float = 0.0  # semitones above 100 Hz; 0 until the first voiced frame
    range_st: float = _RANGE_MIN_ST
    voiced_frames: int = 0
    last_st: float | None = None
    loud_before_db: float = -120.0
    brows: float = 0.0
    widen: float = 0.0
    smile: float = 0.0
    nod_age_s: float = math.inf  # time since the last nod began


@dataclass(frozen=True)
class Expression:
    """Expression values of one frame of one stream."""

    brows: float  # 0 .. 1
    widen: float  # 0 .. 1
    nod: float  # 0 .. 1, the head dips by this share of its nod
    smile: float  # -1 (frown) .. 1 (smile), kept small by its gain
    f0_hz: float  # 0 when unvoiced


def _alpha(dt: float, tau: float) -> float:
    return 1.0 - math.exp(-dt / max(tau, 1e-6))


def track_pitch(segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(F0 in Hz, the normalised difference's depth at it), each (B,), from segments (B, W) at 16 kHz.

    The depth is 0 for a perfectly periodic segment and about 1 for noise."""
    x = segments.astype(np.float64) - segments.mean(axis=1, keepdims=True)
    n = x.shape[1]
    tau_max = int(SAMPLE_RATE_HZ / _F0_MIN_HZ)
    tau_min = int(SAMPLE_RATE_HZ / _F0_MAX_HZ)
    w = n - tau_max  # integration length of the difference function
    if w < tau_max // 2:
        raise ValueError("segment too short for the pitch range")
    size = 1 << int(math.ceil(math.log2(n + w)))
    spectrum_x = np.fft.rfft(x, size, axis=1)
    spectrum_head = np.fft.rfft(x[:, :w], size, axis=1)
    # r(tau) = sum_j x_j x_{j+tau} over j < w
    r = np.fft.irfft(np.conj(spectrum_head) * spectrum_x, size, axis=1)[:, : tau_max + 1]
    energy = np.concatenate([np.zeros((x.shape[0], 1)), np.cumsum(x * x, axis=1)], axis=1)
    e_head = energy[:, w]  # sum over j < w of x_j^2
    taus = np.arange(tau_max + 1)
    e_shift = energy[:, taus + w] - energy[:, taus]  # sum over j < w of x_{j+tau}^2
    d = e_head[:, None] + e_shift - 2.0 * r  # (B, tau_max + 1)
    d[:, 0] = 0.0
    cumulative = np.cumsum(d[:, 1:], axis=1) / np.arange(1, tau_max + 1)
    cmnd = np.ones_like(d)
    cmnd[:, 1:] = d[:, 1:] / np.maximum(cumulative, _EPS)
    search = cmnd[:, tau_min : tau_max + 1]
    # The first dip under the threshold (YIN's rule against octave errors), else the deepest.
    under = search < _VOICED_DEPTH
    first = np.where(under.any(axis=1), under.argmax(axis=1), search.argmin(axis=1))
    # Walk down to the local minimum after the first crossing.
    rows = np.arange(len(search))
    for _ in range(search.shape[1]):
        nxt = np.minimum(first + 1, search.shape[1] - 1)
        better = search[rows, nxt] < search[rows, first]
        if not better.any():
            break
        first = np.where(better, nxt, first)
    tau = first + tau_min
    # Parabolic refinement of the lag.
    lo, hi = np.clip(tau - 1, 1, tau_max), np.clip(tau + 1, 1, tau_max)
    a, b, c = cmnd[rows, lo], cmnd[rows, tau], cmnd[rows, hi]
    denom = a - 2.0 * b + c
    shift = np.where(np.abs(denom) > _EPS, 0.5 * (a - c) / np.where(np.abs(denom) > _EPS, denom, 1.0), 0.0)
    lag = tau + np.clip(shift, -1.0, 1.0)
    return SAMPLE_RATE_HZ / lag, cmnd[rows, tau]


class ExpressionDriver:
    """Turns batches of audio windows into expression values, advancing each stream's state."""

    def __init__(self, fps: int, strength: float = 1.0) -> None:
        self.dt = 1.0 / fps
        self.strength = strength
        self.a_baseline = _alpha(self.dt, _BASELINE_S)
        self.a_range = _alpha(self.dt, _RANGE_S)
        self.a_brow_up = _alpha(self.dt, _BROW_UP_S)
        self.a_brow_down = _alpha(self.dt, _BROW_DOWN_S)
        self.a_smile = _alpha(self.dt, _SMILE_S)

    def _segments(self, samples: np.ndarray, past: int) -> np.ndarray:
        n = round(_SEGMENT_S * SAMPLE_RATE_HZ) + int(SAMPLE_RATE_HZ / _F0_MIN_HZ)  # 40 ms plus the longest lag
        end = min(samples.shape[1], past + round(_AHEAD_S * SAMPLE_RATE_HZ))
        start = end - n
        if start >= 0:
            return samples[:, start:end]
        out = np.zeros((samples.shape[0], n), dtype=samples.dtype)
        out[:, -end:] = samples[:, :end]
        return out

    def step(
        self,
        states: Sequence[ExpressionState],
        samples: np.ndarray,
        past: int,
        speaking: np.ndarray,
        loudness_db: np.ndarray,
        level_db: np.ndarray,
    ) -> list[Expression]:
        """Advance `states` by one frame from their windows `samples` (B, T); one Expression each.

        `loudness_db` and `level_db` (B,): each window's loudness and its stream's speech level, as
        the mouth drive measures them (avatar.generators.warp_drive), so face and mouth agree on
        what is loud."""
        f0, depth = track_pitch(self._segments(samples, past))
        loud = np.asarray(loudness_db, dtype=np.float64)
        level = np.asarray(level_db, dtype=np.float64)
        out = []
        for i, s in enumerate(states):
            audible = loud[i] > -58.0
            voiced = bool(audible and speaking[i] and depth[i] < _VOICED_DEPTH and loud[i] > level[i] - 20.0)
            accent = rise = 0.0
            if voiced:
                st = 12.0 * math.log2(float(f0[i]) / 100.0)
                if s.voiced_frames == 0:
                    s.baseline_st = st
                deviation = st - s.baseline_st
                accent = float(np.clip((deviation / s.range_st - _ACCENT_FROM) / _ACCENT_SPAN, 0.0, 1.0))
                if s.last_st is not None:
                    rise = float(np.clip((st - s.last_st) / self.dt / _RISE_ST_PER_S, 0.0, 1.0))
                # The statistics learn after they are used: an accent is measured against the past.
                s.baseline_st += (st - s.baseline_st) * self.a_baseline
                s.range_st = max(_RANGE_MIN_ST, s.range_st + (abs(deviation) - s.range_st) * self.a_range)
                s.voiced_frames += 1
                s.last_st = st
            else:
                s.last_st = None
            brows_target = min(1.0, accent + 0.5 * rise)
            a = self.a_brow_up if brows_target > s.brows else self.a_brow_down
            s.brows += (brows_target - s.brows) * a
            emphasis = float(np.clip((loud[i] - (level[i] - 3.0)) / 6.0, 0.0, 1.0)) if voiced else 0.0
            widen_target = accent * emphasis
            a = self.a_brow_up if widen_target > s.widen else self.a_brow_down
            s.widen += (widen_target - s.widen) * a
            # A nod begins on a stressed onset: loud against the level, accented, rising loudness.
            s.nod_age_s += self.dt
            onset = voiced and accent > 0.3 and emphasis > 0.5 and loud[i] > s.loud_before_db + 3.0
            if onset and s.nod_age_s >= _NOD_GAP_S:
                s.nod_age_s = 0.0
            nod = 0.5 - 0.5 * math.cos(2.0 * math.pi * s.nod_age_s / _NOD_S) if s.nod_age_s < _NOD_S else 0.0
            s.loud_before_db = float(loud[i])
            # The tone: a lively range smiles, a low loud flat stretch frowns; silence drifts to calm.
            smile_target = 0.0
            if voiced:
                lively = float(np.clip((s.range_st - _LIVELY_FROM_ST) / _LIVELY_SPAN_ST, 0.0, 1.0))
                low_tense = float(np.clip((-(st - s.baseline_st) / s.range_st - 1.0), 0.0, 1.0)) * emphasis
                smile_target = lively - 0.6 * low_tense
            s.smile += (smile_target - s.smile) * self.a_smile
            for name in ("brows", "widen", "smile"):
                if abs(getattr(s, name)) < 1e-3:
                    setattr(s, name, 0.0)
            k = self.strength
            out.append(
                Expression(
                    brows=k * s.brows, widen=k * s.widen, nod=k * nod, smile=k * s.smile,
                    f0_hz=float(f0[i]) if voiced else 0.0,
                )
            )
        return out
