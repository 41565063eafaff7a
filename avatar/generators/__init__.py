"""Causal frame generators behind one interface (see base.py)."""

from __future__ import annotations

import torch

from avatar.config import AppConfig
from avatar.errors import GeneratorError
from avatar.generators.base import FrameGenerator, FrameStage, GeneratedFrame, GeneratorStream, resolve_device

__all__ = ["FrameGenerator", "FrameStage", "GeneratedFrame", "GeneratorStream", "load_generator", "resolve_device"]


def load_generator(config: AppConfig) -> FrameGenerator:
    """Build the generator named in config.generator, once per process, on its device, with the
    disclosure stage of config.disclosure as the last stage of its every frame."""
    from avatar.disclosure.stage import DisclosureStage

    device = resolve_device(config.generator)
    if device.type == "cpu" and config.generator.cpu_threads:
        # Process-wide, so it is set here, where the one generator of the process is loaded.
        torch.set_num_threads(config.generator.cpu_threads)
    if config.generator.name not in ("warp", "tgan"):
        raise GeneratorError(f"unknown generator {config.generator.name!r}")
    stage = DisclosureStage(config.disclosure, config.video.width_px, config.video.height_px, device)
    if config.generator.name == "warp":
        from avatar.generators.warp import WarpAnimator

        generator: FrameGenerator = WarpAnimator(config.warp, config.video, device=device, disclosure=stage)
    else:
        from avatar.generators.tgan import load_tgan_generator

        generator = load_tgan_generator(config, device=device, disclosure=stage)
    stage.warn_if_off()
    return generator
