"""Mouth drive of the warp animator: audio window -> jaw, lip width, lip rounding.

Everything here is causal: frame k looks only at its own audio window (past audio and the
window's lookahead). Per stream state (smoothed drive values, automatic gain) lives in a
`MouthDriveState`; `mouth_drive` advances many streams at once with numpy.

The drive, per frame:
- loudness: RMS in dBFS of the audio from 20 ms before t_k to 40 ms after it (as far as the
  default lookahead reaches). Reaching the whole lookahead is a latency choice: the session's delay
  pays for all of it, and a window ending at t_k + 20 ms left half unused, so an onset in the last
  20 ms of a lookahead waited a frame. Measured with a window ending at t_k + 20 ms against this one
  (both with the FFT below): onset -> first open frame, over onset phases, 41 -> 22 ms mean and
  65 -> 43 ms p95 (drive only, espeak "pa"); bench/latency.py --spacing 1.21 (onset phases cycle)
  p50 125 -> 111 ms and 146 -> 124 ms in runs of the same packet phase, mouth - voice +17 -> -3 ms;
  the jaw's lag behind the speech envelope went from about +11 ms to about 0 (bench/lipsync.py:
  pixel correlation at lag 0 0.71 -> 0.73, at -1/+1 0.51/0.66 -> 0.63/0.61), the attack and
  release smoothing's lag being what the extra reach makes up. With the bench's default spacing
  (1.2 s, every onset at one phase) the open frame happens to be the same either way.
- automatic gain: a slow-tracking speech level per stream (rises fast towards loud frames, falls
  slowly while speech goes on), so quiet and loud speakers both animate; the jaw opens by how
  close the loudness is to that level, over `_JAW_RANGE_DB`. Clipped audio only saturates the level.
- spectral shape from one 32 ms FFT ending where the loudness window ends (t_k + 8..40 ms; the
  60 ms smoothing of the lip shapes lags more than that): the share of energy around F1 of open
  vowels (500-1200 Hz) opens the jaw further; strong high-F2 energy (1.8-3.5 kHz, "ee") spreads the
  lips; a low F1 with little high energy ("oo") rounds them; a nasal murmur (energy only below
  500 Hz, "m") closes them.
- gate: nothing opens unless the window is marked speaking or it is loud against the level.
- press: a nasal murmur also presses the lips together (for portraits whose lips part at rest).
- lip to teeth (f, v; with the learned shapes only): the lower lip rises to the upper teeth.
- smoothing: attack `attack_s` on opening, release `release_s` on closing (at the attack rate on
  closures and on sudden dips inside speech, the holds of b and p; with the learned shapes also
  where the model hears the mouth closing: a pause, a consonant, a low jaw).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from avatar.config import SAMPLE_RATE_HZ
from avatar.drive.viseme_model import VisemeModel
from avatar.drive.visemes import CLOSED, LIP_TEETH, OTHER, REST, ROUND, SPREAD
from avatar.generators.warp_rig import smoothstep

_FFT_SIZE = 512  # 32 ms at 16 kHz
_RMS_PAST_S = 0.02  # loudness window: t_k - 20 ms ..
_AHEAD_S = 0.04  # .. t_k + 40 ms, as far as the lookahead reaches (also where the FFT ends)
_FLOOR_DB = -58.0  # below this nothing opens, whatever the gain
_LEVEL_INIT_DB = -26.0  # starting guess of a stream's speech level
_LEVEL_MIN_DB = -55.0
_JAW_RANGE_DB = 24.0  # the jaw goes from closed to open over this many dB below the speech level
_LEVEL_UP_S = 0.15  # the level rises this fast towards louder frames
_LEVEL_DOWN_S = 1.5  # and falls this slowly while speech goes on
_SHAPE_S = 0.06  # smoothing of lip width and rounding
_EPS = 1e-10
# With the learned visemes (bench/real_speech_sync.py chose them): the share of the jaw's opening
# that loudness alone sets (the model's jaw sets the rest), how far the lips spread or round at a
# certain class (spreading costs the envelope's follow almost nothing, rounding more), how hard
# they press at a certain closure unless a nasal murmur confirms it (the model hears closures in
# real voices that are not there; a full press on them shut the mouth against the envelope), and
# how much a rounded vowel lowers the jaw (the model's jaw already lowers it).
_LEARNED_JAW_BASE = 0.4
_LEARNED_SPREAD_GAIN = 0.8
_LEARNED_ROUND_GAIN = 0.7
_LEARNED_PRESS_GAIN = 0.5
_LEARNED_ROUND_JAW = 0.15
_RULES_ROUND_JAW = 0.35  # the band-energy rules' rounded vowels lower the jaw by this share
_LIP_TEETH_FROM = 0.25  # the lower lip starts toward the teeth above this probability of f, v
# The jaw closes at the attack rate where the model hears it closing: from a summed probability of
# rest, closed, lip-teeth and half the other consonants of _SETTLE_FROM (fully at + _SPAN), or from
# a jaw of _SETTLE_JAW down (fully at - _SPAN).
_SETTLE_FROM = 0.3
_SETTLE_FROM_SPAN = 0.4
_SETTLE_JAW = 0.4
_SETTLE_JAW_SPAN = 0.3


@dataclass
class MouthDriveState:
    """Causal state of one stream's mouth drive."""

    jaw: float = 0.0
    width: float = 0.0
    rounding: float = 0.0
    press: float = 0.0
    lip_teeth: float = 0.0
    level_db: float = _LEVEL_INIT_DB


@dataclass(frozen=True)
class MouthDrive:
    """Drive values of one frame of one stream."""

    jaw: float  # 0 closed .. 1 widest (before warp.mouth_open_max)
    width: float  # -1 narrow .. 1 spread
    rounding: float  # 0 .. 1
    loudness_db: float
    level_db: float
    closure: float  # 0 .. 1, how strongly a nasal murmur closes the lips
    press: float  # 0 .. 1, lips pressed together (a nasal murmur: m, n)
    lip_teeth: float = 0.0  # 0 .. 1, lower lip to the upper teeth (f, v); the learned shapes only


@dataclass(frozen=True)
class MouthShapes:
    """What shapes the lips in each window of a batch, each (B,) in 0..1."""

    openness: np.ndarray  # how far loudness opens the jaw
    spread: np.ndarray
    rounding: np.ndarray
    closure: np.ndarray  # lips shut (m, b, p), only in the quieter frames
    lip_teeth: np.ndarray  # lower lip to the upper teeth (f, v)
    # The jaw is closing: 0 it closes at the release rate .. 1 at the attack rate; None: 0.
    settle: np.ndarray | None = None


# A source of mouth shapes other than the band-energy rules: (windows (B, T), index of t_k) -> shapes.
ShapeSource = Callable[[np.ndarray, int], MouthShapes]


class LearnedShapes:
    """Mouth shapes from the learned viseme model (avatar.drive.viseme_model)."""

    def __init__(self, model: VisemeModel) -> None:
        self.model = model

    def __call__(self, samples: np.ndarray, past: int) -> MouthShapes:
        prediction = self.model.predict(samples, past)
        p = prediction.probabilities
        # The jaw follows loudness (the envelope), shaded by the model's jaw; the shapes come on top.
        openness = _LEARNED_JAW_BASE + (1.0 - _LEARNED_JAW_BASE) * np.clip(prediction.jaw / 0.9, 0.0, 1.0)
        shut = np.clip(p[:, CLOSED] + 0.5 * p[:, LIP_TEETH], 0.0, 1.0)
        # Closing: a pause, a lip closure, f or v, a consonant (half), or a low jaw; the loudness
        # follower cannot tell a closing dip from a short one, so it closes at the release rate.
        closing = p[:, REST] + p[:, CLOSED] + p[:, LIP_TEETH] + 0.5 * p[:, OTHER]
        settle = np.maximum(
            smoothstep((closing - _SETTLE_FROM) / _SETTLE_FROM_SPAN),
            smoothstep((_SETTLE_JAW - prediction.jaw) / _SETTLE_JAW_SPAN),
        )
        return MouthShapes(
            openness=openness,
            spread=_LEARNED_SPREAD_GAIN * p[:, SPREAD],
            rounding=_LEARNED_ROUND_GAIN * p[:, ROUND] * (1.0 - shut),
            closure=shut,
            lip_teeth=smoothstep((p[:, LIP_TEETH] - _LIP_TEETH_FROM) / (1.0 - _LIP_TEETH_FROM)),
            settle=settle,
        )


def _alpha(dt: float, tau: float) -> float:
    return 1.0 - math.exp(-dt / max(tau, 1e-6))


class MouthDriver:
    """Turns batches of audio windows into mouth drive values, advancing each stream's state."""

    def __init__(self, fps: int, attack_s: float, release_s: float, shapes: ShapeSource | None = None) -> None:
        self.shapes = shapes  # e.g. LearnedShapes; None: the band-energy rules below
        self.dt = 1.0 / fps
        self.a_attack = _alpha(self.dt, attack_s)
        self.a_release = _alpha(self.dt, release_s)
        self.a_shape = _alpha(self.dt, _SHAPE_S)
        self.a_level_up = _alpha(self.dt, _LEVEL_UP_S)
        self.a_level_down = _alpha(self.dt, _LEVEL_DOWN_S)
        self._window = np.hanning(_FFT_SIZE).astype(np.float64)
        freqs = np.fft.rfftfreq(_FFT_SIZE, 1.0 / SAMPLE_RATE_HZ)
        band = lambda lo, hi: ((freqs >= lo) & (freqs < hi)).astype(np.float64)  # noqa: E731
        # (5, bins): total 100-5000, F1-low 100-500, F1-open 500-1200, mid 1200-1800, F2-high 1800-3500
        self._bands = np.stack(
            [band(100, 5000), band(100, 500), band(500, 1200), band(1200, 1800), band(1800, 3500)]
        )

    # ---- features -------------------------------------------------------------------------
    def features(self, samples: np.ndarray, past: int) -> tuple[np.ndarray, np.ndarray]:
        """Loudness (B,) in dBFS and band shares (B, 4) in dB, from windows (B, T) with t_k at `past`."""
        samples = samples.astype(np.float64, copy=False)
        n_total = samples.shape[1]
        back, ahead = round(_RMS_PAST_S * SAMPLE_RATE_HZ), round(_AHEAD_S * SAMPLE_RATE_HZ)
        lo, hi = max(0, past - back), min(n_total, past + ahead)
        if hi <= lo:  # no lookahead and no past: nothing to measure
            lo, hi = max(0, n_total - back - ahead), n_total
        rms = np.sqrt(np.mean(samples[:, lo:hi] ** 2, axis=1))
        loud = 20.0 * np.log10(rms + _EPS)
        end = hi
        start = end - _FFT_SIZE
        if start < 0:
            seg = np.zeros((samples.shape[0], _FFT_SIZE))
            seg[:, -end:] = samples[:, :end]
        else:
            seg = samples[:, start:end]
        power = np.abs(np.fft.rfft(seg * self._window, axis=1)) ** 2  # (B, bins)
        energy = power @ self._bands.T + _EPS  # (B, 5)
        shares = 10.0 * np.log10(energy[:, 1:] / energy[:, :1])  # (B, 4) dB relative to the total
        return loud, shares

    # ---- one step for many streams ---------------------------------------------------------
    def step(
        self, states: Sequence[MouthDriveState], samples: np.ndarray, past: int, speaking: np.ndarray
    ) -> list[MouthDrive]:
        """Advance `states` by one frame from their windows `samples` (B, T); returns one drive each."""
        loud, shares = self.features(samples, past)
        f1_low, f1_open, mid, f2_high = (shares[:, i] for i in range(4))
        level = np.array([s.level_db for s in states])
        jaw = np.array([s.jaw for s in states])
        width = np.array([s.width for s in states])
        rounding = np.array([s.rounding for s in states])
        press = np.array([s.press for s in states])
        lip_teeth = np.array([s.lip_teeth for s in states])
        lip_teeth_target = np.zeros(len(states))
        settle = np.zeros(len(states))
        round_jaw = _RULES_ROUND_JAW

        audible = loud > _FLOOR_DB
        active = audible & (speaking | (loud > np.maximum(level - 8.0, -40.0)))
        # Automatic gain: the level follows loud frames up quickly and voiced frames down slowly.
        up = active & (loud > level)
        down = active & (loud <= level) & (loud > level - 2.0 * _JAW_RANGE_DB)
        level = np.where(up, level + (loud - level) * self.a_level_up, level)
        level = np.where(down, level + (loud - level) * self.a_level_down, level)
        level = np.clip(level, _LEVEL_MIN_DB, 0.0)

        # Loudness against the level: 0 at level - range, 1 at the level and above; a soft knee
        # so syllables inside a loud stretch still move the jaw.
        x = np.clip((loud - (level - _JAW_RANGE_DB)) / _JAW_RANGE_DB, 0.0, 1.0)
        loudness = x**1.3 * (1.0 - 0.35 * (1.0 - x) ** 2)
        low_f1 = smoothstep((f1_low - f1_open - 3.0) / 12.0)  # "oo", "ee", "m": F1 low
        murmur = smoothstep((-17.0 - f2_high) / 6.0) * low_f1  # "m": only a murmur below 500 Hz
        if self.shapes is not None:
            shapes = self.shapes(samples, past)
            openness, spread, round_target = shapes.openness, shapes.spread, shapes.rounding
            lip_teeth_target = shapes.lip_teeth
            round_jaw = _LEARNED_ROUND_JAW
            if shapes.settle is not None:
                settle = shapes.settle
            # Lips shut only in the quieter frames: a closure heard in loud speech is a mistake
            # (real voices and rooms fool the model there), while an m or a b's hold is quiet. At
            # half strength on the model's word alone, in full where a nasal murmur confirms it.
            closure = np.clip(shapes.closure * (1.0 - x) * (_LEARNED_PRESS_GAIN + murmur), 0.0, 1.0)
        else:
            # Vowel shape from band shares (dB of the 100-5000 Hz energy).
            openness = smoothstep((f1_open + 14.0) / 11.0)  # "ah": most energy at 500-1200 Hz
            spread = smoothstep((f2_high - np.maximum(f1_open, mid) + 6.0) / 20.0)  # "ee": strong F2 high
            closure = murmur
            round_target = low_f1 * (1.0 - spread) * (1.0 - closure)

        gate = active.astype(np.float64)
        jaw_target = (
            gate * loudness * (0.35 + 0.65 * openness) * (1.0 - 0.9 * closure) * (1.0 - round_jaw * round_target)
        )
        width_target = gate * loudness * np.clip(spread - 0.6 * round_target, -1.0, 1.0)
        round_target = gate * loudness * round_target

        # Lips pressed on a nasal murmur (m, n). A sudden dip inside speech (the hold of a b or p,
        # or a word's end: causally the same) closes the jaw at the attack rate instead, without the
        # press, so word ends do not flash a seam.
        dip = speaking & (loud < level - 0.85 * _JAW_RANGE_DB)
        press_target = gate * closure
        press = press + (press_target - press) * self.a_attack
        press = np.where(press < 1e-3, 0.0, press)
        # Lip to teeth comes and goes at the attack rate: an f or v is short.
        lip_teeth = lip_teeth + (gate * lip_teeth_target - lip_teeth) * self.a_attack
        lip_teeth = np.where(lip_teeth < 1e-3, 0.0, lip_teeth)

        closing = jaw_target < jaw
        fast_close = (press_target > 0.5) | dip
        a_close = np.where(fast_close, self.a_attack, self.a_release + settle * (self.a_attack - self.a_release))
        a_jaw = np.where(closing, a_close, self.a_attack)
        jaw = jaw + (jaw_target - jaw) * a_jaw
        width = width + (width_target - width) * self.a_shape
        rounding = rounding + (round_target - rounding) * self.a_shape
        # Snap tiny values to exactly zero so silence gives a closed mouth, not an asymptote.
        jaw = np.where(jaw < 1e-3, 0.0, jaw)
        width = np.where(np.abs(width) < 1e-3, 0.0, width)
        rounding = np.where(rounding < 1e-3, 0.0, rounding)

        drives = []
        for i, state in enumerate(states):
            state.jaw, state.width, state.rounding = float(jaw[i]), float(width[i]), float(rounding[i])
            state.press = float(press[i])
            state.lip_teeth = float(lip_teeth[i])
            state.level_db = float(level[i])
            drives.append(
                MouthDrive(
                    jaw=state.jaw,
                    width=state.width,
                    rounding=state.rounding,
                    loudness_db=float(max(loud[i], -120.0)),
                    level_db=state.level_db,
                    closure=float(closure[i] * gate[i]),
                    press=state.press,
                    lip_teeth=state.lip_teeth,
                )
            )
        return drives
