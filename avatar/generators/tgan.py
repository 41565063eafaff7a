"""The temporal-GAN generator: speech-driven facial animation from one still face.

After Vougioukas, Petridis and Pantic, "Realistic speech-driven facial animation with GANs" (IJCV
2020): an identity encoder reads the still face once; an audio encoder turns each frame's raw audio
window into features and a GRU carries them over time; a noise generator (Gaussian noise through a
GRU) drives what the audio does not explain (blinks, brows, small expressions); a U-Net decoder turns
[audio, noise] into a frame, with the identity encoder's feature maps as skips.

Everything is causal: frame k sees only its audio window (which ends at t_k + lookahead, see
avatar.windows) and the one-directional recurrences carry the past. The recurrent states, the
identity features and the noise generator's RNG live in a per-session `TganStream`, never in the
module, so one loaded model serves many sessions; `TganModel.forward_clip` (offline, a whole clip)
and `TganModel.step` (streaming, one frame) compute the same frames.

The model sees an axis-aligned crop of the face (`face_crop_box`, from the 68 landmarks; the
training data is cropped by the same function). `TganGenerator` pastes each generated crop back into
the portrait, at the output size, with a feathered edge, so the picture outside the face stays the
portrait's own. The paste runs on the device (each stream keeps its portrait there as floats): the
frames leave as one batch, through the disclosure stage (base.py), like every generator's.

Checkpoints are safetensors files: the generator's tensors, with the architecture (TganConfig as
JSON), the window and fps it was trained for and the step in the metadata (`save_tgan`,
`load_tgan`). Anything wrong with a file raises CheckpointError saying what.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avatar.config import AppConfig, TganConfig, VideoConfig, WindowConfig
from avatar.drive.viseme_model import CONDITIONING_FEATURES, VisemeConditioner
from avatar.errors import CheckpointError, GeneratorError
from avatar.generators.base import FrameGenerator, FrameStage, GeneratorStream
from avatar.portrait import Portrait
from avatar.windows import AudioWindow

__all__ = [
    "CHECKPOINT_FORMAT",
    "TganConfig",
    "TganGenerator",
    "TganModel",
    "TganStream",
    "crop_face",
    "face_crop_box",
    "load_tgan",
    "load_tgan_generator",
    "save_tgan",
]

CHECKPOINT_FORMAT = "avatar-tgan/1"
AUDIO_GRU_LAYERS = 2  # as in the paper
NOISE_STD = 0.6  # std of the per-frame Gaussian noise fed to the noise GRU (the paper's value)
BOTTOM_SIDE_PX = 8  # the identity encoder halves the image until its smaller side is at most this
AUDIO_TIME_BINS = 8  # the audio encoder keeps this many time bins of its window (coarse timing)


# ---------------------------------------------------------------------------------------------------
# Config: TganConfig (avatar.config) is the architecture; these derive the layer plan from it.


def num_levels(height_px: int, width_px: int) -> int:
    """How many stride-2 layers the identity encoder has: halve until the smaller side is <= 8.

    128x96 -> 4 (bottom 8x6), 128x128 -> 4 (8x8), 256x256 -> 5 (8x8), 64x48 -> 3 (8x6), 32x32 -> 2.
    """
    levels, h, w = 0, height_px, width_px
    while min(h, w) > BOTTOM_SIDE_PX and h % 2 == 0 and w % 2 == 0:
        h, w, levels = h // 2, w // 2, levels + 1
    return levels


def level_channels(config: TganConfig) -> list[int]:
    """Channels of identity-encoder level 1..L: identity_channels, doubling, capped at 8x."""
    c = config.identity_channels
    return [min(c * 2**i, 8 * c) for i in range(num_levels(config.height_px, config.width_px))]


def _norm(channels: int) -> nn.GroupNorm:
    # GroupNorm normalises each sample on its own: batched and single steps give the same frames.
    return nn.GroupNorm(math.gcd(channels, 8), channels)


# ---------------------------------------------------------------------------------------------------
# Modules


class IdentityEncoder(nn.Module):
    """Still face -> feature maps at 1/2, 1/4, ... 1/2^L resolution (the decoder's skips)."""

    def __init__(self, config: TganConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in level_channels(config):
            layers.append(nn.Sequential(nn.Conv2d(c_in, c, 4, stride=2, padding=1), _norm(c), nn.LeakyReLU(0.2)))
            c_in = c
        self.layers = nn.ModuleList(layers)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        # image: [B, 3, H, W] in [-1, 1] -> [[B, C_1, H/2, W/2], ..., [B, C_L, H/2^L, W/2^L]]
        features = []
        x = image
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return features


class AudioEncoder(nn.Module):
    """Raw 16 kHz window samples -> per-frame audio features (1-D convs, no normalisation: loudness
    matters), then a one-directional GRU over frames."""

    def __init__(self, config: TganConfig) -> None:
        super().__init__()
        a = config.audio_features
        c1, c2, c3 = max(a // 8, 8), max(a // 4, 8), max(a // 2, 8)
        self.convs = nn.Sequential(
            nn.Conv1d(1, c1, 64, stride=16, padding=24),  # [N, 1, S] -> [N, c1, ~S/16]  (1 ms hop)
            nn.LeakyReLU(0.2),
            nn.Conv1d(c1, c2, 8, stride=4, padding=2),  # -> [N, c2, ~S/64]  (4 ms)
            nn.LeakyReLU(0.2),
            nn.Conv1d(c2, c3, 4, stride=2, padding=1),  # -> [N, c3, ~S/128]  (8 ms)
            nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool1d(AUDIO_TIME_BINS),  # -> [N, c3, 8]
        )
        self.project = nn.Sequential(nn.Flatten(), nn.Linear(c3 * AUDIO_TIME_BINS, a), nn.LeakyReLU(0.2))
        conditioning = CONDITIONING_FEATURES if config.visemes else 0
        self.gru = nn.GRU(a + conditioning, config.hidden_features, num_layers=AUDIO_GRU_LAYERS, batch_first=True)

    def features(self, windows: torch.Tensor) -> torch.Tensor:
        # windows: [N, S] -> [N, A]
        return self.project(self.convs(windows.unsqueeze(1)))

    def forward(
        self, windows: torch.Tensor, hidden: torch.Tensor | None = None, conditioning: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # windows: [B, T, S], hidden: [layers, B, Hd], conditioning: [B, T, C] (the viseme features,
        # with TganConfig.visemes) -> z_audio [B, T, Hd], hidden [layers, B, Hd]
        b, t, s = windows.shape
        features = self.features(windows.reshape(b * t, s)).view(b, t, -1)
        if conditioning is not None:
            features = torch.cat([features, conditioning.to(features.dtype)], dim=-1)
        return self.gru(features, hidden)


class NoiseGenerator(nn.Module):
    """Per-frame Gaussian noise through a GRU: temporally coherent randomness (blinks, expression)."""

    def __init__(self, config: TganConfig) -> None:
        super().__init__()
        self.gru = nn.GRU(config.noise_features, config.noise_features, batch_first=True)

    def forward(self, noise: torch.Tensor, hidden: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # noise: [B, T, N], hidden: [1, B, N] -> z_noise [B, T, N], hidden [1, B, N]
        return self.gru(noise, hidden)


class _UpBlock(nn.Module):
    """x2 nearest upsampling, a conv, then the skip concatenated and another conv."""

    def __init__(self, c_in: int, c_skip: int, c_out: int) -> None:
        super().__init__()
        self.up = nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), _norm(c_out), nn.LeakyReLU(0.2))
        self.merge = nn.Sequential(nn.Conv2d(c_out + c_skip, c_out, 3, padding=1), _norm(c_out), nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # x: [N, c_in, h, w], skip: [N, c_skip, 2h, 2w] -> [N, c_out, 2h, 2w]
        x = self.up(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.merge(torch.cat([x, skip], dim=1))


class FrameDecoder(nn.Module):
    """U-Net decoder: [z_audio, z_noise] -> bottom feature map, then upsampling with identity skips."""

    def __init__(self, config: TganConfig) -> None:
        super().__init__()
        channels = level_channels(config)
        levels = len(channels)
        self.bottom_hw = (config.height_px >> levels, config.width_px >> levels)
        c_bottom = channels[-1]
        latent = config.hidden_features + config.noise_features
        self.project = nn.Linear(latent, c_bottom * self.bottom_hw[0] * self.bottom_hw[1])
        self.bottom = nn.Sequential(nn.Conv2d(2 * c_bottom, c_bottom, 3, padding=1), _norm(c_bottom), nn.LeakyReLU(0.2))
        blocks = []
        for i in range(levels - 1, -1, -1):  # from level L up to level 1; the last block reaches full size
            c_skip = channels[i - 1] if i >= 1 else 3  # level 0's skip is the identity image itself
            c_out = channels[i - 1] if i >= 1 else max(channels[0] // 2, 8)
            blocks.append(_UpBlock(channels[i], c_skip, c_out))
        self.blocks = nn.ModuleList(blocks)
        self.to_rgb = nn.Conv2d(max(channels[0] // 2, 8), 3, 3, padding=1)

    def forward(self, latent: torch.Tensor, image: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        # latent: [N, Hd + Nz], image: [N, 3, H, W], features: [[N, C_i, H/2^i, W/2^i]] -> [N, 3, H, W]
        h, w = self.bottom_hw
        x = self.project(latent).view(latent.shape[0], -1, h, w)  # [N, C_L, H/2^L, W/2^L]
        x = self.bottom(torch.cat([x, features[-1]], dim=1))
        skips = [image, *features[:-1]]  # skips[i] has the resolution of level i
        for block, skip in zip(self.blocks, reversed(skips), strict=True):
            x = block(x, skip)
        return torch.tanh(self.to_rgb(x))  # [N, 3, H, W] in [-1, 1]


class TganModel(nn.Module):
    """The generator's weights; every state of a stream is passed in and returned.

    With `config.visemes` the audio GRU also reads each window's viseme probabilities and jaw from
    a frozen copy of the viseme model (`viseme_conditioner`, part of the checkpoint); it needs the
    windows' layout (`windows`) to find each frame's time in them. New models start from the
    shipped viseme weights; `load_tgan` fills in the checkpoint's."""

    def __init__(self, config: TganConfig, windows: WindowConfig | None = None) -> None:
        super().__init__()
        self.config = config
        self.identity_encoder = IdentityEncoder(config)
        self.audio_encoder = AudioEncoder(config)
        self.noise_generator = NoiseGenerator(config)
        self.decoder = FrameDecoder(config)
        self.viseme_conditioner: VisemeConditioner | None = None
        if config.visemes:
            if windows is None:
                raise GeneratorError("a tgan model with viseme conditioning needs the audio windows' config")
            self.viseme_conditioner = VisemeConditioner.shipped(windows.past_samples)

    def conditioning(self, windows: torch.Tensor) -> torch.Tensor | None:
        """The viseme features of windows [B, T, S] -> [B, T, C], or None without conditioning."""
        if self.viseme_conditioner is None:
            return None
        b, t, s = windows.shape
        return self.viseme_conditioner(windows.reshape(b * t, s)).view(b, t, -1)

    def encode_identity(self, image: torch.Tensor) -> list[torch.Tensor]:
        # image: [B, 3, H, W] in [-1, 1] -> feature maps per level
        return self.identity_encoder(image)

    def forward_clip(self, identity: torch.Tensor, windows: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Offline: identity [B, 3, H, W], windows [B, T, S], noise [B, T, Nz] -> frames [B, T, 3, H, W]."""
        return self.decode_clip(identity, self.encode_identity(identity), windows, noise)[0]

    def decode_clip(
        self,
        identity: torch.Tensor,
        features: list[torch.Tensor],
        windows: torch.Tensor,
        noise: torch.Tensor,
        audio_hidden: torch.Tensor | None = None,
        noise_hidden: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """forward_clip on encoded identity features, continuing from recurrent states (None: the
        start), so a long clip can be made chunk by chunk: (frames [B, T, 3, H, W], audio_h, noise_h)."""
        b, t = windows.shape[:2]
        z_audio, audio_hidden = self.audio_encoder(windows, audio_hidden, self.conditioning(windows))  # [B, T, Hd]
        z_noise, noise_hidden = self.noise_generator(noise, noise_hidden)  # [B, T, Nz]
        latent = torch.cat([z_audio, z_noise], dim=-1).reshape(b * t, -1)
        repeat = [f.unsqueeze(1).expand(-1, t, -1, -1, -1).reshape(b * t, *f.shape[1:]) for f in [identity, *features]]
        frames = self.decoder(latent, repeat[0], repeat[1:])
        return frames.view(b, t, 3, *frames.shape[-2:]), audio_hidden, noise_hidden

    def step(
        self,
        identity: torch.Tensor,
        features: list[torch.Tensor],
        audio_hidden: torch.Tensor | None,
        noise_hidden: torch.Tensor | None,
        windows: torch.Tensor,
        noise: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Streaming, one frame for B streams: identity [B, 3, H, W], features per level, audio_hidden
        [layers, B, Hd], noise_hidden [1, B, Nz] (None at the start), windows [B, S], noise [B, Nz]
        -> frames [B, 3, H, W], audio_hidden, noise_hidden."""
        step_windows = windows.unsqueeze(1)
        z_audio, audio_hidden = self.audio_encoder(step_windows, audio_hidden, self.conditioning(step_windows))
        z_noise, noise_hidden = self.noise_generator(noise.unsqueeze(1), noise_hidden)  # [B, 1, Nz]
        latent = torch.cat([z_audio, z_noise], dim=-1).squeeze(1)
        return self.decoder(latent, identity, features), audio_hidden, noise_hidden

    def initial_hidden(self, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero recurrent states, what the GRUs start from: [layers, B, Hd], [1, B, Nz]."""
        c = self.config
        return (
            torch.zeros(AUDIO_GRU_LAYERS, batch, c.hidden_features, device=device),
            torch.zeros(1, batch, c.noise_features, device=device),
        )


def draw_noise(rng: torch.Generator, frames: int, features: int) -> torch.Tensor:
    """The noise the generator's streams draw: [frames, features], N(0, NOISE_STD), on the CPU."""
    return torch.randn(frames, features, generator=rng) * NOISE_STD


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------------
# Face crop: the same for training data and for portraits.


def face_crop_box(landmarks: np.ndarray, height_px: int, width_px: int) -> tuple[float, float, float, float]:
    """The model's view of a face: (x, y, w, h) of an axis-aligned box with the model's aspect ratio.

    Scaled by the distance from the mid-point of the eyes to the mouth centre (d): the box is 3.2 d
    tall and centred on the mid-point between eyes and mouth, so it spans forehead to below the chin.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (68, 2):
        raise GeneratorError(f"face crop needs 68 (x, y) landmarks, got an array of shape {points.shape}")
    eyes = points[36:48].mean(axis=0)
    mouth = points[48:68].mean(axis=0)
    d = max(float(np.linalg.norm(mouth - eyes)), 1.0)
    h = 3.2 * d
    w = h * width_px / height_px
    cx, cy = (eyes + mouth) / 2.0
    return (float(cx - w / 2), float(cy - h / 2), float(w), float(h))


def crop_face(rgb: np.ndarray, box: tuple[float, float, float, float], height_px: int, width_px: int) -> np.ndarray:
    """Crop `box` out of an RGB uint8 image (edges repeated where it leaves it), resized to the model.

    Portraits (TganGenerator.new_stream) and training videos (avatar.train.dataset) both go through
    this function, so the model sees faces prepared one way."""
    from PIL import Image

    x, y, w, h = box
    image = Image.fromarray(np.ascontiguousarray(rgb))
    # PIL's EXTENT transform samples outside the image as black; pad by edge first.
    pad = int(math.ceil(max(0.0, -x, -y, x + w - rgb.shape[1], y + h - rgb.shape[0]))) + 1
    if pad > 1:
        image = Image.fromarray(np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="edge"))
    else:
        pad = 0
    # Cut at about the source's own scale, then resize: Image.resize filters (no aliasing) when the
    # face is much larger than the model's input, which the EXTENT transform alone does not.
    native = (max(width_px, round(w)), max(height_px, round(h)))
    out = image.transform(
        native, Image.Transform.EXTENT, (x + pad, y + pad, x + w + pad, y + h + pad), resample=Image.Resampling.BILINEAR
    )
    if native != (width_px, height_px):
        out = out.resize((width_px, height_px), Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.uint8)


def to_model_image(rgb: np.ndarray) -> torch.Tensor:
    """RGB uint8 (..., H, W, 3) -> float tensor (..., 3, H, W) in [-1, 1]."""
    t = torch.from_numpy(np.require(rgb, requirements=["C", "W"])).float().div(127.5).sub(1.0)
    return t.movedim(-1, -3)


def from_model_image(frames: torch.Tensor) -> np.ndarray:
    """Float tensor (..., 3, H, W) in [-1, 1] -> RGB uint8 (..., H, W, 3) on the CPU."""
    return frames.movedim(-3, -1).add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


# ---------------------------------------------------------------------------------------------------
# Checkpoints


def _meta_config(metadata: dict[str, str], path: Path) -> TganConfig:
    try:
        values = json.loads(metadata["tgan_config"])
        values.setdefault("visemes", False)  # written before viseme conditioning existed
        return TganConfig(**values)
    except KeyError as exc:
        raise CheckpointError(f"{path}: no model config in the checkpoint's metadata") from exc
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: bad model config in the checkpoint's metadata: {exc}") from exc


def save_tgan(path: Path, model: TganModel, step: int, windows: WindowConfig, fps: int) -> Path:
    """Write the generator's tensors and what it was trained for into one safetensors file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "tgan_config": json.dumps(dataclasses.asdict(model.config)),
        "windows": json.dumps(dataclasses.asdict(windows)),
        "fps": str(fps),
        "step": str(step),
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)  # a crash mid-write never leaves a half checkpoint under the real name
    return path


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    config: TganConfig
    windows: WindowConfig
    fps: int
    step: int


def read_checkpoint_info(path: Path | str) -> tuple[CheckpointInfo, dict[str, torch.Tensor]]:
    """Open a checkpoint and check its format; returns its metadata and tensors (on the CPU)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: not a tgan checkpoint (format {metadata.get('format')!r}, expected {CHECKPOINT_FORMAT!r})"
        )
    config = _meta_config(metadata, path)
    try:
        windows = WindowConfig(**json.loads(metadata["windows"]))
        fps = int(metadata["fps"])
        step = int(metadata["step"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: bad or missing windows/fps/step in the metadata: {exc}") from exc
    return CheckpointInfo(path, config, windows, fps, step), tensors


def _size(config: TganConfig) -> str:
    return f"{config.height_px}x{config.width_px}"


def load_tgan(
    path: Path | str, device: torch.device | str = "cpu", expect: TganConfig | None = None
) -> tuple[TganModel, CheckpointInfo]:
    """Load a generator from a checkpoint, checking format, config and every tensor's name and shape.

    `expect`: when given, the checkpoint's architecture must equal it (e.g. when resuming a run).
    """
    info, tensors = read_checkpoint_info(path)
    if expect is not None and info.config != expect:
        differences = [
            f"{f.name} {getattr(info.config, f.name)} (config: {getattr(expect, f.name)})"
            for f in dataclasses.fields(TganConfig)
            if getattr(info.config, f.name) != getattr(expect, f.name)
        ]
        raise CheckpointError(
            f"{info.path}: checkpoint expects a {_size(info.config)} model but the config asks for "
            f"{_size(expect)}; differences: {', '.join(differences)}"
        )
    model = TganModel(info.config, info.windows)
    wanted = model.state_dict()
    missing = sorted(set(wanted) - set(tensors))
    if missing:
        raise CheckpointError(
            f"{info.path}: missing tensor {missing[0]}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + f" for a {_size(info.config)} model"
        )
    unexpected = sorted(set(tensors) - set(wanted))
    if unexpected:
        raise CheckpointError(f"{info.path}: unexpected tensor {unexpected[0]} (not part of a tgan generator)")
    for name, tensor in wanted.items():
        if tuple(tensors[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{info.path}: tensor {name} has shape {tuple(tensors[name].shape)} but the "
                f"{_size(info.config)} model its config describes expects {tuple(tensor.shape)}"
            )
    model.load_state_dict(tensors)
    return model.to(device).eval(), info


# ---------------------------------------------------------------------------------------------------
# The FrameGenerator: streams, batched steps, paste back into the portrait


class TganStream(GeneratorStream):
    """One session's state: identity features, recurrent states, noise RNG, where to paste."""

    def __init__(
        self,
        portrait: Portrait,
        identity: torch.Tensor,
        features: list[torch.Tensor],
        rng: torch.Generator,
        box: tuple[int, int, int, int],
        mask: torch.Tensor,
        canvas: torch.Tensor,
    ) -> None:
        self.frame_index = 0
        self.portrait = portrait
        self.identity = identity  # [1, 3, H, W] on the device
        self.features = features  # [[1, C_i, H/2^i, W/2^i]]
        self.audio_hidden: torch.Tensor | None = None  # [layers, 1, Hd]
        self.noise_hidden: torch.Tensor | None = None  # [1, 1, Nz]
        self.rng = rng  # CPU generator of this stream's noise
        self.box = box  # (x, y, w, h) of the face crop in output pixels (integers, may leave the image)
        self.canvas = canvas  # [3, H_out, W_out] the portrait, floats 0..1, on the device
        # The part of the box inside the picture: (x0, y0, x1, y1) in output pixels.
        height, width = canvas.shape[-2:]
        x, y, w, h = box
        self.region = (max(x, 0), max(y, 0), max(min(x + w, width), max(x, 0)), max(min(y + h, height), max(y, 0)))
        x0, y0, x1, y1 = self.region
        self.mask = mask[:, y0 - y : y1 - y, x0 - x : x1 - x]  # [1, rh, rw] feathered paste weight, on the device


def _feather_mask(h: int, w: int, feather: float) -> torch.Tensor:
    """1 inside, ramping smoothly to 0 at the edges over `feather` pixels: [1, h, w]."""
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    dy = torch.minimum(ys, h - ys).clamp(max=feather) / feather
    dx = torch.minimum(xs, w - xs).clamp(max=feather) / feather
    ramp = dy[:, None] * dx[None, :]
    return (ramp * ramp * (3 - 2 * ramp)).unsqueeze(0)  # smoothstep


class TganGenerator(FrameGenerator[TganStream]):
    """The trained temporal GAN behind the FrameGenerator interface.

    Output: each generated face crop is resized to its box in the portrait and pasted over it with a
    feathered edge (12% of the box's smaller side), at the output size, on the device. `drive` is
    empty: this model has no explicit drive values.
    """

    name = "tgan"
    stream_type = TganStream

    def __init__(
        self,
        model: TganModel,
        video: VideoConfig,
        windows: WindowConfig,
        device: torch.device,
        *,
        disclosure: FrameStage | None = None,
    ) -> None:
        super().__init__(device, video.width_px, video.height_px, video.fps, disclosure)
        self.model = model.to(device).eval()
        self.config = model.config
        self.window_samples = windows.total_samples

    @torch.no_grad()
    def _new_stream(self, portrait: Portrait, seed: int) -> TganStream:
        c = self.config
        if portrait.rgb.shape != (self.height_px, self.width_px, 3):
            raise GeneratorError(
                f"the tgan generator needs a portrait at the output size {self.width_px}x{self.height_px}, "
                f"got an image of shape {portrait.rgb.shape}"
            )
        x, y, w, h = face_crop_box(portrait.landmarks, c.height_px, c.width_px)
        box = (round(x), round(y), max(round(w), 2), max(round(h), 2))
        face = crop_face(
            portrait.rgb, (float(box[0]), float(box[1]), float(box[2]), float(box[3])), c.height_px, c.width_px
        )
        identity = to_model_image(face).unsqueeze(0).to(self.device)
        features = self.model.encode_identity(identity)
        rng = torch.Generator().manual_seed(int(seed))
        mask = _feather_mask(box[3], box[2], max(2.0, 0.12 * min(box[2], box[3]))).to(self.device)
        canvas = torch.from_numpy(np.ascontiguousarray(portrait.rgb)).to(self.device).permute(2, 0, 1).float() / 255.0
        return TganStream(portrait, identity, features, rng, box, mask, canvas.contiguous())

    @torch.no_grad()
    def generate(self, streams: Sequence[TganStream], windows: Sequence[AudioWindow]) -> torch.Tensor:
        """One batched step; returns the model's face crops [B, 3, H, W] in [-1, 1]."""
        for window in windows:
            if window.samples.shape[0] != self.window_samples:
                raise GeneratorError(
                    f"the checkpoint was trained on windows of {self.window_samples} samples, "
                    f"got {window.samples.shape[0]} (config.windows differs from training)"
                )
        batch = len(streams)
        device = self.device
        identity = torch.cat([s.identity for s in streams])
        features = [torch.cat(level) for level in zip(*(s.features for s in streams), strict=True)]
        zero_audio, zero_noise = self.model.initial_hidden(1, device)
        audio_hidden = torch.cat([s.audio_hidden if s.audio_hidden is not None else zero_audio for s in streams], dim=1)
        noise_hidden = torch.cat([s.noise_hidden if s.noise_hidden is not None else zero_noise for s in streams], dim=1)
        samples = torch.from_numpy(np.stack([w.samples for w in windows]).astype(np.float32)).to(device)
        noise = torch.cat([draw_noise(s.rng, 1, self.config.noise_features) for s in streams]).to(device)
        frames, audio_hidden, noise_hidden = self.model.step(
            identity, features, audio_hidden, noise_hidden, samples, noise
        )
        for i, stream in enumerate(streams):
            stream.audio_hidden = audio_hidden[:, i : i + 1].contiguous()
            stream.noise_hidden = noise_hidden[:, i : i + 1].contiguous()
            stream.frame_index += 1
        assert frames.shape[0] == batch
        return frames

    def _generate(
        self, streams: Sequence[TganStream], windows: Sequence[AudioWindow]
    ) -> tuple[torch.Tensor, list[dict[str, float]]]:
        crops = self.generate(streams, windows)
        return self.paste(streams, crops), [{} for _ in streams]

    def paste(self, streams: Sequence[TganStream], crops: torch.Tensor) -> torch.Tensor:
        """Each crop [3, h, w] in [-1, 1] resized to its stream's box and blended into that stream's
        portrait with the feathered mask: frames [B, 3, H, W] in 0..1 on the device.

        One copy of the portraits for the batch; one resize per box size (streams of the same
        portrait share theirs); then one blend per stream, into its region of its frame."""
        frames = torch.stack([s.canvas for s in streams])
        faces = crops.float().add(1.0).mul_(0.5)  # [B, 3, h, w] in 0..1 (the resize is linear: the same)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, stream in enumerate(streams):
            x0, y0, x1, y1 = stream.region
            if x1 > x0 and y1 > y0:  # a box that leaves the picture entirely pastes nothing
                by_size.setdefault((stream.box[3], stream.box[2]), []).append(i)
        for size, members in by_size.items():
            group = faces if len(members) == len(streams) else faces[members]
            resized = F.interpolate(group, size=size, mode="bilinear", align_corners=False)
            for face, i in zip(resized, members, strict=True):
                stream = streams[i]
                x, y, _, _ = stream.box
                x0, y0, x1, y1 = stream.region
                region = frames[i, :, y0:y1, x0:x1]
                region.lerp_(face[:, y0 - y : y1 - y, x0 - x : x1 - x], stream.mask)
        return frames

    def _rest_frame(self, stream: TganStream) -> torch.Tensor:
        return stream.canvas


def load_tgan_generator(
    config: AppConfig, device: torch.device | str = "cpu", *, disclosure: FrameStage | None = None
) -> TganGenerator:
    """The generator of config.generator.checkpoint, checked against the windows and fps in use;
    its frames pass through `disclosure` (None: unmarked)."""
    if not config.generator.checkpoint:
        raise CheckpointError(
            "generator.name is 'tgan' but no checkpoint is given (generator.checkpoint / --checkpoint)"
        )
    device = torch.device(device)
    model, info = load_tgan(config.generator.checkpoint, device)
    if info.windows != config.windows:
        raise CheckpointError(
            f"{info.path}: the model was trained on {info.windows.window_s} s windows with "
            f"{info.windows.lookahead_s} s lookahead, but config.windows gives "
            f"{config.windows.window_s} s and {config.windows.lookahead_s} s"
        )
    if info.fps != config.video.fps:
        raise CheckpointError(
            f"{info.path}: the model was trained at {info.fps} fps but video.fps is {config.video.fps}"
        )
    return TganGenerator(model, config.video, config.windows, device, disclosure=disclosure)


def describe(model: TganModel) -> dict[str, Any]:
    """Parameter counts per module, for logs and the report."""
    return {
        "size": _size(model.config),
        "levels": num_levels(model.config.height_px, model.config.width_px),
        "identity_encoder": parameter_count(model.identity_encoder),
        "audio_encoder": parameter_count(model.audio_encoder),
        "noise_generator": parameter_count(model.noise_generator),
        "decoder": parameter_count(model.decoder),
        "viseme_conditioner": parameter_count(model.viseme_conditioner) if model.viseme_conditioner else 0,
        "total": parameter_count(model),
    }
