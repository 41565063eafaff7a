"""The interface every causal frame generator implements.

A generator is loaded once per process on one device. Each session asks it for a stream
(`new_stream(portrait, seed)`): the stream holds everything that session's animation remembers
(recurrent state, smoothed drive values, blink schedule, identity features), so one loaded generator
serves many sessions and nothing is shared between streams. `step(streams, windows)` advances each
given stream by one video frame in one batched call and returns one frame per stream, in order.

Frames come back as RGB uint8 arrays of shape (height, width, 3) on the CPU, ready to encode, with
the drive values that made them (empty for generators that have none).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch

from avatar.config import GeneratorConfig
from avatar.errors import DeviceError, GeneratorError
from avatar.portrait import Portrait
from avatar.windows import AudioWindow


@dataclass(frozen=True)
class GeneratedFrame:
    rgb: np.ndarray  # (height, width, 3) uint8
    drive: Mapping[str, float] = field(default_factory=dict)  # e.g. jaw, width, rounding, blink, head_*


class GeneratorStream(abc.ABC):
    """Per-session state of one generator; opaque to everything but its generator."""

    frame_index: int
    """Index of the next frame this stream will produce (0 for a new stream)."""


class FrameGenerator(abc.ABC):
    """A causal frame generator: loaded once, stepped in batches across streams."""

    name: str = "base"

    def __init__(self, device: torch.device, width_px: int, height_px: int, fps: int) -> None:
        self.device = device
        self.width_px = width_px
        self.height_px = height_px
        self.fps = fps

    @abc.abstractmethod
    def new_stream(self, portrait: Portrait, seed: int) -> GeneratorStream:
        """Make the state of one session animating `portrait`; `seed` makes it deterministic."""

    @abc.abstractmethod
    def step(self, streams: Sequence[GeneratorStream], windows: Sequence[AudioWindow]) -> list[GeneratedFrame]:
        """Advance each stream by one frame, given the audio window of that frame; one batched call."""

    @abc.abstractmethod
    def idle_frame(self, stream: GeneratorStream) -> np.ndarray:
        """A frame to show before the first step (the portrait at rest); RGB uint8 (H, W, 3)."""

    def release_stream(self, stream: GeneratorStream) -> None:
        """`stream` will not be stepped again (its session ended): drop whatever this generator still
        holds of it (caches keyed on streams), so a closed session's state is freed with its session.
        Called on the engine's worker thread, like every other call. By default there is nothing to drop."""
        return None


StreamT = TypeVar("StreamT", bound=GeneratorStream)


def checked_streams(
    streams: Sequence[GeneratorStream], windows: Sequence[AudioWindow], stream_type: type[StreamT], generator: str
) -> list[StreamT]:
    """The arguments of a step, checked: one window per stream, and every stream made by this generator."""
    if len(streams) != len(windows):
        raise GeneratorError(f"{generator} step got {len(streams)} streams but {len(windows)} audio windows")
    own = [s for s in streams if isinstance(s, stream_type)]
    if len(own) != len(streams):
        raise GeneratorError(f"{generator} step got a stream that another generator made")
    return own


def resolve_device(config: GeneratorConfig) -> torch.device:
    """'auto' picks cuda when one is usable, else cpu; an explicit cuda without one is a clear error."""
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"generator.device is {config.device!r} but no CUDA device is available")
    return torch.device(config.device)
