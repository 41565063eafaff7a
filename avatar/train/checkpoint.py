"""Training checkpoints in a run folder: two files per saved step.

- `checkpoint-00000500.safetensors`: the generator alone (avatar.generators.tgan.save_tgan): tensors,
  model config, windows, fps and step. This is the file `avatar render --checkpoint` and
  `avatar eval` take.
- `checkpoint-00000500.train.pt`: what resuming needs besides: the discriminators' weights and both
  optimisers' states, the AMP scaler, the step. Plain tensors and numbers only, written by torch.save
  and read back with `weights_only=True` (no pickled code is ever run).

Resuming takes the newest step that has both files.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from avatar.config import TganConfig, WindowConfig
from avatar.errors import CheckpointError
from avatar.generators.tgan import TganModel, load_tgan, save_tgan
from avatar.train.discriminators import Discriminators

log = logging.getLogger(__name__)

_NAME = re.compile(r"^checkpoint-(\d{8})\.safetensors$")
TRAIN_STATE_FORMAT = "avatar-tgan-train/1"


def model_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"checkpoint-{step:08d}.safetensors"


def train_state_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name.removesuffix(".safetensors") + ".train.pt")


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint in `run_dir` whose training state is there too, or None."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    found = []
    for path in run_dir.iterdir():
        match = _NAME.match(path.name)
        if match and train_state_path(path).is_file():
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


@dataclass
class TrainingState:
    """Everything a run changes while it trains."""

    generator: TganModel
    discriminators: Discriminators
    optimizer_g: torch.optim.Optimizer
    optimizer_d: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    step: int = 0


def save_checkpoint(run_dir: Path, state: TrainingState, windows: WindowConfig, fps: int) -> Path:
    """Write both files of `state.step`; returns the generator file's path."""
    path = model_path(run_dir, state.step)
    extra: dict[str, Any] = {
        "format": TRAIN_STATE_FORMAT,
        "step": state.step,
        "discriminators": state.discriminators.state_dict(),
        "optimizer_g": state.optimizer_g.state_dict(),
        "optimizer_d": state.optimizer_d.state_dict(),
        "scaler": state.scaler.state_dict(),
    }
    extra_path = train_state_path(path)
    tmp = extra_path.with_name(extra_path.name + ".tmp")
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    torch.save(extra, tmp)
    tmp.replace(extra_path)
    save_tgan(path, state.generator, state.step, windows, fps)  # last: it marks the pair complete
    return path


def load_checkpoint(path: Path, state: TrainingState, expect: TganConfig, device: torch.device) -> None:
    """Load a checkpoint pair into `state` (in place), checking that it fits the configured model."""
    model, info = load_tgan(path, device, expect=expect)
    extra_path = train_state_path(Path(path))
    if not extra_path.is_file():
        raise CheckpointError(f"{path}: its training state {extra_path.name} is missing; cannot resume")
    try:
        extra = torch.load(extra_path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises many types for a bad or unsafe file
        raise CheckpointError(f"{extra_path}: not a readable training state ({exc})") from exc
    if not isinstance(extra, dict) or extra.get("format") != TRAIN_STATE_FORMAT:
        raise CheckpointError(f"{extra_path}: not a tgan training state (expected format {TRAIN_STATE_FORMAT!r})")
    if extra.get("step") != info.step:
        raise CheckpointError(
            f"{extra_path}: training state of step {extra.get('step')} beside a model of step {info.step}"
        )
    try:
        state.generator.load_state_dict(model.state_dict())
        state.discriminators.load_state_dict(extra["discriminators"])
        state.optimizer_g.load_state_dict(extra["optimizer_g"])
        state.optimizer_d.load_state_dict(extra["optimizer_d"])
        state.scaler.load_state_dict(extra["scaler"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{extra_path}: does not fit this model's discriminators or optimisers: {exc}") from exc
    state.step = info.step
