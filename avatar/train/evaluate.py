"""Metrics of a tgan checkpoint on the held-out clips of a data folder.

Each held-out clip is generated from its first frame (the identity), its audio windows and the noise
of a seeded stream (`forward_clip`, which computes what streaming computes) and compared with the
real frames:
- psnr (dB, from the mean squared error over all frames of a clip) and ssim (skimage.metrics, RGB,
  data range 255, averaged over frames), both averaged over clips weighted by their frames;
- lip sync: the mouth opening measured from the output pixels (the darkness of the mouth region,
  placed by the clip's landmarks) against the audio RMS envelope at each frame: the Pearson
  correlation at lag 0 and the lag (in frames, -5..5; positive = the mouth follows the audio) with
  the best correlation; the same figures for the real frames as a reference;
- blink rate (blinks per second) from the darkness of the eye regions (a closed lid is brighter than
  the iris and lashes), for the generated and for the real frames.
The split is the training split (train.holdout_fraction); when it holds nothing (a folder of one
video, or a fraction of 0) every clip is used and `split` says "all".
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from avatar.config import AppConfig, WindowConfig
from avatar.generators.base import resolve_device
from avatar.generators.tgan import TganModel, draw_noise, from_model_image, load_tgan, to_model_image
from avatar.lipsync import audio_envelope, count_blinks, eye_darkness, lip_sync, mouth_opening
from avatar.train.dataset import Clip, TalkingFaces, clip_windows

log = logging.getLogger(__name__)

CHUNK_FRAMES = 250  # frames generated per forward pass (keeps memory bounded on long clips)


@torch.no_grad()
def generate_clip(
    model: TganModel, clip: Clip, windows_config: WindowConfig, device: torch.device, seed: int
) -> np.ndarray:
    """The model's frames for a whole clip from its first frame: [T, H, W, 3] uint8."""
    windows = torch.from_numpy(clip_windows(clip, windows_config))
    rng = torch.Generator().manual_seed(seed)
    noise = draw_noise(rng, clip.num_frames, model.config.noise_features)
    identity = to_model_image(clip.frames[0]).unsqueeze(0).to(device)
    features = model.encode_identity(identity)
    audio_hidden, noise_hidden = model.initial_hidden(1, device)
    out = []
    # forward_clip, chunk by chunk with the recurrent states carried over (same frames as streaming).
    for start in range(0, clip.num_frames, CHUNK_FRAMES):
        w = windows[start : start + CHUNK_FRAMES].unsqueeze(0).to(device)
        n = noise[start : start + CHUNK_FRAMES].unsqueeze(0).to(device)
        frames, audio_hidden, noise_hidden = model.decode_clip(identity, features, w, n, audio_hidden, noise_hidden)
        out.append(from_model_image(frames[0]))
    return np.concatenate(out)


def clip_metrics(generated: np.ndarray, clip: Clip) -> dict[str, float]:
    real = clip.frames
    # PSNR of the whole clip (its frames' mean squared error): a frame identical to the truth (a
    # silent frame copied from the identity) would make a per-frame average infinite.
    psnr = peak_signal_noise_ratio(real, generated, data_range=255)
    ssim = [structural_similarity(r, g, data_range=255, channel_axis=-1) for r, g in zip(real, generated, strict=True)]
    envelope = audio_envelope(clip.audio, clip.num_frames, clip.fps)
    corr, lag, best = lip_sync(mouth_opening(generated, clip.landmarks), envelope)
    real_corr, real_lag, _ = lip_sync(mouth_opening(real, clip.landmarks), envelope)
    return {
        "psnr": float(psnr),
        "ssim": float(np.mean(ssim)),
        "lipsync_corr": corr,
        "lipsync_best_lag": float(lag),
        "lipsync_best_corr": best,
        "real_lipsync_corr": real_corr,
        "real_lipsync_best_lag": float(real_lag),
        "blinks": float(count_blinks(eye_darkness(generated, clip.landmarks))),
        "real_blinks": float(count_blinks(eye_darkness(real, clip.landmarks))),
    }


def evaluate(config: AppConfig, checkpoint: Path, data_dir: Path) -> dict[str, Any]:
    """Metrics of `checkpoint` on the held-out clips of `data_dir` (see the module's docstring)."""
    device = resolve_device(config.generator)
    model, info = load_tgan(checkpoint, device)
    data = TalkingFaces(
        data_dir, info.config, info.fps, config.train.holdout_fraction, Path(checkpoint).parent / "cache"
    )
    paths, split = data.holdout_paths, "holdout"
    if not paths:
        log.warning("no held-out clips in %s; evaluating on every clip", data_dir)
        paths, split = data.train_paths, "all"
    per_clip = []
    frames_total, seconds_total = 0, 0.0
    for i, path in enumerate(paths):
        clip = data.clip(path)
        generated = generate_clip(model, clip, info.windows, device, seed=config.generator.seed + i)
        metrics = clip_metrics(generated, clip)
        log.info("%s: %s", clip.name, " ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
        per_clip.append((clip.num_frames, metrics))
        frames_total += clip.num_frames
        seconds_total += clip.duration_s
    weights = np.array([n for n, _ in per_clip], dtype=np.float64)
    result: dict[str, Any] = {}
    for key in per_clip[0][1]:
        if key in ("blinks", "real_blinks"):
            continue
        result[key] = float(np.average([m[key] for _, m in per_clip], weights=weights))
    result["blink_rate_hz"] = sum(m["blinks"] for _, m in per_clip) / max(seconds_total, 1e-9)
    result["real_blink_rate_hz"] = sum(m["real_blinks"] for _, m in per_clip) / max(seconds_total, 1e-9)
    result.update({"clips": len(per_clip), "frames": frames_total, "split": split, "step": info.step})
    return result

