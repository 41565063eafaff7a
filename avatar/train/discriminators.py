"""The three critics of the temporal GAN (only used in training; the generator never imports them).

- FrameDiscriminator: is this frame real, given the identity frame? (channels concatenated)
- SequenceDiscriminator: is this clip real over time, given its audio? (per-frame encoder + GRU)
- SyncDiscriminator: do this audio and this mouth movement belong together? (5-frame mouth chunks
  against the same frames' audio windows; trained on real in-sync pairs as real, shifted real pairs
  and generated pairs as fake)

Their widths follow the generator's identity_channels; spectral norm keeps them smooth. Each returns
raw logits (no sigmoid).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from avatar.config import TganConfig
from avatar.generators.tgan import num_levels

SYNC_FRAMES = 5  # frames per sync chunk: 0.2 s at 25 fps, as in the paper


def mouth_region(frames: torch.Tensor) -> torch.Tensor:
    """The lower half of the face crop, middle half of its width: [..., 3, H, W] -> [..., 3, H/2, W/2].

    face_crop_box puts the mouth centre at about 0.66 H, so this holds lips and chin."""
    h, w = frames.shape[-2:]
    return frames[..., h // 2 :, w // 4 : w // 4 + w // 2]


def _conv_stack(c_in: int, width: int, height_px: int, width_px: int) -> tuple[nn.Sequential, int]:
    """Stride-2 convs, as many as the identity encoder has (num_levels); returns (stack, channels)."""
    layers: list[nn.Module] = []
    c = c_in
    for level in range(num_levels(height_px, width_px)):  # the identity encoder's plan of layers
        out = min(width * 2**level, 8 * width)
        layers += [spectral_norm(nn.Conv2d(c, out, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
        c = out
    return nn.Sequential(*layers), c


class _AudioFeatures(nn.Module):
    """Windows [N, C, S] -> [N, F]: a small 1-D conv stack (the critics' own audio encoder)."""

    def __init__(self, c_in: int, features: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            spectral_norm(nn.Conv1d(c_in, 16, 64, stride=16, padding=24)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv1d(16, 32, 8, stride=4, padding=2)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv1d(32, 64, 4, stride=2, padding=1)),
            nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool1d(4),
            nn.Flatten(),
            spectral_norm(nn.Linear(64 * 4, features)),
            nn.LeakyReLU(0.2),
        )

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return self.net(windows)


class FrameDiscriminator(nn.Module):
    def __init__(self, config: TganConfig) -> None:
        super().__init__()
        self.convs, c = _conv_stack(6, config.identity_channels, config.height_px, config.width_px)
        self.head = spectral_norm(nn.Conv2d(c, 1, 3, padding=1))

    def forward(self, frames: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        # frames: [N, 3, H, W], identity: [N, 3, H, W] -> logits [N] (mean of a patch map)
        return self.head(self.convs(torch.cat([frames, identity], dim=1))).mean(dim=(1, 2, 3))


class SequenceDiscriminator(nn.Module):
    def __init__(self, config: TganConfig) -> None:
        super().__init__()
        self.convs, c = _conv_stack(3, config.identity_channels, config.height_px, config.width_px)
        self.audio = _AudioFeatures(1, 64)
        hidden = 128
        self.gru = nn.GRU(c + 64, hidden, batch_first=True, bidirectional=True)
        self.head = spectral_norm(nn.Linear(2 * hidden, 1))

    def forward(self, frames: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        # frames: [B, T, 3, H, W], windows: [B, T, S] -> logits [B]
        b, t = frames.shape[:2]
        video = self.convs(frames.flatten(0, 1)).mean(dim=(2, 3)).view(b, t, -1)  # [B, T, C]
        audio = self.audio(windows.flatten(0, 1).unsqueeze(1)).view(b, t, -1)  # [B, T, 64]
        out, _ = self.gru(torch.cat([video, audio], dim=-1))  # [B, T, 2 * hidden]
        return self.head(out.mean(dim=1)).squeeze(-1)


class SyncDiscriminator(nn.Module):
    def __init__(self, config: TganConfig) -> None:
        super().__init__()
        self.convs, c = _conv_stack(
            3 * SYNC_FRAMES, config.identity_channels, config.height_px // 2, config.width_px // 2
        )
        embedding = 128
        self.video_head = spectral_norm(nn.Linear(c, embedding))
        self.audio = _AudioFeatures(SYNC_FRAMES, embedding)
        self.head = spectral_norm(nn.Linear(embedding, 1))

    def forward(self, mouths: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        # mouths: [B, K, 3, H/2, W/2], windows: [B, K, S] (the same K frames, or shifted) -> logits [B]
        v = self.video_head(self.convs(mouths.flatten(1, 2)).mean(dim=(2, 3)))  # [B, E]
        a = self.audio(windows)  # [B, E]
        return self.head((v - a) ** 2).squeeze(-1)  # a learned function of the embeddings' distance


class Discriminators(nn.Module):
    """The three critics in one module (one optimiser, one state dict in the checkpoint)."""

    def __init__(self, config: TganConfig) -> None:
        super().__init__()
        self.frame = FrameDiscriminator(config)
        self.sequence = SequenceDiscriminator(config)
        self.sync = SyncDiscriminator(config)
