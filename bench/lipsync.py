"""Lip sync of the warp animator, measured from output pixels, and contact sheets to look at.

Speaks a sentence with espeak-ng, runs it through the same chain as a session (AudioWindower with
VAD, one causal window per frame) into the warp animator on the built-in portrait, and measures the
mouth opening of every frame from the OUTPUT PIXELS: the number of pixels in the mouth box (from the
portrait's landmarks, lengthened downwards for the jaw) that are dark now (luma < 60) but were not at
rest. Against the speech envelope (RMS of 40 ms around each frame's time) it prints the Pearson
correlation at lags -3..+3 frames (positive lag: the mouth comes after the sound), the best lag
(target 0), and the opening in silence (target about 0).

It also saves contact sheets to /tmp/warp_sheet_*.png: the frames with the widest "ah", the most
rounded "oo", a closure ("m"/"b"/"p") inside speech, a blink, and a strip of consecutive frames.

    .venv/bin/python bench/lipsync.py [--size 512] [--text "..."] [--seed 0] [--out-dir /tmp]
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
from avatar.config import AppConfig, with_overrides
from avatar.generators.warp import WarpAnimator
from avatar.lipsync import audio_envelope, lagged_corr
from avatar.portrait import load_builtin_portrait
from avatar.speech import DEMO_SENTENCE, synthesize_speech
from avatar.windows import iter_clip_windows

DARK_LUMA = 60.0


def contact_sheet(frames: list[np.ndarray], labels: list[str], path: Path, cols: int = 4) -> None:
    from PIL import Image, ImageDraw

    tiles = []
    for frame, label in zip(frames, labels, strict=True):
        tile = Image.fromarray(frame)
        ImageDraw.Draw(tile).text((4, 4), label, fill=(255, 255, 0))
        tiles.append(tile)
    w, h = tiles[0].size
    rows = -(-len(tiles) // cols)
    sheet = Image.new("RGB", (w * cols, h * rows))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % cols) * w, (i // cols) * h))
    sheet.save(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--text", default=DEMO_SENTENCE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp"))
    args = parser.parse_args()

    config = with_overrides(AppConfig(), video={"width_px": args.size, "height_px": args.size})
    fps = config.video.fps
    portrait = load_builtin_portrait("astronaut", config.portrait, config.video)
    with tempfile.TemporaryDirectory() as tmp:
        samples = load_audio_file(synthesize_speech(args.text, Path(tmp) / "speech.wav"))
    windows = list(iter_clip_windows(samples, config.windows, config.vad, fps))

    animator = WarpAnimator(config.warp, config.video, torch.device(args.device))
    stream = animator.new_stream(portrait, args.seed)
    idle = animator.idle_frame(stream)
    frames, drives = [], []
    for window in windows:
        out = animator.step([stream], [window])[0]
        frames.append(out.rgb)
        drives.append(dict(out.drive))

    # Mouth box from the landmarks, lengthened downwards for the jaw.
    lm = portrait.landmarks
    mw = float(np.linalg.norm(lm[54] - lm[48]))
    x0, y0 = lm[48:68].min(axis=0) - 0.2 * mw
    x1, y1 = lm[48:68].max(axis=0) + np.array([0.2, 0.5]) * mw
    ys = slice(max(0, int(y0)), min(args.size, int(y1) + 1))
    xs = slice(max(0, int(x0)), min(args.size, int(x1) + 1))
    idle_dark = idle[ys, xs].astype(np.float64).mean(axis=-1) < DARK_LUMA
    opening = np.array(
        [((f[ys, xs].astype(np.float64).mean(axis=-1) < DARK_LUMA) & ~idle_dark).sum() for f in frames], float
    )
    opening_frac = opening / idle_dark.size

    env = audio_envelope(samples, len(frames), fps, window_s=0.04)
    corr = {lag: lagged_corr(opening, env, lag) for lag in range(-3, 4)}
    best = max(corr, key=lambda k: corr[k])
    silent = env < 1e-3
    jaw = np.array([d["jaw"] for d in drives])
    blinks = np.array([d["blink"] for d in drives])
    print(f"text: {args.text!r}")
    box_size = f"{xs.stop - xs.start}x{ys.stop - ys.start}"
    print(f"frames: {len(frames)} at {fps} fps, {args.size}x{args.size}, mouth box {box_size}")
    print("correlation of mouth opening (pixels) with the speech envelope, by lag (frames):")
    for lag, c in corr.items():
        print(f"  lag {lag:+d}: {c:+.3f}{'  <- best' if lag == best else ''}")
    print(f"best lag: {best:+d} frames (target 0)")
    print(f"corr(jaw drive, envelope): {np.corrcoef(jaw, env)[0, 1]:+.3f}")
    print(
        f"mouth opening in silence ({int(silent.sum())} frames): mean {opening_frac[silent].mean():.4f}, "
        f"max {opening_frac[silent].max():.4f} of the mouth box (target ~0)"
    )
    print(f"mouth opening in speech: mean {opening_frac[~silent].mean():.4f}, max {opening_frac.max():.4f}")
    print(f"blinks: {int(((blinks[1:] > 0.5) & (blinks[:-1] <= 0.5)).sum())} in {len(frames) / fps:.1f} s")

    # Contact sheets.
    speech_idx = np.flatnonzero(~silent)
    rounding = np.array([d["rounding"] for d in drives])
    closure = np.array([d["closure"] for d in drives])
    picks: list[tuple[str, int]] = [("rest", 0)]
    picks.append(("ah (widest)", int(np.argmax(jaw * (1.0 - rounding)))))
    picks.append(("oo (most round)", int(np.argmax(rounding))))
    inner = speech_idx[(speech_idx > speech_idx.min() + 3) & (speech_idx < speech_idx.max() - 3)]
    if inner.size:
        picks.append(("m/b/p (closure)", int(inner[np.argmax(closure[inner] - jaw[inner])])))
    if (blinks > 0.5).any():
        picks.append(("blink", int(np.argmax(blinks))))
    picks.append(("half open", int(np.argmin(np.abs(jaw - 0.5)))))
    picks.append(("most spread", int(np.argmax(np.array([d["width"] for d in drives])))))
    picks.append(("end (silence)", len(frames) - 1))
    labels = [f"{name} #{i} jaw {jaw[i]:.2f}" for name, i in picks]
    out_dir = args.out_dir
    contact_sheet([frames[i] for _, i in picks], labels, out_dir / "warp_sheet_shapes.png")
    face = slice(int(0.25 * args.size), int(0.85 * args.size)), slice(int(0.2 * args.size), int(0.8 * args.size))
    contact_sheet([frames[i][face] for _, i in picks], labels, out_dir / "warp_sheet_shapes_face.png")
    start = int(speech_idx.min()) if speech_idx.size else 0
    strip = list(range(start, min(len(frames), start + 24)))
    contact_sheet(
        [frames[i][face] for i in strip], [f"#{i} jaw {jaw[i]:.2f}" for i in strip],
        out_dir / "warp_sheet_strip.png", cols=6,
    )
    print(f"contact sheets: {out_dir}/warp_sheet_shapes.png, warp_sheet_shapes_face.png, warp_sheet_strip.png")
    print(json.dumps({
        "size": args.size, "best_lag": best, "corr": {str(k): round(v, 4) for k, v in corr.items()},
        "silence_open_mean": round(float(opening_frac[silent].mean()), 5),
        "speech_open_mean": round(float(opening_frac[~silent].mean()), 5),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
