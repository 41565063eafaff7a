"""Contact sheets of the learned mouth shapes and the voice's expression, to look at.

The warp animator with `[warp] mouth_shapes = "visemes"` (the learned viseme model) speaks
espeak-ng sentences rich in each shape, the accented-word speech of bench/expression.py and the
recordings of a human voice that alsa-utils ships. Per portrait two rows: the frames where each
drive peaks (the open jaw of an "ah", lips pressed on an m, round on an "oo", spread on an "ee",
the lower lip to the teeth on an f, raised brows on a pitch accent, the tone's smile), labelled
with the drive's value and the clip it came from; under them, each frame's mouth (or brows)
magnified. One PNG per portrait and size.

    .venv/bin/python bench/viseme_sheets.py --size 512 --out /tmp/viseme_sheets
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from avatar.audio import load_audio_file  # noqa: E402
from avatar.config import AppConfig, with_overrides  # noqa: E402
from avatar.generators.warp import WarpAnimator  # noqa: E402
from avatar.portrait import load_portrait  # noqa: E402
from avatar.windows import iter_clip_windows  # noqa: E402
from bench.contact_sheets import portraits  # noqa: E402
from bench.expression import accented_speech, speak  # noqa: E402

SENTENCES = {
    "espeak shapes": "My mother moves five very smooth boots. See me. Fifty views. Father calls.",
    "espeak m/b/p": "Mama, bring me the big blue map, maybe by May.",
}
ALSA = ("Front_Center", "Front_Left", "Rear_Right")
# (title, drive key, how the frame is chosen: the largest of this score)
PEAKS = (
    ("open (ah)", "jaw", lambda d: d["jaw"] - 0.5 * d["rounding"]),
    ("pressed (m b p)", "press", lambda d: d["press"]),
    ("round (oo)", "rounding", lambda d: d["rounding"]),
    ("spread (ee)", "width", lambda d: d["width"]),
    ("lip to teeth (f v)", "lip_teeth", lambda d: d["lip_teeth"]),
    ("brows (accent)", "brows", lambda d: d["brows"]),
    ("smile (tone)", "smile", lambda d: d["smile"]),
)


def clips(work: Path) -> dict[str, np.ndarray]:
    out = {name: speak(text, work / f"{i}.wav") for i, (name, text) in enumerate(SENTENCES.items())}
    out["espeak accents"] = accented_speech(work, 25)[0]
    for stem in ALSA:
        path = Path("/usr/share/sounds/alsa") / f"{stem}.wav"
        if path.is_file():
            out[f"alsa {stem}"] = load_audio_file(path)
    return out


def label(tile: np.ndarray, text: str) -> np.ndarray:
    image = Image.fromarray(np.ascontiguousarray(tile))
    draw = ImageDraw.Draw(image)
    for k, line in enumerate(text.split("\n")):
        draw.text((4, 4 + 12 * k), line, fill=(255, 255, 0))
    return np.asarray(image)


def zoom(rgb: np.ndarray, centre: np.ndarray, half: int, tile: int) -> np.ndarray:
    size = rgb.shape[0]
    x0 = int(np.clip(centre[0] - half, 0, size - 2 * half))
    y0 = int(np.clip(centre[1] - half, 0, size - 2 * half))
    crop = rgb[y0 : y0 + 2 * half, x0 : x0 + 2 * half]
    return np.asarray(Image.fromarray(crop).resize((tile, tile), Image.Resampling.NEAREST))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--portraits", nargs="+", default=["astronaut", "lfw 0"], help="names from contact_sheets")
    parser.add_argument("--out", type=Path, default=Path("/tmp/viseme_sheets"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = with_overrides(
        AppConfig(), video={"width_px": args.size, "height_px": args.size},
        warp={"mouth_shapes": "visemes", "head_motion": 0.0},
    )  # fmt: skip
    anim = WarpAnimator(cfg.warp, cfg.video, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        sources = clips(Path(tmp))
    available = portraits([])
    for name in args.portraits:
        portrait = load_portrait(available[name], cfg.portrait, cfg.video)
        best: dict[str, tuple[float, np.ndarray, str, float]] = {}
        for clip, samples in sources.items():
            stream = anim.new_stream(portrait, seed=4)
            for window in iter_clip_windows(samples, cfg.windows, cfg.vad, cfg.video.fps):
                frame = anim.step([stream], [window])[0]
                for title, key, score in PEAKS:
                    value = float(score(frame.drive))
                    if title not in best or value > best[title][0]:
                        best[title] = (value, frame.rgb, clip, float(frame.drive[key]))
        lm = portrait.landmarks
        mouth_centre, brow_centre = lm[48:68].mean(axis=0), lm[17:27].mean(axis=0)
        mouth_half = int(0.9 * np.ptp(lm[48:68, 0]))
        brow_half = int(0.6 * np.ptp(lm[17:27, 0]))
        tiles = [label(np.asarray(Image.fromarray(portrait.rgb).resize((args.tile,) * 2)), f"rest\n{name}")]
        zooms = [label(zoom(portrait.rgb, mouth_centre, mouth_half, args.tile), "rest mouth")]
        for title, key, _ in PEAKS:
            _, rgb, clip, value = best[title]
            small = np.asarray(Image.fromarray(rgb).resize((args.tile,) * 2))
            tiles.append(label(small, f"{title}\n{key} {value:+.2f}\n{clip}"))
            centre, half = (brow_centre, brow_half) if key == "brows" else (mouth_centre, mouth_half)
            zooms.append(label(zoom(rgb, centre, half, args.tile), f"x{args.tile / (2 * half):.1f}"))
        sheet = np.concatenate([np.concatenate(tiles, axis=1), np.concatenate(zooms, axis=1)], axis=0)
        path = args.out / f"visemes_{name.replace(' ', '_')}_{args.size}.png"
        Image.fromarray(sheet).save(path)
        print(f"{name}: " + ", ".join(f"{t} {best[t][3]:+.2f} ({best[t][2]})" for t, _, _ in PEAKS) + f" -> {path}")


if __name__ == "__main__":
    main()
