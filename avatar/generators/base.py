"""The interface every causal frame generator implements.

A generator is loaded once per process on one device. Each session asks it for a stream
(`new_stream(portrait, seed, session_number=...)`): the stream holds everything that session's
animation remembers (recurrent state, smoothed drive values, blink schedule, identity features) and
the number its watermark carries, so one loaded generator serves many sessions and nothing is shared
between streams. `step(streams, windows)` advances each given stream by one video frame in one
batched call and returns one frame per stream, in order.

The public methods (`new_stream`, `step`, `idle_frame`) are written here once; a generator
implements `_new_stream`, `_generate` and `_rest_frame`, which give float frames (B, 3, H, W) in
0..1 on its device. Every frame then goes the same way out (`_finish`): through the generator's
`FrameStage` (the disclosure stage: visible mark and invisible watermark), on the device and for the
whole batch in one call, so no generator can hand out an unmarked frame, idle frames included; then
one uint8 conversion and one copy to the CPU for the batch.

Frames come back as RGB uint8 arrays of shape (height, width, 3) on the CPU, ready to encode, with
the drive values that made them (empty for generators that have none).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

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


class FrameStage(Protocol):
    """The last stage of every generator output (avatar.disclosure.stage.DisclosureStage); generators
    depend on this interface only, so the dependency points one way (generators -> disclosure)."""

    def apply(self, frames: torch.Tensor, session_numbers: Sequence[int]) -> torch.Tensor:
        """`frames` (B, 3, H, W) float 0..1 on the generator's device, one session number per frame, in
        batch order -> frames of the same shape (the input may be changed in place)."""
        ...


class GeneratorStream(abc.ABC):
    """Per-session state of one generator; opaque to everything but its generator."""

    frame_index: int
    """Index of the next frame this stream will produce (0 for a new stream)."""

    session_number: int = 0
    """The 32-bit number this stream's watermark carries (set by `FrameGenerator.new_stream`)."""


StreamT = TypeVar("StreamT", bound=GeneratorStream)

_MAX_SESSION_NUMBER = 0xFFFF_FFFF


class FrameGenerator(abc.ABC, Generic[StreamT]):
    """A causal frame generator: loaded once, stepped in batches across streams.

    Subclasses set `stream_type` (the class of the streams they make) and implement `_new_stream`,
    `_generate` and `_rest_frame`; they do not override `new_stream`, `step` or `idle_frame`.
    """

    name: str = "base"
    stream_type: type[StreamT]

    def __init__(
        self,
        device: torch.device,
        width_px: int,
        height_px: int,
        fps: int,
        disclosure: FrameStage | None = None,
    ) -> None:
        self.device = device
        self.width_px = width_px
        self.height_px = height_px
        self.fps = fps
        self.disclosure = disclosure  # None: frames leave unmarked (tests, training previews)

    # ---- the public interface (the same for every generator) ------------------------------------

    def new_stream(self, portrait: Portrait, seed: int, *, session_number: int = 0) -> StreamT:
        """Make the state of one session animating `portrait`; `seed` makes it deterministic and
        `session_number` (32 bits) is what the watermark of its frames carries."""
        if not 0 <= session_number <= _MAX_SESSION_NUMBER:
            raise GeneratorError(f"session number {session_number} is not a 32-bit number")
        stream = self._new_stream(portrait, seed)
        stream.session_number = session_number
        return stream

    def step(self, streams: Sequence[GeneratorStream], windows: Sequence[AudioWindow]) -> list[GeneratedFrame]:
        """Advance each stream by one frame, given the audio window of that frame; one batched call."""
        own = checked_streams(streams, windows, self.stream_type, self.name)
        if not own:
            return []
        with torch.inference_mode():
            frames, drives = self._generate(own, windows)
            if len(drives) != len(own):
                raise GeneratorError(f"{self.name} made {len(drives)} drive records for {len(own)} streams")
            return self._finish(frames, own, drives)

    def idle_frame(self, stream: GeneratorStream) -> np.ndarray:
        """A frame to show before the first step (the portrait at rest), marked like every other
        frame; RGB uint8 (H, W, 3)."""
        if not isinstance(stream, self.stream_type):
            raise GeneratorError(f"{self.name} idle_frame got a stream that another generator made")
        with torch.inference_mode():
            # A copy: _rest_frame may return the stream's own tensor, and the stage may work in place.
            rest = self._rest_frame(stream).unsqueeze(0).clone()
            return self._finish(rest, [stream], [{}])[0].rgb

    def release_stream(self, stream: GeneratorStream) -> None:
        """`stream` will not be stepped again (its session ended): drop whatever this generator still
        holds of it (caches keyed on streams), so a closed session's state is freed with its session.
        Called on the engine's worker thread, like every other call. By default there is nothing to drop."""
        return None

    # ---- what each generator implements ---------------------------------------------------------

    @abc.abstractmethod
    def _new_stream(self, portrait: Portrait, seed: int) -> StreamT:
        """The state of one new session (its session number is set by `new_stream`)."""

    @abc.abstractmethod
    def _generate(
        self, streams: Sequence[StreamT], windows: Sequence[AudioWindow]
    ) -> tuple[torch.Tensor, list[dict[str, float]]]:
        """One batched step of checked, non-empty `streams` (one window each), advancing their state:
        frames (B, 3, H, W) float 0..1 on self.device, a tensor `_finish` may change in place, and
        one drive dict per stream (empty dicts when the generator has no drive values)."""

    @abc.abstractmethod
    def _rest_frame(self, stream: StreamT) -> torch.Tensor:
        """The portrait at rest for `stream`: (3, H, W) float 0..1 on self.device; not changed by the
        caller (it is copied), so it may be the stream's own tensor."""

    # ---- the one way out ------------------------------------------------------------------------

    def _finish(
        self, frames: torch.Tensor, streams: Sequence[StreamT], drives: Sequence[Mapping[str, float]]
    ) -> list[GeneratedFrame]:
        """The disclosure stage for the whole batch (each stream's session number, in batch order),
        then one uint8 conversion and one copy to the CPU: one GeneratedFrame per stream."""
        expected = (len(streams), 3, self.height_px, self.width_px)
        if tuple(frames.shape) != expected:
            raise GeneratorError(f"{self.name} made frames of shape {tuple(frames.shape)}, expected {expected}")
        if self.disclosure is not None:
            frames = self.disclosure.apply(frames, [s.session_number for s in streams])
        rgb = frames.mul_(255.0).clamp_(0.0, 255.0).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [GeneratedFrame(rgb=rgb[i], drive=drive) for i, drive in enumerate(drives)]


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
