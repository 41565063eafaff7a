"""The last stage of every generator step: the visible mark, then the invisible watermark.

It runs on the generator's device, on the whole batch at once, on float frames (B, 3, H, W) in
0..1, before they are turned into uint8 arrays for the encoders. Each stream's watermark carries its
own payload (the service id and that stream's session number).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from avatar.config import DisclosureConfig
from avatar.disclosure.mark import VisibleMark
from avatar.disclosure.payload import Payload
from avatar.disclosure.watermark import WatermarkEmbedder

log = logging.getLogger(__name__)


class DisclosureStage:
    """Marks frames of one size on one device, as `[disclosure]` says."""

    def __init__(self, config: DisclosureConfig, width_px: int, height_px: int, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.mark = (
            VisibleMark(config.mark_text, config.mark_corner, width_px, height_px, device) if config.mark else None
        )
        self.watermark = WatermarkEmbedder(width_px, height_px, device) if config.watermark else None
        self._bits: dict[int, torch.Tensor] = {}  # session number -> its payload bits on the device

    @property
    def summary(self) -> dict[str, bool]:
        """What is on, as `welcome` reports it."""
        return {"mark": self.mark is not None, "watermark": self.watermark is not None}

    def warn_if_off(self) -> None:
        """Once at start: a mark turned off is the operator's explicit choice, and the log says so."""
        if self.mark is None:
            log.warning("disclosure.mark is off: frames carry no visible 'synthetic' label")
        if self.watermark is None:
            log.warning(
                "disclosure.watermark is off: frames carry no invisible watermark; `avatar verify` cannot find them"
            )

    def payload_bits(self, session_number: int) -> torch.Tensor:
        """The coded payload of one session as float bits on the device (cached: a few sessions at a time)."""
        bits = self._bits.get(session_number)
        if bits is None:
            if len(self._bits) > 1024:
                self._bits.clear()
            coded = Payload(self.config.service_id, session_number).bits()
            bits = torch.as_tensor(coded.astype(np.float32), device=self.device)
            self._bits[session_number] = bits
        return bits

    def apply(self, frames: torch.Tensor, session_numbers: Sequence[int]) -> torch.Tensor:
        """Mark `frames` (B, 3, H, W) float 0..1 on the device; returns the marked frames (may be in place)."""
        if self.mark is not None:
            frames = self.mark.apply(frames)
        if self.watermark is not None:
            bits = torch.stack([self.payload_bits(n) for n in session_numbers])
            frames = self.watermark.embed(frames, bits)
        return frames
