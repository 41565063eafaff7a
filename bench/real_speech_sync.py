"""Lip sync on real recorded speech: the learned visemes against the band-energy rules and a plain
loudness follower, by the pixel measure of DESIGN.md section 5.

Clips: every recording of a human voice that alsa-utils ships (/usr/share/sounds/alsa, "Front
Center" and the others; Noise.wav is left out), each alone and all of them joined with pauses, and
held-out espeak-ng voices (variants the viseme model never trained on) saying a test sentence.
Each clip is rendered by the warp animator on the built-in portrait (head motion off, so only the
mouth moves the pixels) three ways:

- loudness: the jaw opens by loudness alone (the same attack, release and automatic gain), no shapes;
- spectral: the band-energy rules (`[warp] mouth_shapes = "spectral"`);
- visemes: the learned model (`[warp] mouth_shapes = "visemes"`).

Printed per clip: the correlation of the mouth's opening (dark pixels in the mouth box) with the
speech envelope at lag 0 and at the best lag within +-3 frames.

    .venv/bin/python bench/real_speech_sync.py [--size 256]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from avatar.audio import load_audio_file
from avatar.config import SAMPLE_RATE_HZ, AppConfig, with_overrides
from avatar.generators.warp import WarpAnimator
from avatar.generators.warp_drive import MouthDriver, MouthShapes
from avatar.lipsync import audio_envelope, lagged_corr, mouth_opening
from avatar.portrait import load_builtin_portrait
from avatar.speech import synthesize_speech
from avatar.windows import iter_clip_windows

ALSA_SOUNDS = Path("/usr/share/sounds/alsa")
HELD_OUT_VOICES = ("en+f4", "en-us+m6", "en-gb-x-rp+f4")
TEST_SENTENCE = "Maybe we should move the five blue boxes over the fence, Bob."


def loudness_only(samples: np.ndarray, past: int) -> MouthShapes:
    """The baseline's shapes: the jaw by loudness alone, the lips never shaped."""
    ones, zeros = np.ones(len(samples)), np.zeros(len(samples))
    return MouthShapes(openness=ones, spread=zeros, rounding=zeros, closure=zeros, lip_teeth=zeros)


def clips(work: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    real = sorted(p for p in ALSA_SOUNDS.glob("*.wav") if p.stem != "Noise") if ALSA_SOUNDS.is_dir() else []
    pause = np.zeros(int(0.4 * SAMPLE_RATE_HZ), np.int16)
    for path in real:
        out[f"alsa {path.stem}"] = np.concatenate([pause, load_audio_file(path), pause])
    if real:
        out["alsa, all joined"] = np.concatenate([np.concatenate([load_audio_file(p), pause]) for p in real])
    for voice in HELD_OUT_VOICES:
        wav = synthesize_speech(TEST_SENTENCE, work / f"{voice}.wav", voice=voice)
        out[f"espeak {voice}"] = load_audio_file(wav)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = with_overrides(AppConfig(), video={"width_px": args.size, "height_px": args.size}, warp={"head_motion": 0.0})
    portrait = load_builtin_portrait("astronaut", base.portrait, base.video)
    fps = base.video.fps
    animators = {}
    for mode in ("loudness", "spectral", "visemes"):
        cfg = with_overrides(base, warp={"mouth_shapes": "spectral" if mode == "loudness" else mode})
        anim = WarpAnimator(cfg.warp, cfg.video, torch.device("cpu"))
        if mode == "loudness":
            anim.driver = MouthDriver(fps, cfg.warp.attack_s, cfg.warp.release_s, loudness_only)
        animators[mode] = anim
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        sources = clips(Path(tmp))
    print(f"{'clip':28s} " + "  ".join(f"{m:>17s}" for m in animators) + "   (corr at lag 0 / best lag)")
    for name, samples in sources.items():
        windows = list(iter_clip_windows(samples, base.windows, base.vad, fps))
        envelope = audio_envelope(samples, len(windows), fps, window_s=0.04)
        row = {}
        for mode, anim in animators.items():
            stream = anim.new_stream(portrait, seed=3)
            frames = np.stack([anim.step([stream], [w])[0].rgb for w in windows])
            opening = mouth_opening(frames, portrait.landmarks)
            by_lag = {lag: lagged_corr(opening, envelope, lag) for lag in range(-3, 4)}
            best = max(by_lag, key=lambda k: by_lag[k])
            row[mode] = {"lag0": round(by_lag[0], 3), "best": round(by_lag[best], 3), "best_lag": best}
        results[name] = row
        cells = "  ".join(f"{r['lag0']:+.2f} / {r['best']:+.2f} ({r['best_lag']:+d})" for r in row.values())
        print(f"{name:28s} {cells}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
