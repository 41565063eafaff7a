"""The invisible watermark, measured: detection after real encoders and edits, false positives on
real images and unmarked renders, invisibility (PSNR) and cost per frame.

    .venv/bin/python bench/watermark.py            # the full run (several minutes on 2 cores)
    .venv/bin/python bench/watermark.py --quick    # fewer clips and transforms

Marked clips: 2 s talking-portrait renders (espeak-ng speech and a recording of a human voice from
alsa-utils), and 2 s slow pans over real photographs, at 256x256 and 512x512, each with its own
random payload. Transforms: aiortc's VP8 and H264 encoders at several bitrates, libx264 at 300 kbps,
half size then libx264 at 300 kbps, double size, brightness and contrast +-10%, and single stills
(PNG, JPEG quality 75). Negatives: every photograph scikit-image ships (with noise, a crop, JPEG,
half size), its 200 small LFW faces (enlarged), the other images of the venv's packages, and the
unmarked clips through the same transforms. Prints one table; the numbers go in the issue note.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from avatar.audio import load_audio_file  # noqa: E402
from avatar.config import load_config  # noqa: E402
from avatar.disclosure.detect import DETECTION_SCORE, WatermarkDetector  # noqa: E402
from avatar.disclosure.payload import Payload  # noqa: E402
from avatar.disclosure.stage import DisclosureStage  # noqa: E402
from avatar.disclosure.watermark import WatermarkEmbedder  # noqa: E402
from avatar.speech import synthesize_speech  # noqa: E402
from tests.real_images import negative_stills, pan_clip, photographs  # noqa: E402
from tests.video_transforms import STANDARD  # noqa: E402
from tests.watermark_clips import Clip, mark_clip, psnr_db, talking_clip  # noqa: E402

FPS = 25
RECORDING = Path("/usr/share/sounds/alsa/Front_Center.wav")

TRANSFORMS: dict[str, Callable[[Clip], Clip]] = {"none": lambda c: c, **STANDARD}
QUICK = ["none", "vp8 300 kbps", "h264 500 kbps", "half size, x264 300 kbps", "contrast -10%", "a still, jpeg 75"]


# ---- clips ---------------------------------------------------------------------------------------

def detect(clip: Clip) -> tuple[float, Payload | None]:
    detector = WatermarkDetector(FPS)
    detector.add_all(clip)
    result = detector.result()
    return result.score, result.payload


def embed_cost_ms(size: int, batch: int, device: torch.device, repeats: int = 30) -> float:
    embedder = WatermarkEmbedder(size, size, device)
    frames = torch.rand(batch, 3, size, size, device=device)
    bits = torch.randint(0, 2, (batch, 64), device=device).float()
    copies = [frames.clone() for _ in range(repeats + 3)]
    for x in copies[:3]:
        embedder.embed(x, bits)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for x in copies[3:]:
        embedder.embed(x, bits)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats / batch * 1000.0


def stage_cost_ms(size: int, batch: int, device: torch.device, repeats: int = 30) -> float:
    """Mark + watermark, as the generators run them."""
    config = load_config().disclosure
    stage = DisclosureStage(config, size, size, device)
    frames = torch.rand(batch, 3, size, size, device=device)
    copies = [frames.clone() for _ in range(repeats + 3)]
    for x in copies[:3]:
        stage.apply(x, list(range(batch)))
    started = time.perf_counter()
    for x in copies[3:]:
        stage.apply(x, list(range(batch)))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats / batch * 1000.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(2026)
    transforms = {k: TRANSFORMS[k] for k in QUICK} if args.quick else TRANSFORMS

    sentence = "Hello there. This portrait talks back to you, live, and it says so."
    speech = synthesize_speech(sentence, Path(tempfile.gettempdir()) / "bench-watermark-say.wav")
    audio = [speech] + ([RECORDING] if RECORDING.is_file() else [])
    photos = photographs()
    pan_names = ["coffee", "chelsea", "rocket"]
    if not args.quick:
        pan_names += ["camera", "motorcycle_left", "hubble_deep_field"]
    sizes = (256, 512)

    unmarked: dict[str, Clip] = {}
    for size in sizes:
        for k, path in enumerate(audio):
            unmarked[f"talk{k} {size}"] = talking_clip(load_config(), load_audio_file(path), size, seed=k)
        for name in pan_names:
            if name in photos:
                unmarked[f"pan {name} {size}"] = pan_clip(photos[name], size)

    print(f"# marked clips: {len(unmarked)} x {len(transforms)} transforms; threshold score {DETECTION_SCORE}")
    per_transform: dict[str, list[tuple[float, bool]]] = {name: [] for name in transforms}
    psnrs = []
    negative_scores: list[tuple[float, str]] = []
    for clip_name, clip in unmarked.items():
        session = int(rng.integers(0, 2**32))
        marked = mark_clip(clip, session)
        psnrs.append(min(psnr_db(m, c) for m, c in zip(marked, clip, strict=True)))
        for name, transform in transforms.items():
            score, payload = detect(transform(marked))
            per_transform[name].append((score, payload == Payload(1, session)))
            if name not in ("none",):
                negative_scores.append((detect(transform(clip))[0], f"{clip_name} unmarked, {name}"))
        print(f"  {clip_name}: worst-frame PSNR {psnrs[-1]:.2f} dB", flush=True)

    print(f"\n{'transform':22s} {'detected':>9s} {'min score':>9s} {'median':>7s} {'payload ok':>10s}")
    all_detected = []
    for name, rows in per_transform.items():
        scores = [s for s, _ in rows]
        detected = [s >= DETECTION_SCORE for s in scores]
        all_detected += detected
        print(
            f"{name:22s} {sum(detected):4d}/{len(rows):<4d} {min(scores):9.2f} {statistics.median(scores):7.2f} "
            f"{sum(ok for _, ok in rows):5d}/{len(rows)}"
        )
    print(f"detection rate (all transforms): {100.0 * sum(all_detected) / len(all_detected):.1f}%")

    stills = negative_stills(args.quick)
    for name, rgb in stills.items():
        negative_scores.append((detect(rgb[None])[0], name))
    false = [(s, n) for s, n in negative_scores if s >= DETECTION_SCORE]
    negative_scores.sort(reverse=True)
    print(
        f"\nnegatives: {len(negative_scores)} ({len(stills)} stills, "
        f"{len(negative_scores) - len(stills)} unmarked clips); "
        f"false positives {len(false)} ({100.0 * len(false) / len(negative_scores):.2f}%)"
    )
    print("highest negative scores:", ", ".join(f"{s:.2f} ({n})" for s, n in negative_scores[:5]))
    print(f"\nPSNR, worst frame of each clip: min {min(psnrs):.2f} dB, mean {statistics.mean(psnrs):.2f} dB")

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        for size in sizes:
            for batch in (1, 8):
                print(
                    f"cost on {device.type}, {size}x{size}, batch {batch}: watermark "
                    f"{embed_cost_ms(size, batch, device):.2f} ms/frame, mark + watermark "
                    f"{stage_cost_ms(size, batch, device):.2f} ms/frame"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
