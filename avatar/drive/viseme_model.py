"""A small causal audio-to-viseme model: one frame's audio window -> viseme probabilities and jaw.

Each video frame's audio window (avatar.windows: `window_s` of past audio and `lookahead_s` of
future audio, 16 kHz) is enough on its own: the model looks at the last `CONTEXT_S` of it, so it
keeps no state between frames and batches over streams as one array. It predicts the mouth shape
at the frame's own time, `lookahead_s` before the window's end.

Features: log mel energies (25 ms frames every 10 ms, `N_MELS` bands from 60 Hz to 7.6 kHz), minus
their mean over the window (a microphone's gain and colour drop out), and each frame's level in dB
against the window's loudest (silence stays silence). The network: three small 1-D convolutions
over time, then two dense layers; about 35 k weights, stored as float16 (~70 KB) in
`avatar/drive/weights/visemes.pt`, which `avatar train-visemes` makes from espeak-ng speech
(avatar.drive.viseme_training).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avatar.config import SAMPLE_RATE_HZ
from avatar.drive.visemes import VISEMES

N_MELS = 40
FRAME_SAMPLES = 400  # 25 ms
HOP_SAMPLES = 160  # 10 ms
FFT_SIZE = 512
CONTEXT_S = 0.24  # the part of each window the model reads (its end)
CONTEXT_SAMPLES = round(CONTEXT_S * SAMPLE_RATE_HZ)
N_FRAMES = 1 + (CONTEXT_SAMPLES - FRAME_SAMPLES) // HOP_SAMPLES  # 22
_LEVEL_FLOOR_DB = -60.0
WEIGHTS_PATH = Path(__file__).with_name("weights") / "visemes.pt"


@functools.lru_cache(maxsize=1)
def _mel_matrix() -> np.ndarray:
    """(N_MELS, FFT_SIZE // 2 + 1) triangular mel filters, 60 Hz .. 7.6 kHz."""

    def to_mel(hz: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    def to_hz(mel: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)

    edges = to_hz(np.linspace(to_mel(np.array(60.0)), to_mel(np.array(7600.0)), N_MELS + 2))
    bins = np.fft.rfftfreq(FFT_SIZE, 1.0 / SAMPLE_RATE_HZ)
    filters = np.zeros((N_MELS, len(bins)))
    for m in range(N_MELS):
        low, centre, high = edges[m], edges[m + 1], edges[m + 2]
        rising = (bins - low) / (centre - low)
        falling = (high - bins) / (high - centre)
        filters[m] = np.clip(np.minimum(rising, falling), 0.0, None)
    return filters.astype(np.float32)


@functools.lru_cache(maxsize=1)
def _frame_window() -> np.ndarray:
    return np.hanning(FRAME_SAMPLES).astype(np.float32)


def _audio_tensor(windows: np.ndarray) -> torch.Tensor:
    """Audio windows, float in [-1, 1] or int16, as one float64 tensor in [-1, 1]."""
    audio = np.asarray(windows)
    if audio.dtype == np.int16:
        audio = audio.astype(np.float32) / 32768.0
    return torch.from_numpy(np.asarray(audio, dtype=np.float64))


def window_features(windows: np.ndarray) -> np.ndarray:
    """(B, T >= CONTEXT_SAMPLES) audio windows, float in [-1, 1] or int16 -> (B, N_MELS + 1, N_FRAMES)."""
    with torch.no_grad():
        features = _float64_features()(_audio_tensor(windows))
    return np.ascontiguousarray(features.numpy(), dtype=np.float32)


def cut_to_lookahead(audio: torch.Tensor, end: int) -> torch.Tensor:
    """Windows (B, T) cut to `end` samples: the frame time plus the lookahead the model was trained
    for. A window with more lookahead loses the rest; one with less is padded with silence."""
    return audio[:, :end] if audio.shape[1] >= end else F.pad(audio, (0, end - audio.shape[1]))


@functools.lru_cache(maxsize=1)
def _float64_features() -> WindowFeatures:
    """One WindowFeatures in float64 for the numpy path (built once, not per frame)."""
    return WindowFeatures().double()


class WindowFeatures(nn.Module):
    """Audio windows (B, T) float in [-1, 1] -> the model's features (B, N_MELS + 1, N_FRAMES), in
    torch so the viseme net can run inside another model, on its device (avatar.generators.tgan).

    Log mel energies of the last CONTEXT_S of each window, minus their mean (a microphone's gain and
    colour drop out) and faded out with each frame's level (noise is not a vowel); then the level
    in dB against the window's loudest frame (silence stays silence)."""

    hann: torch.Tensor
    mel: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("hann", torch.from_numpy(_frame_window()), persistent=False)
        self.register_buffer("mel", torch.from_numpy(_mel_matrix()), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        audio = audio[:, -CONTEXT_SAMPLES:]
        if audio.shape[1] < CONTEXT_SAMPLES:
            audio = F.pad(audio, (CONTEXT_SAMPLES - audio.shape[1], 0))
        frames = audio.unfold(1, FRAME_SAMPLES, HOP_SAMPLES)[:, :N_FRAMES] * self.hann.to(audio.dtype)  # (B, F, 400)
        power = torch.fft.rfft(frames, n=FFT_SIZE, dim=-1).abs().square()  # (B, F, 257)
        mel = torch.log(power @ self.mel.to(audio.dtype).T + 1e-8)  # (B, F, M)
        level_db = 10.0 * torch.log10(frames.square().mean(dim=-1) + 1e-10)  # (B, F)
        loudest = level_db.amax(dim=1, keepdim=True)
        relative = torch.clamp(level_db - loudest, min=_LEVEL_FLOOR_DB) / -_LEVEL_FLOOR_DB
        absolute = torch.clamp((level_db - _LEVEL_FLOOR_DB) / -_LEVEL_FLOOR_DB, 0.0, 1.0)
        shape = (mel - mel.mean(dim=(1, 2), keepdim=True)) * absolute[:, :, None]
        features = torch.cat([shape / 4.0, (relative + 1.0)[:, :, None]], dim=2)
        return features.transpose(1, 2).contiguous()


class VisemeNet(nn.Module):
    """Features (B, N_MELS + 1, N_FRAMES) -> (viseme logits (B, len(VISEMES)), jaw (B,) in 0..1)."""

    def __init__(self, channels: int = 48, hidden: int = 64) -> None:
        super().__init__()
        self.channels, self.hidden = channels, hidden
        self.convs = nn.Sequential(
            nn.Conv1d(N_MELS + 1, channels, 3),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2),
            nn.ReLU(),
        )
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, N_MELS + 1, N_FRAMES)).numel()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, len(VISEMES) + 1))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.convs(features))
        return out[:, : len(VISEMES)], torch.sigmoid(out[:, len(VISEMES)])


@dataclass(frozen=True)
class VisemePrediction:
    """One step's prediction for a batch of windows."""

    probabilities: np.ndarray  # (B, len(VISEMES)), rows sum to 1
    jaw: np.ndarray  # (B,) 0 closed .. 1 as wide as speech goes


class VisemeModel:
    """The shipped (or a given) model, on the CPU, ready to predict batches of windows."""

    def __init__(self, net: VisemeNet, lookahead_s: float) -> None:
        self.net = net.eval()
        self.lookahead_s = lookahead_s

    @classmethod
    def load(cls, path: Path = WEIGHTS_PATH) -> VisemeModel:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        net = VisemeNet(int(saved["channels"]), int(saved["hidden"]))
        net.load_state_dict({k: v.float() for k, v in saved["state"].items()})
        return cls(net, float(saved["lookahead_s"]))

    def predict(self, windows: np.ndarray, past_samples: int) -> VisemePrediction:
        """Windows (B, past_samples + lookahead) -> the mouth at each window's frame time (see
        `cut_to_lookahead` for a window whose lookahead is not the model's)."""
        end = past_samples + round(self.lookahead_s * SAMPLE_RATE_HZ)
        with torch.no_grad():
            cut = cut_to_lookahead(_audio_tensor(windows), end)
            logits, jaw = self.net(_float64_features()(cut).float())
        return VisemePrediction(torch.softmax(logits, dim=1).numpy(), jaw.numpy())


# Size of the conditioning a VisemeConditioner gives per window: the viseme probabilities and the jaw.
CONDITIONING_FEATURES = len(VISEMES) + 1


class VisemeConditioner(nn.Module):
    """The viseme model as a frozen layer of another model: windows (N, S) with the frame time at
    `past_samples` -> (N, CONDITIONING_FEATURES): viseme probabilities, then the jaw (0..1).

    Its weights and the lookahead they were trained for (a buffer) are part of the host model's
    tensors, so a checkpoint keeps the conditioning it was trained with when the shipped viseme
    weights are retrained. `shipped` starts from the shipped weights (a checkpoint's tensors then
    replace them). It never trains (no gradients), and runs in float32 outside autocast (the FFT
    and the log)."""

    lookahead_samples: torch.Tensor

    def __init__(self, past_samples: int, lookahead_samples: int, net: VisemeNet) -> None:
        super().__init__()
        self.past_samples = int(past_samples)
        self.features = WindowFeatures()
        self.net = net
        self.register_buffer("lookahead_samples", torch.tensor(int(lookahead_samples), dtype=torch.int64))
        self.requires_grad_(False)

    @classmethod
    def shipped(cls, past_samples: int, path: Path = WEIGHTS_PATH) -> VisemeConditioner:
        model = VisemeModel.load(path)
        return cls(past_samples, round(model.lookahead_s * SAMPLE_RATE_HZ), model.net)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        with torch.autocast(windows.device.type, enabled=False):
            audio = cut_to_lookahead(windows.float(), self.past_samples + int(self.lookahead_samples))
            logits, jaw = self.net(self.features(audio))
            return torch.cat([torch.softmax(logits, dim=1), jaw[:, None]], dim=1)


def parameter_count(net: nn.Module) -> int:
    return int(sum(math.prod(p.shape) for p in net.parameters()))
