"""Clips for the watermark's tests and benchmark: 2 s of the default animator with no disclosure
stage (the frames as they leave the face), the same clips marked with a payload, and PSNR."""

from __future__ import annotations

import numpy as np
import torch

from avatar.config import AppConfig, with_overrides
from avatar.disclosure.payload import Payload
from avatar.disclosure.watermark import WatermarkEmbedder
from avatar.generators.warp import WarpAnimator
from avatar.portrait import default_portrait
from avatar.windows import iter_clip_windows
from tests.video_transforms import Clip

CLIP_FRAMES = 50  # 2 s at 25 fps


def talking_clip(config: AppConfig, samples: np.ndarray, size: int, seed: int = 3) -> Clip:
    """CLIP_FRAMES frames of the default portrait speaking `samples` (16 kHz int16), unmarked; a
    shorter recording holds its last frame."""
    config = with_overrides(config, video={"width_px": size, "height_px": size})
    generator = WarpAnimator(config.warp, config.video, device=torch.device("cpu"))
    stream = generator.new_stream(default_portrait(config), seed=seed)
    frames = []
    for window in iter_clip_windows(samples, config.windows, config.vad, config.video.fps):
        frames.append(generator.step([stream], [window])[0].rgb)
        if len(frames) == CLIP_FRAMES:
            break
    while len(frames) < CLIP_FRAMES:
        frames.append(frames[-1])
    return np.stack(frames)


def mark_clip(clip: Clip, session: int, service_id: int = 1) -> Clip:
    """`clip` with the watermark of (service_id, session) in every frame, as uint8."""
    h, w = clip.shape[1:3]
    embedder = WatermarkEmbedder(w, h, torch.device("cpu"))
    bits = torch.as_tensor(Payload(service_id, session).bits().astype(np.float32))[None]
    frames = torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255.0
    out = torch.cat([embedder.embed(part, bits.expand(len(part), -1)) for part in frames.split(8)])
    return np.ascontiguousarray(out.mul(255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b) ** 2).mean())
    return 10.0 * np.log10(255.0**2 / max(mse, 1e-12))
