"""Causal frame generators behind one interface (see base.py)."""

from __future__ import annotations

import torch

from avatar.config import AppConfig
from avatar.errors import GeneratorError
from avatar.generators.base import FrameGenerator, GeneratedFrame, GeneratorStream, resolve_device

__all__ = ["FrameGenerator", "GeneratedFrame", "GeneratorStream", "load_generator", "resolve_device"]


def load_generator(config: AppConfig) -> FrameGenerator:
    """Build the generator named in config.generator, once per process, on its device."""
    device = resolve_device(config.generator)
    if device.type == "cpu" and config.generator.cpu_threads:
        # Process-wide, so it is set here, where the one generator of the process is loaded.
        torch.set_num_threads(config.generator.cpu_threads)
    if config.generator.name == "warp":
        from avatar.generators.warp import WarpAnimator

        return WarpAnimator(config.warp, config.video, device=device)
    if config.generator.name == "tgan":
        from avatar.generators.tgan import load_tgan_generator

        return load_tgan_generator(config, device=device)
    raise GeneratorError(f"unknown generator {config.generator.name!r}")
