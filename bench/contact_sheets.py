"""Contact sheets of the warp animator on every portrait the tests have, to look at.

For each portrait (the astronaut as shipped, cropped, tilted, mirrored; scikit-image's LFW faces,
frontal and turned; optional image files given on the command line), one row: the aligned portrait,
then frames of real speech (espeak-ng, then a recording of a human voice from alsa-utils when
present) at the widest jaw, the widest spread, the roundest lips, a blink and the widest head
motion, then the mouth of the widest frame magnified 3 times. Sheets are written per output size
as PNG files; the frame rate of the renders is printed.

    .venv/bin/python bench/contact_sheets.py --sizes 512 1024 --out /tmp/sheets [photo.jpg ...]
"""

from __future__ import annotations

import argparse
import io
import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from skimage import data

from avatar.audio import load_audio_file
from avatar.config import AppConfig, with_overrides
from avatar.errors import PortraitError
from avatar.generators.warp import WarpAnimator
from avatar.generators.warp_rig import estimate_yaw
from avatar.portrait import load_portrait
from avatar.speech import synthesize_speech
from avatar.windows import iter_clip_windows

_HUMAN_VOICE = Path("/usr/share/sounds/alsa/Front_Center.wav")


def portraits(extra: list[Path]) -> dict[str, bytes]:
    a = data.astronaut()
    bicubic = Image.Resampling.BICUBIC
    images = {
        "astronaut": a,
        "astronaut mirrored": a[:, ::-1],
        "tight head": a[60:330, 160:400],
        "face at the left edge": a[:, 170:],
        "bust ending at the chest": a[20:260, 120:420],
        "tiny (96 px)": np.asarray(Image.fromarray(a[40:360, 110:430]).resize((96, 96), bicubic)),
        "tilted 18 degrees": np.asarray(Image.fromarray(a).rotate(18, resample=bicubic, fillcolor=(120, 120, 120))),
    }
    faces = np.load(Path(data.__file__).parent / "lfw_subset.npy")
    for i in (0, 17, 60, 75, 99, 74, 58, 53):
        gray = np.asarray(np.clip(faces[i] * 255, 0, 255), np.uint8)
        images[f"lfw {i}"] = np.asarray(Image.fromarray(gray).convert("RGB").resize((200, 200), bicubic))
    out = {}
    for name, rgb in images.items():
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG")
        out[name] = buffer.getvalue()
    for path in extra:
        out[path.name] = path.read_bytes()
    return out


def speech(work: Path) -> np.ndarray:
    wav = synthesize_speech("Open the window wide. Move the boat, my friend. We see you.", work / "sheet_speech.wav")
    parts = [load_audio_file(wav)]
    if _HUMAN_VOICE.is_file():
        parts.append(load_audio_file(_HUMAN_VOICE))
    return np.concatenate(parts)


def label(tile: np.ndarray, text: str) -> np.ndarray:
    image = Image.fromarray(tile)
    ImageDraw.Draw(image).text((4, 4), text, fill=(255, 255, 0))
    return np.asarray(image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*", type=Path)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--out", type=Path, default=Path("/tmp/sheets"))
    parser.add_argument("--tile", type=int, default=256, help="each frame is shown this large")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    samples = speech(args.out)
    sources = portraits(args.images)
    for size in args.sizes:
        cfg = with_overrides(AppConfig(), video={"width_px": size, "height_px": size})
        anim = WarpAnimator(cfg.warp, cfg.video, torch.device("cpu"))
        windows = list(iter_clip_windows(np.asarray(samples, np.int16), cfg.windows, cfg.vad, cfg.video.fps))
        rows, step_s = [], []
        for name, source in sources.items():
            try:
                portrait = load_portrait(source, cfg.portrait, cfg.video)
            except PortraitError as exc:
                print(f"{size} {name}: refused: {exc}")
                continue
            stream = anim.new_stream(portrait, seed=4)
            frames = []
            for window in windows:
                started = time.perf_counter()
                frames.append(anim.step([stream], [window])[0])
                step_s.append(time.perf_counter() - started)
            picks = {
                "rest": portrait.rgb,
                "widest jaw": max(frames, key=lambda f: f.drive["jaw"]).rgb,
                "spread": max(frames, key=lambda f: f.drive["width"] + 0.3 * f.drive["jaw"]).rgb,
                "round": max(frames, key=lambda f: f.drive["rounding"]).rgb,
                "blink": max(frames, key=lambda f: f.drive["blink"]).rgb,
                "head": max(frames, key=lambda f: abs(f.drive["head_pitch"]) + abs(f.drive["head_yaw"])).rgb,
            }
            widest = picks["widest jaw"]
            lips = portrait.landmarks[48:68]
            centre = lips.mean(axis=0)
            half = min(int(0.75 * np.ptp(lips[:, 0])) + 4, args.tile // 6)  # magnified 3 times or more
            x0 = int(np.clip(centre[0] - half, 0, size - 2 * half))
            y0 = int(np.clip(centre[1] - 0.7 * half, 0, size - 2 * half))
            mouth = widest[y0 : y0 + 2 * half, x0 : x0 + 2 * half]
            tiles = [
                label(np.asarray(Image.fromarray(rgb).resize((args.tile, args.tile), Image.Resampling.LANCZOS)), k)
                for k, rgb in picks.items()
            ]
            zoom = np.asarray(Image.fromarray(mouth).resize((args.tile, args.tile), Image.Resampling.NEAREST))
            tiles.append(label(zoom, f"mouth x{args.tile / mouth.shape[0]:.1f}"))
            yaw = math.degrees(estimate_yaw(portrait.landmarks))
            tiles[0] = label(tiles[0], f"\n{name}, yaw {yaw:+.0f}")
            rows.append(np.concatenate(tiles, axis=1))
        sheet = args.out / f"contact_{size}.png"
        Image.fromarray(np.concatenate(rows, axis=0)).save(sheet)
        print(
            f"{size}x{size}: {len(rows)} portraits, step {1e3 * np.median(step_s):.1f} ms median, "
            f"{1e3 * np.percentile(step_s, 95):.1f} ms p95 (CPU, one thread) -> {sheet}"
        )


if __name__ == "__main__":
    main()
