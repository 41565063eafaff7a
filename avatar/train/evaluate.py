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

from avatar.config import SAMPLE_RATE_HZ, AppConfig
from avatar.generators.base import resolve_device
from avatar.generators.tgan import draw_noise, from_model_image, load_tgan, to_model_image
from avatar.train.dataset import Clip, TalkingFaces, clip_windows, frame_sample_index

log = logging.getLogger(__name__)

MAX_LAG_FRAMES = 5
CHUNK_FRAMES = 250  # frames generated per forward pass (keeps memory bounded on long clips)


def _luminance(frames: np.ndarray) -> np.ndarray:
    """[T, H, W, 3] uint8 -> [T, H, W] float in 0..1."""
    return (frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)) / 255.0


def _box(
    points: np.ndarray, shape: tuple[int, int], grow_x: float, grow_up: float, grow_down: float
) -> tuple[slice, slice]:
    h, w = shape
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    bw, bh = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    xs = slice(int(max(0, np.floor(x0 - grow_x * bw))), int(min(w, np.ceil(x1 + grow_x * bw))) or 1)
    ys = slice(int(max(0, np.floor(y0 - grow_up * bh))), int(min(h, np.ceil(y1 + grow_down * bh))) or 1)
    return ys, xs


def mouth_opening(frames: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Per-frame darkness of the mouth region (outer lips, grown down for the jaw): [T]."""
    ys, xs = _box(landmarks[48:60], frames.shape[1:3], 0.1, 0.2, 0.6)
    return 1.0 - _luminance(frames[:, ys, xs]).mean(axis=(1, 2))


def eye_darkness(frames: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Per-frame darkness of both eye regions: [T] (drops when the eyes close)."""
    values = []
    for eye in (landmarks[36:42], landmarks[42:48]):
        ys, xs = _box(eye, frames.shape[1:3], 0.15, 0.6, 0.6)
        values.append(1.0 - _luminance(frames[:, ys, xs]).mean(axis=(1, 2)))
    return np.mean(values, axis=0)


def audio_envelope(audio: np.ndarray, frames: int, fps: int) -> np.ndarray:
    """RMS of the audio over each frame's period centred on its time: [T]."""
    half = SAMPLE_RATE_HZ // (2 * fps)
    centres = frame_sample_index(np.arange(frames), fps)
    x = audio.astype(np.float32) / 32768.0
    padded = np.concatenate([np.zeros(half, np.float32), x, np.zeros(half + 1, np.float32)])
    cumsum = np.concatenate([[0.0], np.cumsum(padded.astype(np.float64) ** 2)])
    lo = np.clip(centres, 0, padded.size)
    hi = np.clip(centres + 2 * half, 0, padded.size)
    return np.sqrt((cumsum[hi] - cumsum[lo]) / np.maximum(hi - lo, 1)).astype(np.float32)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 3 or np.std(a) < 1e-8 or np.std(b) < 1e-8:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def lip_sync(opening: np.ndarray, envelope: np.ndarray, max_lag: int = MAX_LAG_FRAMES) -> tuple[float, int, float]:
    """(correlation at lag 0, best lag in frames, correlation at the best lag); lag > 0: mouth later."""
    best_lag, best = 0, -2.0
    for lag in range(-max_lag, max_lag + 1):
        if lag >= 0:
            c = _corr(opening[lag:], envelope[: envelope.size - lag])
        else:
            c = _corr(opening[: opening.size + lag], envelope[-lag:])
        if c > best:
            best_lag, best = lag, c
    return _corr(opening, envelope), best_lag, best


def count_blinks(darkness: np.ndarray) -> int:
    """Runs of frames whose eye darkness falls well below the clip's usual level."""
    if darkness.size < 3:
        return 0
    median = float(np.median(darkness))
    mad = float(np.median(np.abs(darkness - median)))
    closed = darkness < median - max(4.0 * mad, 0.15 * median)
    return int(np.sum(closed[1:] & ~closed[:-1]) + int(closed[0]))


@torch.no_grad()
def generate_clip(model: Any, clip: Clip, config: AppConfig, device: torch.device, seed: int) -> np.ndarray:
    """The model's frames for a whole clip from its first frame: [T, H, W, 3] uint8."""
    windows = torch.from_numpy(clip_windows(clip, config.windows))
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
        z_audio, audio_hidden = model.audio_encoder(w, audio_hidden)
        z_noise, noise_hidden = model.noise_generator(n, noise_hidden)
        latent = torch.cat([z_audio, z_noise], dim=-1)[0]
        t = latent.shape[0]
        frames = model.decoder(latent, identity.expand(t, -1, -1, -1), [f.expand(t, -1, -1, -1) for f in features])
        out.append(from_model_image(frames))
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
        data_dir, info.config, info.windows, info.fps, config.train.holdout_fraction, Path(checkpoint).parent / "cache"
    )
    paths, split = data.holdout_paths, "holdout"
    if not paths:
        log.warning("no held-out clips in %s; evaluating on every clip", data_dir)
        paths, split = data.train_paths, "all"
    eval_config = config if info.windows == config.windows else _with_windows(config, info.windows)
    per_clip = []
    frames_total, seconds_total = 0, 0.0
    for i, path in enumerate(paths):
        clip = data.clip(path)
        generated = generate_clip(model, clip, eval_config, device, seed=config.generator.seed + i)
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


def _with_windows(config: AppConfig, windows: Any) -> AppConfig:
    import dataclasses

    return dataclasses.replace(config, windows=windows)
