"""A pipecat frame processor that gives a voice agent the talking portrait.

Put `PortraitVideoProcessor` after the TTS service and before the output transport. It takes the
bot's voice (`TTSAudioRawFrame`, or any `OutputAudioRawFrame` flowing downstream: int16 at any
sample rate, mono or stereo), animates the portrait from it with the project's own chain (the
windower, the generator on an `InferenceEngine`, its disclosure stage) and sends on, at the
configured frame rate, one `OutputImageRawFrame` (RGB) per frame followed by the voice that belongs
to that frame: a live source of video with its voice, as a camera and microphone would be.

Why it is built so:
- The voice comes from TTS in bursts, faster than real time; the frames must leave paced by frame
  index from one clock (re-anchored when the event loop stalls, never in bursts). So the voice is
  queued and cut per frame by a `VoiceTimeline` (avatar.integrations.timeline), which also keeps
  the live service's sync rule: the frame made for audio time t goes out with the voice of time
  t + voice_lead_s, and the voice passes unchanged, sample for sample.
- Without voice the frames go on: silence is fed to the generator, so the mouth rests and the
  eyes blink at full frame rate between utterances.
- Each frame's window is submitted `frames_ahead` frames before its time. A frame not ready at its
  time is replaced by the newest one made (its window withdrawn, or, when a step already has it,
  shown at the next frame time), so the output never stalls. New voice goes out about
  frames_ahead / fps + lookahead_s - voice_lead_s after it arrives.
- An interruption drops the queued voice and the frames made ahead at once; the windows after it
  hold silence only, so the mouth closes within the generator's release time (a few frames).
- Other frames pass through unchanged: system frames and upstream frames at once, downstream data
  and control frames in their place after the voice queued before them (as the output transport
  itself plays them), so a TTSStoppedFrame still follows the last of its audio. EndFrame and
  StopFrame let the queued voice play out first, then pass, and the processor stops.
- Every frame carries the project's disclosure (visible label, invisible watermark): the generator
  from `load_generator` ends with its disclosure stage, and a generator without one is refused.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import logging
import secrets
from typing import Any

import numpy as np
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputAudioRawFrame,
    OutputImageRawFrame,
    StartFrame,
    StopFrame,
    SystemFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor, FrameProcessorSetup

from avatar.clock import Clock, SessionClock
from avatar.config import AppConfig
from avatar.disclosure.payload import session_number
from avatar.engine import EngineClosed, EngineHandle, EngineOverloaded, InferenceEngine
from avatar.errors import GeneratorError
from avatar.generators import load_generator
from avatar.generators.base import GeneratedFrame, GeneratorStream
from avatar.integrations.timeline import Marker, VoicePiece, VoiceTimeline
from avatar.portrait import Portrait, default_portrait

logger = logging.getLogger(__name__)


class PortraitVideoProcessor(FrameProcessor):
    """TTS audio in; the portrait's video frames and the voice, in sync, out (module docstring).

    `config` sets the frame size and rate, the windows and the generator. `portrait` defaults to
    `default_portrait(config)`; `engine` to a new InferenceEngine around `load_generator(config)`,
    owned and closed by this processor (pass a shared, started engine to serve several pipelines
    of one process with one generator; it must make frames of `config.video`'s size and rate).
    `session_id` names the session in logs and sets the number its watermark carries (random by
    default); `seed` varies its idle motion. `frames_ahead`: how many frame periods before its time
    a frame's window goes to the engine (its time to be made). `prebuffer_s`: how much voice after
    a silence is queued before it starts, unless it has waited that long (timeline.py).
    `video_destination` becomes every image frame's `transport_destination`. `clock` paces the
    frames (tests pass a FakeClock).
    """

    def __init__(
        self,
        config: AppConfig,
        *,
        portrait: Portrait | None = None,
        engine: InferenceEngine | None = None,
        session_id: str | None = None,
        seed: int | None = None,
        frames_ahead: int = 2,
        prebuffer_s: float = 0.05,
        video_destination: str | None = None,
        clock: Clock | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if frames_ahead < 1:
            raise ValueError(f"frames_ahead must be at least 1, got {frames_ahead}")
        self._config = config
        self._fps = config.video.fps
        self._frames_ahead = frames_ahead
        self._video_destination = video_destination
        self._clock: Clock = clock or SessionClock()
        self.session_id = session_id or secrets.token_hex(8)
        self.session_number = session_number(self.session_id)  # what the watermark of its frames carries
        self._seed = config.generator.seed + (seed if seed is not None else self.session_number % 100_000)
        self._log = logging.LoggerAdapter(logger, {"session": self.session_id})
        self._portrait = portrait
        self._engine = engine
        self._owns_engine = engine is None
        self._stream: GeneratorStream | None = None
        self._handle: EngineHandle | None = None
        self._timeline: VoiceTimeline[Frame] = VoiceTimeline(
            config.windows, config.vad, self._fps, prebuffer_s=prebuffer_s
        )
        self._pending: dict[int, tuple[asyncio.Future[GeneratedFrame], bool]] = {}  # slot -> (frame, speaking)
        self._scheduled = 0  # the next slot whose window goes to the engine
        self._next_slot = 0  # the next slot to go out
        self._last_rgb: np.ndarray | None = None
        self._last_rgb_slot = -1  # the slot whose frame _last_rgb is
        self._pacer: asyncio.Task[None] | None = None
        self._drained = asyncio.Event()  # this run's pacer has ended (its End/StopFrame went out, or it stopped)
        self._sending = False  # the pacer is sending a slot's frames (a frame passing now could overtake them)
        self._opened = False
        self._failed = False
        self._stopped = False
        self._closed = False
        self._speaking = False
        self._counters = collections.Counter[str]()
        self._voice_in = collections.Counter[int]()  # samples per sample rate: exact totals
        self._voice_out = collections.Counter[int]()
        self._voice_dropped_s = 0.0

    # -- properties ------------------------------------------------------------------------------

    @property
    def fps(self) -> int:
        return self._fps

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) of the image frames."""
        return self._config.video.width_px, self._config.video.height_px

    @property
    def delay_s(self) -> float:
        """About how long voice that finds nothing queued before it takes from arriving to going out
        (plus up to a frame period; plus up to `prebuffer_s` when it comes in slower than real time)."""
        windows = self._config.windows
        return self._frames_ahead / self._fps + windows.lookahead_s - windows.voice_lead_s

    @property
    def running(self) -> bool:
        """Frames are being made and sent (from a StartFrame to the end or a StopFrame, unless it failed)."""
        pacer = self._pacer
        return pacer is not None and not pacer.done() and not self._stopped and not self._failed

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        """The background tasks this processor holds now (the pacer while it runs)."""
        return [self._pacer] if self._pacer is not None else []

    def stats(self) -> dict[str, Any]:
        """Frames sent (made, repeated), voice in and out, interruptions, re-anchors."""
        return {
            "session": self.session_id,
            "frames": self._counters["frames"],
            "new_frames": self._counters["new_frames"],
            "repeated_frames": self._counters["repeated_frames"],
            "dropped_windows": self._counters["dropped_windows"],
            "generator_errors": self._counters["generator_errors"],
            "reanchors": self._counters["reanchors"],
            "interruptions": self._counters["interruptions"],
            "voice_in_s": round(_seconds(self._voice_in), 3),
            "voice_out_s": round(_seconds(self._voice_out), 3),
            "voice_dropped_s": round(self._voice_dropped_s, 3),
            "voice_pending_s": round(self._timeline.pending_voice_s, 3),
            "speaking": self._speaking,
            "running": self.running,
        }

    # -- lifecycle -------------------------------------------------------------------------------

    async def setup(self, setup: FrameProcessorSetup) -> None:  # type: ignore[override]  # as pipecat's own
        """Load the portrait and the generator (off the event loop) and make this session's stream:
        the pipeline's slow start-up work, done while the other processors set up."""
        await super().setup(setup)
        await self.open()

    async def open(self) -> None:
        """Portrait, engine, stream, idle frame; once (setup() calls it)."""
        if self._opened or self._closed:
            return
        config = self._config
        if self._portrait is None:
            self._portrait = await asyncio.to_thread(default_portrait, config)
        if self._engine is None:
            generator = await asyncio.to_thread(load_generator, config)
            self._engine = InferenceEngine(generator, config.video, clock=self._clock)
        engine, generator = self._engine, self._engine.generator
        video = config.video
        if (generator.width_px, generator.height_px, generator.fps) != (video.width_px, video.height_px, video.fps):
            raise GeneratorError(
                f"the engine's generator makes {generator.width_px}x{generator.height_px} at {generator.fps} fps, "
                f"the config asks for {video.width_px}x{video.height_px} at {video.fps} fps"
            )
        if generator.disclosure is None:
            raise GeneratorError("the generator has no disclosure stage: build it with load_generator(config)")
        await engine.start()
        await engine.warm_up(self._portrait, config.windows)
        self._stream = await engine.new_stream(self._portrait, self._seed, self.session_number)
        self._last_rgb = await engine.call(generator.idle_frame, self._stream)
        if self._stopped:  # stopped while waiting on the engine
            return
        self._handle = engine.open(self._stream)
        self._opened = True
        self._log.info(
            "portrait %r, %dx%d at %d fps with %s, voice out about %.0f ms after it arrives, "
            "watermark session number %08x",
            self._portrait.name, video.width_px, video.height_px, self._fps, generator.name,
            self.delay_s * 1000, self.session_number,
        )  # fmt: skip

    async def cleanup(self) -> None:
        """Pipecat's teardown: the processor's own tasks, then everything this processor holds."""
        await super().cleanup()
        await self.aclose()

    async def stop(self) -> None:
        """Stop making and sending frames for good: the pacer, the pending windows and the engine
        handle (EndFrame, CancelFrame); idempotent. Frames then pass through unchanged."""
        self._stopped = True
        await self._stop_pacer()
        if self._engine is not None and self._handle is not None:
            self._engine.close(self._handle)
        self._handle = None

    async def _stop_pacer(self) -> None:
        """Cancel the pacer and withdraw the windows sent ahead (a StopFrame: pipecat keeps a stopped
        pipeline's processors for another run, and a StartFrame starts the pacer again)."""
        pacer, self._pacer = self._pacer, None
        if pacer is not None:
            await self.cancel_task(pacer)  # pipecat's task manager made it
        for future, _ in self._pending.values():
            self._withdraw(future)
        self._pending.clear()
        self._scheduled = self._next_slot
        self._drained.set()

    async def aclose(self) -> None:
        """`stop()`, then close the engine when this processor made it; idempotent."""
        if self._closed:
            return
        await self.stop()
        self._closed = True
        if self._owns_engine and self._engine is not None:
            await self._engine.aclose()
        self._stream = None
        self._log.info(
            "closed after %d frames (%d repeated), %.2f s of voice out",
            self._counters["frames"], self._counters["repeated_frames"], _seconds(self._voice_out),
        )  # fmt: skip

    # -- frames in -------------------------------------------------------------------------------

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        downstream = direction is FrameDirection.DOWNSTREAM
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            self._start_pacer()
        elif isinstance(frame, CancelFrame):
            await self.stop()  # the engine closes in cleanup(), which pipecat calls next
            await self.push_frame(frame, direction)
        elif isinstance(frame, InterruptionFrame):
            self._interrupt()
            await self.push_frame(frame, direction)
        elif isinstance(frame, (EndFrame, StopFrame)) and downstream:
            if self.running:
                self._timeline.push_marker(frame, interruptible=False)
                await self._drained.wait()  # the pacer sends the voice before it, then the frame
            else:
                await self.push_frame(frame, direction)
            if isinstance(frame, EndFrame):
                await self.stop()
            else:
                await self._stop_pacer()
        elif not downstream or isinstance(frame, SystemFrame) or not self.running:
            await self.push_frame(frame, direction)
        elif isinstance(frame, OutputAudioRawFrame) and self._queue_voice(frame):
            pass
        elif self._timeline.idle and not self._sending:
            await self.push_frame(frame, direction)
        else:
            self._timeline.push_marker(frame, interruptible=frame.interruptible)

    def _queue_voice(self, frame: OutputAudioRawFrame) -> bool:
        """Queue the voice of `frame`; False when it holds none to animate (it then passes as it is)."""
        channels, rate = frame.num_channels, frame.sample_rate
        if channels < 1 or rate <= 0:
            self._log.warning("passing on an audio frame of %d channels at %d Hz unanimated", channels, rate)
            return False
        width = 2 * channels
        usable = len(frame.audio) // width
        if usable == 0:
            return False
        if usable * width != len(frame.audio):
            self._counters["partial_samples"] += 1
            if self._counters["partial_samples"] == 1:
                self._log.warning("audio frames end in a partial sample; its bytes are dropped")
        samples = np.frombuffer(frame.audio, dtype="<i2", count=usable * channels).reshape(usable, channels)
        self._timeline.push_voice(samples, rate, frame, interruptible=frame.interruptible)
        self._voice_in[rate] += usable
        return True

    def _interrupt(self) -> None:
        """Drop the queued voice and the frames made ahead; the next frames are made from silence."""
        self._counters["interruptions"] += 1
        first = self._next_slot
        for slot in [s for s in self._pending if s >= first]:
            self._withdraw(self._pending.pop(slot)[0])
        dropped = self._timeline.interrupt(first)
        self._voice_dropped_s += dropped
        self._scheduled = first
        if self.running:
            self._schedule(first + self._frames_ahead - 1)
        self._log.info("interrupted: %.2f s of queued voice dropped", dropped)

    # -- frames out ------------------------------------------------------------------------------

    def _start_pacer(self) -> None:
        if self._stopped or self._pacer is not None:
            return
        if not self._opened:
            self._log.error("the portrait is not loaded (its setup failed): frames pass through without video")
            return
        self._drained = asyncio.Event()
        self._scheduled = self._next_slot
        self._schedule(self._next_slot + self._frames_ahead - 1)
        self._pacer = self.create_task(self._run_pacer(), "portrait-pacer")

    async def _run_pacer(self) -> None:
        try:
            await self._pace()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or a failing engine must not swallow the voice
            self._failed = True
            self._log.exception("portrait video failed: the voice passes on without it")
            for frame in self._outgoing(self._timeline.drain()):
                await self.push_frame(frame)
                _count_voice(frame, self._voice_out)
            await self.push_error(f"portrait video failed: {exc}", exception=exc)
        finally:
            self._drained.set()

    async def _pace(self) -> None:
        """One image and its voice per frame period, by frame index from one anchor."""
        period = 1.0 / self._fps
        anchor = self._clock.now_s() - self._next_slot * period  # the next slot goes out now
        while True:
            slot = self._next_slot
            due = anchor + slot * period
            await self._clock.sleep_until(due)
            late = self._clock.now_s() - due
            if late > period / 2:  # the loop stalled: move the grid, never send a burst
                anchor += late
                self._counters["reanchors"] += 1
            rgb = self._frame_for(slot)
            outputs = self._outgoing(self._timeline.take(slot))
            self._next_slot = slot + 1
            self._schedule(slot + self._frames_ahead)
            epoch = self._timeline.epoch
            self._sending = True
            try:
                await self.push_frame(self._image(rgb))
                self._counters["frames"] += 1
                for frame in outputs:
                    if self._timeline.epoch != epoch and frame.interruptible:
                        self._voice_dropped_s += _count_voice(frame, collections.Counter())
                        continue  # an interruption came while this slot went out
                    await self.push_frame(frame)
                    _count_voice(frame, self._voice_out)
                    if isinstance(frame, (EndFrame, StopFrame)):
                        return
            finally:
                self._sending = False

    def _schedule(self, last_slot: int) -> None:
        """Submit the windows of every slot up to `last_slot` to the engine."""
        if self._handle is None:
            return
        while self._scheduled <= last_slot:
            slot = self._scheduled
            self._scheduled += 1
            window = self._timeline.window(slot)
            try:
                future = self._handle.submit_nowait(window)
            except (EngineOverloaded, EngineClosed) as exc:
                self._counters["dropped_windows"] += 1
                if self._counters["dropped_windows"] <= 3:
                    self._log.warning("frame %d not made: %s", slot, exc)
                continue
            self._pending[slot] = (future, window.speaking)

    def _frame_for(self, slot: int) -> np.ndarray:
        """The image of `slot`: its frame when it is ready, else the newest frame made so far. A
        frame still being made when its time has passed is shown at the next frame time instead
        (a generator slower than real time still moves the face, a step late)."""
        assert self._last_rgb is not None  # set when the processor opened
        future, speaking = self._pending.pop(slot, (None, False))
        if future is not None and future.done():
            self._take_frame(slot, speaking, self._timeline.epoch, future)
            if self._last_rgb_slot == slot:
                self._counters["new_frames"] += 1
                return self._last_rgb
        elif future is not None and (self._handle is None or not self._handle.withdraw(future)):
            future.add_done_callback(functools.partial(self._take_frame, slot, speaking, self._timeline.epoch))
        self._counters["repeated_frames"] += 1
        return self._last_rgb

    def _take_frame(self, slot: int, speaking: bool, epoch: int, future: asyncio.Future[GeneratedFrame]) -> None:
        """Keep the frame of `slot` as the newest one, unless an interruption or a newer frame came."""
        if future.cancelled() or epoch != self._timeline.epoch or slot <= self._last_rgb_slot:
            return
        error = future.exception()
        if error is not None:
            self._counters["generator_errors"] += 1
            if self._counters["generator_errors"] <= 3:
                self._log.error("frame %d failed: %s", slot, error)
            return
        self._last_rgb = future.result().rgb
        self._last_rgb_slot = slot
        self._speaking = speaking

    def _withdraw(self, future: asyncio.Future[GeneratedFrame]) -> None:
        if self._handle is None or not self._handle.withdraw(future):
            future.cancel()  # taken by a step already: its frame is dropped when it comes

    def _image(self, rgb: np.ndarray) -> OutputImageRawFrame:
        height, width = rgb.shape[:2]
        frame = OutputImageRawFrame(image=rgb.tobytes(), size=(width, height), format="RGB")
        frame.transport_destination = self._video_destination
        return frame

    def _outgoing(self, outputs: list[VoicePiece[Frame] | Marker[Frame]]) -> list[Frame]:
        """The frames of one slot's outputs: markers as they came; consecutive voice pieces of one
        stream (format, frame type, context, destination) as one frame (`_voice_frame`)."""
        frames: list[Frame] = []
        pieces: list[VoicePiece[Frame]] = []
        for out in outputs:
            if pieces and (isinstance(out, Marker) or not _same_stream(pieces[0], out)):
                frames.append(self._voice_frame(pieces))
                pieces = []
            if isinstance(out, Marker):
                frames.append(out.item)
            else:
                pieces.append(out)
        if pieces:
            frames.append(self._voice_frame(pieces))
        return frames

    def _voice_frame(self, pieces: list[VoicePiece[Frame]]) -> OutputAudioRawFrame:
        """A frame of the first piece's original type and metadata (context id, destination,
        interruptible) holding the pieces' samples."""
        original = pieces[0].tag
        assert isinstance(original, OutputAudioRawFrame)  # voice is queued from audio frames only
        samples = np.concatenate([p.samples for p in pieces]) if len(pieces) > 1 else pieces[0].samples
        frame = dataclasses.replace(original, audio=samples.tobytes())
        frame.transport_source = original.transport_source
        frame.transport_destination = original.transport_destination
        frame.metadata = dict(original.metadata)
        frame.interruptible = original.interruptible
        return frame


def _count_voice(frame: Frame, totals: collections.Counter[int]) -> float:
    """Add the samples of an audio frame to `totals` (per sample rate); its seconds (0 for others)."""
    if not isinstance(frame, OutputAudioRawFrame) or frame.sample_rate <= 0:
        return 0.0
    totals[frame.sample_rate] += frame.num_frames
    return frame.num_frames / frame.sample_rate


def _seconds(totals: collections.Counter[int]) -> float:
    return sum(samples / rate for rate, samples in totals.items())


def _same_stream(a: VoicePiece[Frame], b: VoicePiece[Frame]) -> bool:
    """Whether two pieces of voice may go out in one frame."""
    ta, tb = a.tag, b.tag
    return (
        a.sample_rate_hz == b.sample_rate_hz
        and a.samples.shape[1] == b.samples.shape[1]
        and type(ta) is type(tb)
        and ta.interruptible == tb.interruptible
        and ta.transport_destination == tb.transport_destination
        and getattr(ta, "context_id", None) == getattr(tb, "context_id", None)
    )
