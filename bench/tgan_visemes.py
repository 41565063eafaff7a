"""Does viseme conditioning help the temporal GAN learn mouth shapes? A seeded comparison.

Data made here: espeak-ng utterances (avatar.drive.speech_data: many voices, rates and pitches,
with microphone-like augmentation) drawn as a talking face from their phoneme timings: the built-in
astronaut with a mouth whose opening follows each phoneme's jaw target and whose width follows its
class (round lips narrow, spread lips wide, closed lips shut), smoothed over two frames, and a blink
now and then. So the truth has shapes that loudness alone does not give.

Per seed, two generators of one architecture are trained on the same batches (`avatar train`'s
loop, on the CPU): without and with `[tgan] visemes`. On the held-out clips (other utterances)
each is scored: psnr, ssim and lip sync (avatar.train.evaluate), and the mouth's shape: how well
the generated mouth's width and height (the spread of the dark mouth pixels, across and down)
follow the truth's, frame by frame (Pearson correlation over every held-out frame).

    .venv/bin/python bench/tgan_visemes.py [--steps 600] [--seeds 2] [--utterances 24]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from avatar.config import SAMPLE_RATE_HZ, AppConfig, GeneratorConfig, TganConfig, TrainConfig  # noqa: E402
from avatar.drive.speech_data import make_dataset  # noqa: E402
from avatar.drive.visemes import CLOSED, ROUND, SPREAD, frame_labels  # noqa: E402
from avatar.generators.tgan import load_tgan  # noqa: E402
from avatar.train.dataset import TalkingFaces  # noqa: E402
from avatar.train.evaluate import clip_metrics, generate_clip  # noqa: E402
from avatar.train.loop import train  # noqa: E402
from tests.talking_faces import FPS, astronaut_face, draw_frame, write_clip  # noqa: E402

MODEL = TganConfig(
    height_px=64, width_px=48, identity_channels=16, audio_features=64, noise_features=4, hidden_features=64
)
WIDTH_BY_CLASS = {ROUND: 0.6, SPREAD: 1.25}  # times the rest width; other classes 1.0


def make_faces(out: Path, utterances: int, seed: int) -> None:
    """One MP4 (+ landmarks JSON) per utterance, its mouth drawn from the phoneme timings."""
    import json as _json

    out.mkdir(parents=True, exist_ok=True)
    face, landmarks = astronaut_face()
    rng = np.random.default_rng(seed)
    for i, utt in enumerate(make_dataset(utterances, seed)):
        frames_count = int(utt.audio.size * FPS / SAMPLE_RATE_HZ)
        classes, jaw = frame_labels(utt.spans, fps=FPS, n_frames=frames_count)
        width = np.array([WIDTH_BY_CLASS.get(int(c), 1.0) for c in classes])
        opening = np.where(classes == CLOSED, 0.0, np.clip(jaw / 0.9, 0.0, 1.0))
        smooth = np.array([0.5, 0.5])
        opening = np.convolve(opening, smooth)[:frames_count]  # causal two-frame average: a real mouth moves
        width = np.convolve(width, smooth)[:frames_count]
        width[0] = WIDTH_BY_CLASS.get(int(classes[0]), 1.0)
        blinks = set(int(b) for b in rng.integers(0, frames_count, max(1, frames_count // 60)))
        frames = np.stack(
            [draw_frame(face, landmarks, float(opening[k]), k in blinks, float(width[k])) for k in range(frames_count)]
        )
        path = out / f"utt{i:03d}.mp4"
        write_clip(path, frames, utt.audio)
        path.with_name(path.stem + ".landmarks.json").write_text(_json.dumps({"landmarks": landmarks.tolist()}))


def mouth_shape(frames: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(width, height) per frame: the spread (std, px) of the dark pixels of the mouth region."""
    mouth = landmarks[48:68]
    x0, x1 = int(mouth[:, 0].min()) - 3, int(np.ceil(mouth[:, 0].max())) + 3
    y0, y1 = int(mouth[:, 1].min()) - 3, int(np.ceil(mouth[:, 1].max())) + 6
    gray = frames[:, max(y0, 0) : y1, max(x0, 0) : x1].astype(np.float64).mean(axis=-1)
    dark = np.clip(90.0 - gray, 0.0, None) + 1e-6  # the open mouth is drawn at about 20
    ys, xs = np.mgrid[0 : gray.shape[1], 0 : gray.shape[2]]
    total = dark.sum(axis=(1, 2))
    mx = (dark * xs).sum(axis=(1, 2)) / total
    my = (dark * ys).sum(axis=(1, 2)) / total
    width = np.sqrt((dark * (xs - mx[:, None, None]) ** 2).sum(axis=(1, 2)) / total)
    height = np.sqrt((dark * (ys - my[:, None, None]) ** 2).sum(axis=(1, 2)) / total)
    return width, height


def score(checkpoint: Path, data_dir: Path, config: AppConfig) -> dict[str, float]:
    model, info = load_tgan(checkpoint)
    data = TalkingFaces(data_dir, info.config, info.fps, config.train.holdout_fraction, checkpoint.parent / "cache")
    metrics, generated_w, generated_h, real_w, real_h, weights = [], [], [], [], [], []
    for i, path in enumerate(data.holdout_paths):
        clip = data.clip(path)
        frames = generate_clip(model, clip, info.windows, torch.device("cpu"), seed=config.generator.seed + i)
        metrics.append(clip_metrics(frames, clip))
        weights.append(clip.num_frames)
        w, h = mouth_shape(frames, clip.landmarks)
        rw, rh = mouth_shape(clip.frames, clip.landmarks)
        generated_w.append(w), generated_h.append(h), real_w.append(rw), real_h.append(rh)
    out = {k: float(np.average([m[k] for m in metrics], weights=weights)) for k in ("psnr", "ssim", "lipsync_corr")}
    out["width_corr"] = float(np.corrcoef(np.concatenate(generated_w), np.concatenate(real_w))[0, 1])
    out["height_corr"] = float(np.corrcoef(np.concatenate(generated_h), np.concatenate(real_h))[0, 1])
    out["holdout_frames"] = int(sum(weights))
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--utterances", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_config = TrainConfig(
        steps=args.steps, batch_size=8, clip_frames=12, learning_rate=5e-4, checkpoint_every=args.steps,
        log_every=max(1, args.steps // 10), mixed_precision=False, holdout_fraction=0.17,
    )  # fmt: skip
    results: dict[str, list[dict[str, float]]] = {"plain": [], "visemes": []}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "faces"
        started = time.perf_counter()
        make_faces(data_dir, args.utterances, seed=11)
        print(f"made {args.utterances} clips in {time.perf_counter() - started:.0f} s", flush=True)
        for seed in range(args.seeds):
            for name, visemes in (("plain", False), ("visemes", True)):
                config = AppConfig(
                    tgan=dataclasses.replace(MODEL, visemes=visemes), train=train_config,
                    generator=GeneratorConfig(device="cpu", seed=seed),
                )  # fmt: skip
                started = time.perf_counter()
                checkpoint = train(config, data_dir, Path(tmp) / f"{name}-{seed}", progress=False)
                seconds = time.perf_counter() - started
                row = {"seed": seed, "train_s": round(seconds, 1), **score(checkpoint, data_dir, config)}
                results[name].append(row)
                print(f"{name:8s} " + ", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    averaged = [k for k in results["plain"][0] if k not in ("seed", "holdout_frames")]
    summary = {name: {k: round(float(np.mean([r[k] for r in rows])), 4) for k in averaged}
               for name, rows in results.items()}  # fmt: skip
    for name, means in summary.items():
        print(f"mean {name:8s} " + ", ".join(f"{k} {v}" for k, v in means.items()))
    print(json.dumps({"steps": args.steps, "seeds": args.seeds, "utterances": args.utterances, "mean": summary,
                      "runs": results}))  # fmt: skip


if __name__ == "__main__":
    main()
