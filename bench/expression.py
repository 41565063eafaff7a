"""Expression from the voice: do the brows follow pitch accents, and does a monotone keep the face calm?

Speech with known accents: espeak-ng speaks a sentence word by word, the accented words at a raised
pitch (-p 80 against -p 45), joined with short pauses, so the accent track (1 on accented words, 0
elsewhere) is known to the frame. A monotone: the same sentence in one piece with SSML
`<prosody range="x-low">` (pitch wobbles about 0.3 semitones). Also the plain sentence in espeak-ng's
own intonation, alsa-utils' recordings of a human voice, and silence. The warp animator's expression
driver (avatar/drive/expression.py) runs on each; printed: the correlation of the brow drive with the
accent track (at the best lag 0..+8 frames, the brows follow the voice), the RMS of each expression
drive, and the driver's cost per frame at batch 1 and 16.

    .venv/bin/python bench/expression.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from avatar.audio import load_audio_file
from avatar.config import SAMPLE_RATE_HZ, AppConfig
from avatar.drive.expression import Expression, ExpressionDriver, ExpressionState
from avatar.generators.warp_drive import MouthDriver, MouthDriveState
from avatar.speech import synthesize_speech
from avatar.windows import iter_clip_windows

WORDS = "we never said that she took the red car to the city on monday".split()
ACCENTED = {"never", "red", "city", "monday"}
_GAP_S = 0.06


def speak(text: str, path: Path, **options: object) -> np.ndarray:
    """espeak-ng's en-us voice at 160 words a minute, no padding: int16 samples at 16 kHz."""
    settings: dict = {"voice": "en-us", "words_per_minute": 160, "lead_silence_s": 0.0, "tail_silence_s": 0.0}
    return load_audio_file(synthesize_speech(text, path, **{**settings, **options}))


def monotone(text: str, path: Path) -> np.ndarray:
    """`text` spoken with SSML's lowest pitch range: a monotone."""
    return speak(f'<speak><prosody range="x-low">{text}</prosody></speak>', path, ssml=True)


def accented_speech(work: Path, fps: int) -> tuple[np.ndarray, np.ndarray]:
    """(int16 samples, accent track per frame): the sentence word by word, the accented words higher."""
    pieces, track = [np.zeros(int(0.4 * SAMPLE_RATE_HZ), np.int16)], []
    for i, word in enumerate(WORDS):
        pitch = 80 if word in ACCENTED else 45
        audio = speak(word, work / f"w{i}.wav", pitch=pitch)
        pieces.append(audio)
        track.append((sum(len(p) for p in pieces) - len(audio), len(audio), word in ACCENTED))
        pieces.append(np.zeros(int(_GAP_S * SAMPLE_RATE_HZ), np.int16))
    pieces.append(np.zeros(int(0.6 * SAMPLE_RATE_HZ), np.int16))
    samples = np.concatenate(pieces)
    n_frames = len(samples) * fps // SAMPLE_RATE_HZ
    accent = np.zeros(n_frames)
    for start, length, accented in track:
        if accented:
            accent[start * fps // SAMPLE_RATE_HZ : (start + length) * fps // SAMPLE_RATE_HZ] = 1.0
    return samples, accent


class Drivers:
    """The expression driver with the mouth driver that gives it loudness and level, as in the animator."""

    def __init__(self, cfg: AppConfig, batch: int = 1) -> None:
        self.mouth = MouthDriver(cfg.video.fps, cfg.warp.attack_s, cfg.warp.release_s)
        self.expression = ExpressionDriver(cfg.video.fps, cfg.warp.expression)
        self.mouth_states = [MouthDriveState() for _ in range(batch)]
        self.states = [ExpressionState() for _ in range(batch)]

    def step(self, samples: np.ndarray, past: int, speaking: np.ndarray) -> list[Expression]:
        drives = self.mouth.step(self.mouth_states, samples, past, speaking)
        loud, level = np.array([d.loudness_db for d in drives]), np.array([d.level_db for d in drives])
        return self.expression.step(self.states, samples, past, speaking, loud, level)


def run(samples: np.ndarray, cfg: AppConfig) -> dict[str, np.ndarray]:
    """Each expression drive per frame of a clip."""
    drivers = Drivers(cfg)
    rows = []
    for w in iter_clip_windows(samples, cfg.windows, cfg.vad, cfg.video.fps):
        e = drivers.step(np.asarray(w.samples, np.float32)[None], w.past_samples, np.array([w.speaking]))[0]
        rows.append((e.brows, e.widen, e.nod, e.smile))
    a = np.array(rows)
    return {"brows": a[:, 0], "widen": a[:, 1], "nod": a[:, 2], "smile": a[:, 3]}


def best_lag_corr(x: np.ndarray, y: np.ndarray, lags: range) -> tuple[float, int]:
    best = (-2.0, 0)
    for lag in lags:
        a, b = x[lag:], y[: len(y) - lag]
        n = min(len(a), len(b))
        if n > 10 and a[:n].std() > 0 and b[:n].std() > 0:
            best = max(best, (float(np.corrcoef(a[:n], b[:n])[0, 1]), lag))
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    cfg = AppConfig()
    fps = cfg.video.fps
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        accented, accent = accented_speech(work, fps)
        sentence = " ".join(WORDS)
        clips = {
            "accented words": accented,
            "espeak intonation": speak(sentence, work / "plain.wav"),
            "monotone": monotone(sentence, work / "mono.wav"),
            "silence": np.zeros(3 * SAMPLE_RATE_HZ, np.int16),
        }
        for path in sorted(Path("/usr/share/sounds/alsa").glob("*.wav")):
            if path.stem != "Noise":
                clips[f"alsa {path.stem}"] = load_audio_file(path)
    print(f"{'clip':22s} {'brows':>7s} {'widen':>7s} {'nod':>7s} {'smile':>7s}   (RMS of each drive)")
    results = {name: run(samples, cfg) for name, samples in clips.items()}
    for name, r in results.items():
        print(f"{name:22s} " + " ".join(f"{np.sqrt(np.mean(v**2)):7.3f}" for v in r.values()))
    brows = results["accented words"]["brows"]
    corr, lag = best_lag_corr(brows, accent[: len(brows)], range(0, 9))
    track = accent[: len(brows)]
    on, off = brows[: len(track)][track > 0].mean(), brows[: len(track)][track == 0].mean()
    print(f"brows vs the accent track: correlation {corr:+.2f} at lag {lag} frames; mean brows on accented words "
          f"{on:.3f}, elsewhere {off:.3f}")
    for batch in (1, 16):
        drivers = Drivers(cfg, batch)
        windows = list(iter_clip_windows(clips["espeak intonation"], cfg.windows, cfg.vad, fps))
        stack = [np.repeat(np.asarray(w.samples, np.float32)[None], batch, 0) for w in windows]
        speaking = np.ones(batch, bool)
        t0 = time.perf_counter()
        for w, s in zip(windows, stack, strict=True):
            loud, level = np.full(batch, -20.0), np.full(batch, -18.0)  # the mouth drive's cost is not counted
            drivers.expression.step(drivers.states, s, w.past_samples, speaking, loud, level)
        per = (time.perf_counter() - t0) / len(windows) / batch * 1e3
        print(f"cost at batch {batch}: {per:.3f} ms per stream per frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
