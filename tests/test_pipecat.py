"""The pipecat frame processor (avatar.integrations.pipecat) in real pipecat pipelines.

Real speech goes through a real Pipeline / PipelineWorker / WorkerRunner: espeak-ng sentences and a
recording of a human voice (Debian alsa-utils' Front_Center.wav, 48 kHz). A recording sink at the
end of the pipeline keeps every frame in the order it arrives; the checks read the frames and the
voice that follows each of them (the processor sends a frame's voice right after it). Waits are on
events (frames arriving), bounded only to keep a broken run from hanging; nothing here is timed.
The pure voice timeline behind the processor (avatar.integrations.timeline) is tested at the end.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import wave
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    DataFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputAudioRawFrame,
    OutputImageRawFrame,
    StartFrame,
    StopFrame,
    SystemFrame,
    TextFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from avatar.clock import FakeClock
from avatar.config import AppConfig, with_overrides
from avatar.disclosure.mark import VisibleMark
from avatar.integrations.pipecat import PortraitVideoProcessor
from avatar.integrations.timeline import Marker, VoicePiece, VoiceTimeline
from avatar.portrait import Portrait, default_portrait
from avatar.speech import synthesize_speech
from tests.label_check import label_contrast

REPO = Path(__file__).resolve().parent.parent
SIZE = 128
FPS = 25
HUMAN_VOICE = Path("/usr/share/sounds/alsa/Front_Center.wav")
SENTENCE = "Open the window wide. Move the boat, my friend."
LONG_SENTENCE = "We open the big old barn door and walk along the valley all the way to the harbour."
WAIT_S = 60.0  # a bound on every wait for frames, so a broken run fails instead of hanging


# ---- the pipeline under test -------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _quiet_pipecat() -> object:
    """Pipecat logs with loguru at DEBUG on stderr: warnings only here, the default again after."""
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    yield
    logger.remove()
    logger.add(sys.stderr)


@pytest.fixture(scope="module")
def pv_config() -> AppConfig:
    # No nod or sway: the mouth region then changes only when the mouth does (as tests/test_camera.py).
    video = {"width_px": SIZE, "height_px": SIZE, "fps": FPS}
    return with_overrides(AppConfig(), video=video, warp={"head_motion": 0.0})


@pytest.fixture(scope="module")
def portrait(pv_config: AppConfig) -> Portrait:
    return default_portrait(pv_config)


@dataclass(frozen=True)
class Voice:
    """A turn's audio as a TTS service would push it."""

    pcm: bytes  # int16 interleaved
    rate: int
    channels: int

    @property
    def samples(self) -> int:
        return len(self.pcm) // (2 * self.channels)

    @property
    def duration_s(self) -> float:
        return self.samples / self.rate

    def frames(self, context_id: str = "turn", chunk_s: float = 0.02) -> list[Frame]:
        step = round(chunk_s * self.rate) * 2 * self.channels
        chunks: list[Frame] = [
            TTSAudioRawFrame(self.pcm[i : i + step], self.rate, self.channels, context_id=context_id)
            for i in range(0, len(self.pcm), step)
        ]
        return [TTSStartedFrame(context_id=context_id), *chunks, TTSStoppedFrame(context_id=context_id)]


def read_voice(path: Path) -> Voice:
    with wave.open(str(path), "rb") as wav:
        assert wav.getsampwidth() == 2
        return Voice(wav.readframes(wav.getnframes()), wav.getframerate(), wav.getnchannels())


@pytest.fixture(scope="module")
def espeak_voice(tmp_path_factory: pytest.TempPathFactory) -> Voice:
    """espeak-ng at 24 kHz (a common TTS rate), mono, with its own short silences around it."""
    path = tmp_path_factory.mktemp("pipecat") / "espeak24k.wav"
    return read_voice(synthesize_speech(SENTENCE, path, sample_rate_hz=24_000, lead_silence_s=0.1, tail_silence_s=0.1))


@pytest.fixture(scope="module")
def long_voice(tmp_path_factory: pytest.TempPathFactory) -> Voice:
    path = tmp_path_factory.mktemp("pipecat") / "long16k.wav"
    return read_voice(synthesize_speech(LONG_SENTENCE, path, lead_silence_s=0.0, tail_silence_s=0.0))


@pytest.fixture(scope="module")
def human_voice() -> Voice:
    if not HUMAN_VOICE.is_file():
        pytest.skip(f"{HUMAN_VOICE} is missing (Debian package alsa-utils)")
    voice = read_voice(HUMAN_VOICE)
    assert (voice.rate, voice.channels) == (48_000, 1)
    return voice


class RecordingSink(FrameProcessor):
    """The end of the pipeline: keeps every downstream frame, in the order it comes."""

    def __init__(self) -> None:
        super().__init__(name="RecordingSink", enable_direct_mode=True)  # direct: the order of pushing
        self.frames: list[Frame] = []
        self._changed = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction is FrameDirection.DOWNSTREAM:
            self.frames.append(frame)
            self._changed.set()
        await self.push_frame(frame, direction)

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        async def poll() -> None:
            while not condition():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(poll(), WAIT_S)

    @property
    def images(self) -> int:
        return sum(isinstance(f, OutputImageRawFrame) for f in self.frames)

    @property
    def voice_bytes(self) -> int:
        return sum(len(f.audio) for f in self.frames if isinstance(f, OutputAudioRawFrame))

    async def wait_for_images(self, more: int) -> None:
        target = self.images + more
        await self.wait_until(lambda: self.images >= target)

    async def wait_for_voice(self, voice_bytes: int) -> None:
        await self.wait_until(lambda: self.voice_bytes >= voice_bytes)


class UpstreamRecorder(FrameProcessor):
    """The start of the pipeline: keeps every upstream frame that reaches it."""

    def __init__(self) -> None:
        super().__init__(name="UpstreamRecorder", enable_direct_mode=True)
        self.frames: list[Frame] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction is FrameDirection.UPSTREAM:
            self.frames.append(frame)
        await self.push_frame(frame, direction)


@dataclass
class Run:
    sink: RecordingSink
    processor: PortraitVideoProcessor
    upstream: UpstreamRecorder
    pacer: asyncio.Task[None] | None = None
    engine_threads_after: list[str] = field(default_factory=list)

    @property
    def frames(self) -> list[Frame]:
        return self.sink.frames


Drive = Callable[[PipelineWorker, RecordingSink, PortraitVideoProcessor], Awaitable[None]]


async def run_pipeline(
    config: AppConfig, portrait: Portrait, drive: Drive, clock: FakeClock | None = None, cleanup: bool = False
) -> Run:
    """Pipeline([UpstreamRecorder, PortraitVideoProcessor, RecordingSink]) on a WorkerRunner; `drive`
    queues frames once the StartFrame has reached the sink, and ends (or cancels) the pipeline.
    `cleanup`: clean the processor up afterwards, as the owner of a stopped pipeline does."""
    processor = PortraitVideoProcessor(config, portrait=portrait, session_id="pipecat-test", clock=clock)
    sink, upstream = RecordingSink(), UpstreamRecorder()
    worker = PipelineWorker(Pipeline([upstream, processor, sink]), enable_rtvi=False, cancel_on_idle_timeout=False)
    runner = WorkerRunner(handle_sigint=False)
    run = Run(sink, processor, upstream)

    async def go() -> None:
        try:
            await sink.wait_until(lambda: any(isinstance(f, StartFrame) for f in sink.frames))
            run.pacer = processor.tasks[0] if processor.tasks else None
            await drive(worker, sink, processor)
        except BaseException:
            await worker.cancel()
            raise

    await runner.add_workers(worker)
    await asyncio.wait_for(asyncio.gather(runner.run(), go()), 3 * WAIT_S)
    if cleanup:
        await processor.cleanup()
    run.engine_threads_after = [t.name for t in threading.enumerate() if t.name.startswith("avatar-engine")]
    return run


def speak_then_rest(voice: Voice, rest_before: int = 10, rest_after: int = 25) -> Drive:
    async def drive(worker: PipelineWorker, sink: RecordingSink, processor: PortraitVideoProcessor) -> None:
        await sink.wait_for_images(rest_before)
        voice_before = sink.voice_bytes
        await worker.queue_frames(voice.frames())
        await sink.wait_for_voice(voice_before + len(voice.pcm))
        await sink.wait_for_images(rest_after)
        await worker.queue_frame(EndFrame())

    return drive


# ---- reading the output ------------------------------------------------------------------------


@dataclass
class Slot:
    """One image and what went out after it, up to the next image."""

    rgb: np.ndarray
    voice: list[OutputAudioRawFrame]
    others: list[Frame]

    @property
    def samples(self) -> np.ndarray:
        if not self.voice:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate([np.frombuffer(f.audio, dtype="<i2") for f in self.voice])

    def rms(self) -> float:
        samples = self.samples.astype(np.float64)
        return float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0


def slots(frames: list[Frame]) -> list[Slot]:
    out: list[Slot] = []
    for frame in frames:
        if isinstance(frame, OutputImageRawFrame):
            width, height = frame.size
            out.append(Slot(np.frombuffer(frame.image, np.uint8).reshape(height, width, 3), [], []))
        elif out and isinstance(frame, OutputAudioRawFrame):
            out[-1].voice.append(frame)
        elif out:
            out[-1].others.append(frame)
    return out


def mouth_box(portrait: Portrait) -> tuple[int, int, int, int]:
    """The lips' box with a margin (as tests/test_camera.py measures the mouth)."""
    lips = portrait.landmarks[48:68]
    (x0, y0), (x1, y1) = lips.min(axis=0), lips.max(axis=0)
    margin = 0.3 * (x1 - x0)
    return int(x0 - margin), int(y0 - margin), int(x1 + margin), int(y1 + margin)


def mouth_change(run_slots: list[Slot], portrait: Portrait) -> np.ndarray:
    """Mean absolute difference of each frame's mouth region from the first frame's (at rest)."""
    x0, y0, x1, y1 = mouth_box(portrait)
    rest = run_slots[0].rgb[y0:y1, x0:x1].astype(np.float32)
    return np.array([np.abs(s.rgb[y0:y1, x0:x1].astype(np.float32) - rest).mean() for s in run_slots])


def voice_of(run: Run) -> bytes:
    return b"".join(f.audio for f in run.frames if isinstance(f, OutputAudioRawFrame))


# ---- espeak-ng speech and a human voice through the pipeline -----------------------------------


@pytest.fixture(scope="module")
def espeak_run(pv_config: AppConfig, portrait: Portrait, espeak_voice: Voice) -> Run:
    async def main() -> Run:
        return await run_pipeline(pv_config, portrait, speak_then_rest(espeak_voice))

    return asyncio.run(main())


@pytest.fixture(scope="module")
def human_run(pv_config: AppConfig, portrait: Portrait, human_voice: Voice) -> Run:
    async def main() -> Run:
        return await run_pipeline(pv_config, portrait, speak_then_rest(human_voice))

    return asyncio.run(main())


def test_frames_have_the_configured_size_and_rate(espeak_run: Run, espeak_voice: Voice) -> None:
    images = [f for f in espeak_run.frames if isinstance(f, OutputImageRawFrame)]
    assert images and all(f.size == (SIZE, SIZE) and f.format == "RGB" for f in images)
    assert all(len(f.image) == SIZE * SIZE * 3 for f in images)
    # One image per frame period of the voice: the frames carrying it span its duration at FPS.
    run_slots = slots(espeak_run.frames)
    with_voice = [i for i, s in enumerate(run_slots) if s.voice]
    assert with_voice == list(range(with_voice[0], with_voice[-1] + 1)), "a frame without its voice mid-turn"
    assert abs(len(with_voice) - espeak_voice.duration_s * FPS) <= 2
    # Sample-accurate: every frame inside the turn carries exactly one frame period of voice.
    per_frame = espeak_voice.rate // FPS
    inner = [run_slots[i].samples.size for i in with_voice[1:-1]]
    assert inner and all(n == per_frame for n in inner), set(inner)
    assert sum(1 for s in run_slots[with_voice[-1] + 1 :]) >= 25, "rest frames after the turn"


def test_the_voice_goes_out_unchanged(espeak_run: Run, espeak_voice: Voice) -> None:
    assert voice_of(espeak_run) == espeak_voice.pcm
    voice = [f for f in espeak_run.frames if isinstance(f, OutputAudioRawFrame)]
    assert all(type(f) is TTSAudioRawFrame and f.context_id == "turn" for f in voice)
    assert all((f.sample_rate, f.num_channels) == (espeak_voice.rate, espeak_voice.channels) for f in voice)
    stats = espeak_run.processor.stats()
    assert stats["voice_in_s"] == stats["voice_out_s"] == round(espeak_voice.duration_s, 3)
    assert stats["frames"] == len(slots(espeak_run.frames)) and stats["interruptions"] == 0


def test_tts_control_frames_keep_their_place_around_the_voice(espeak_run: Run) -> None:
    kinds = [type(f) for f in espeak_run.frames if not isinstance(f, (OutputImageRawFrame, OutputAudioRawFrame))]
    assert kinds == [StartFrame, TTSStartedFrame, TTSStoppedFrame, EndFrame]
    frames = espeak_run.frames
    voice_at = [i for i, f in enumerate(frames) if isinstance(f, OutputAudioRawFrame)]
    started = next(i for i, f in enumerate(frames) if isinstance(f, TTSStartedFrame))
    stopped = next(i for i, f in enumerate(frames) if isinstance(f, TTSStoppedFrame))
    assert started < voice_at[0] and stopped == voice_at[-1] + 1  # TTSStoppedFrame right after its last audio


def _check_mouth(run: Run, portrait: Portrait, min_speaking: int) -> tuple[np.ndarray, np.ndarray]:
    run_slots = slots(run.frames)
    change = mouth_change(run_slots, portrait)
    rms = np.array([s.rms() for s in run_slots])
    with_voice = np.flatnonzero([bool(s.voice) for s in run_slots])
    speaking = rms > 0.15 * rms.max()
    before = np.arange(0, with_voice[0])
    after = np.arange(with_voice[-1] + 8, len(run_slots))  # the mouth closes within a few frames
    assert len(before) >= 8 and len(after) >= 15 and speaking.sum() >= min_speaking
    assert change[before].max() < 3.0, "the mouth moved before the voice"
    assert np.median(change[speaking]) > 6.0, "the mouth hardly moved with the voice"
    assert change[after].max() < 3.0, "the mouth did not come to rest after the voice"
    return change, rms


def _best_lag(change: np.ndarray, rms: np.ndarray, max_lag: int = 4) -> int:
    """The shift of the mouth against its frames' voice (frames; positive: the mouth is late)."""

    def corr(lag: int) -> float:
        a = change[max(0, lag) : len(change) + min(0, lag)]
        b = rms[max(0, -lag) : len(rms) - max(0, lag)]
        return float(np.corrcoef(a, b)[0, 1])

    return max(range(-max_lag, max_lag + 1), key=corr)


def test_the_mouth_moves_with_espeak_speech_and_rests_after(espeak_run: Run, portrait: Portrait) -> None:
    change, rms = _check_mouth(espeak_run, portrait, min_speaking=40)
    assert np.corrcoef(change, rms)[0, 1] > 0.5
    # In sync: frame k goes out with the voice from k / fps + voice_lead_s on (the service's rule), and
    # its mouth reads the voice around k / fps: the mouth follows its frames' voice by 0 or 1 frame.
    assert _best_lag(change, rms) in (0, 1)


def test_the_mouth_moves_with_a_human_voice_and_rests_after(human_run: Run, portrait: Portrait) -> None:
    change, rms = _check_mouth(human_run, portrait, min_speaking=10)
    assert np.corrcoef(change, rms)[0, 1] > 0.5
    assert _best_lag(change, rms) in (0, 1)


def test_a_48khz_human_voice_goes_out_unchanged(human_run: Run, human_voice: Voice) -> None:
    assert voice_of(human_run) == human_voice.pcm
    inner = [s.samples.size for s in slots(human_run.frames) if s.voice][1:-1]
    assert inner and set(inner) == {48_000 // FPS}


def test_every_frame_carries_the_visible_label(espeak_run: Run, pv_config: AppConfig) -> None:
    """The generator's disclosure stage marks every frame, rest frames and speaking frames alike (the
    invisible watermark is read back from the example's MP4 by `avatar verify`)."""
    d = pv_config.disclosure
    assert d.mark
    mark = VisibleMark(d.mark_text, d.mark_corner, SIZE, SIZE, torch.device("cpu"))
    run_slots = slots(espeak_run.frames)
    for s in run_slots[::5]:
        text, pill = label_contrast(s.rgb, mark)
        assert text - pill > 0.4, (text, pill)


# ---- interruption, order, lifecycle --------------------------------------------------------------


def test_an_interruption_drops_the_rest_of_the_turn(pv_config: AppConfig, portrait: Portrait, long_voice: Voice,
                                                    espeak_voice: Voice) -> None:  # fmt: skip
    async def drive(worker: PipelineWorker, sink: RecordingSink, processor: PortraitVideoProcessor) -> None:
        await sink.wait_for_images(8)
        await worker.queue_frames(long_voice.frames("first"))
        await sink.wait_for_voice(len(long_voice.pcm) // 3)  # a third of it out: interrupt
        await worker.queue_frame(InterruptionFrame())
        await sink.wait_until(lambda: any(isinstance(f, InterruptionFrame) for f in sink.frames))
        await sink.wait_for_images(30)
        await worker.queue_frames(espeak_voice.frames("second"))  # the next turn plays in full
        await sink.wait_until(lambda: any(isinstance(f, TTSStoppedFrame) and f.context_id == "second"
                                          for f in sink.frames))  # fmt: skip
        await sink.wait_for_images(15)
        await worker.queue_frame(EndFrame())

    run = asyncio.run(run_pipeline(pv_config, portrait, drive))
    frames = run.frames
    cut = next(i for i, f in enumerate(frames) if isinstance(f, InterruptionFrame))
    first = [f for f in frames if isinstance(f, TTSAudioRawFrame) and f.context_id == "first"]
    # Audio stops at the interruption: nothing of the first turn after it, and what went out is
    # its beginning, unchanged.
    assert all(i < cut for i, f in enumerate(frames) if isinstance(f, TTSAudioRawFrame) and f.context_id == "first")
    played = b"".join(f.audio for f in first)
    assert len(long_voice.pcm) // 3 <= len(played) < len(long_voice.pcm) * 2 // 3
    assert long_voice.pcm.startswith(played)
    stats = run.processor.stats()
    assert stats["interruptions"] == 1
    unplayed_s = long_voice.duration_s - len(played) / 2 / long_voice.rate
    assert stats["voice_dropped_s"] == pytest.approx(unplayed_s, abs=0.002)
    # The mouth rests within a few frames of the interruption, and frames go on at full rate.
    after = slots(frames[cut:])
    change = mouth_change(slots(frames), portrait)[-len(after) :]
    quiet = next(i for i, s in enumerate(after) if any(isinstance(f, TTSAudioRawFrame) for f in s.voice))
    assert quiet >= 30
    assert change[:quiet][8:].max() < 3.0, "the mouth did not come to rest after the interruption"
    # The turn after the interruption goes out whole, in sync again.
    second = b"".join(f.audio for f in frames if isinstance(f, TTSAudioRawFrame) and f.context_id == "second")
    assert second == espeak_voice.pcm
    assert np.median(change[quiet:][[s.rms() > 300 for s in after[quiet:]]]) > 6.0


@dataclass
class Note(DataFrame):
    """A data frame of the test's own, in the pipeline with the voice."""

    text: str = ""


@dataclass
class Ping(SystemFrame):
    """A system frame of the test's own."""

    n: int = 0


def test_other_frames_pass_through_unchanged_and_in_order(pv_config: AppConfig, portrait: Portrait,
                                                         espeak_voice: Voice) -> None:  # fmt: skip
    half = len(espeak_voice.pcm) // 4 * 2
    first, second = Voice(espeak_voice.pcm[:half], 24_000, 1), Voice(espeak_voice.pcm[half:], 24_000, 1)
    text, note, late = TextFrame("between"), Note("after the voice"), Note("when idle")
    ping, up = Ping(1), Note("upstream")

    async def drive(worker: PipelineWorker, sink: RecordingSink, processor: PortraitVideoProcessor) -> None:
        await sink.wait_for_images(5)
        head, tail = first.frames(), second.frames()
        await worker.queue_frames([*head[:-1], text, *tail[1:-1], note, tail[-1]])
        await worker.queue_frame(ping)  # a system frame: at once, ahead of the queued voice
        await worker.queue_frame(up, FrameDirection.UPSTREAM)
        await sink.wait_for_voice(len(espeak_voice.pcm))
        await sink.wait_for_images(10)
        await worker.queue_frame(late)  # nothing queued: it passes at once
        await sink.wait_until(lambda: late in sink.frames)
        await worker.queue_frame(EndFrame())

    run = asyncio.run(run_pipeline(pv_config, portrait, drive))
    frames = run.frames
    others = [f for f in frames if not isinstance(f, (OutputImageRawFrame, OutputAudioRawFrame, StartFrame))]
    assert [f for f in others if f is not ping] == [
        next(f for f in frames if isinstance(f, TTSStartedFrame)), text, note,
        next(f for f in frames if isinstance(f, TTSStoppedFrame)), late,
        next(f for f in frames if isinstance(f, EndFrame)),
    ]  # fmt: skip
    assert (text.text, note.text) == ("between", "after the voice")  # the same objects, unchanged
    voice_before_text = b"".join(f.audio for f in frames[: frames.index(text)] if isinstance(f, OutputAudioRawFrame))
    assert voice_before_text == first.pcm  # the text goes out right after the voice queued before it
    assert voice_of(run) == espeak_voice.pcm
    voice_at = [i for i, f in enumerate(frames) if isinstance(f, OutputAudioRawFrame)]
    assert frames.index(ping) < voice_at[len(voice_at) // 2], "the system frame waited for the voice"
    assert voice_at[-1] < frames.index(note) < frames.index(late)
    assert up in run.upstream.frames


def test_the_end_frame_waits_for_the_voice_and_everything_is_released(pv_config: AppConfig, portrait: Portrait,
                                                                      espeak_voice: Voice) -> None:  # fmt: skip
    async def drive(worker: PipelineWorker, sink: RecordingSink, processor: PortraitVideoProcessor) -> None:
        await sink.wait_for_images(3)
        await worker.queue_frames([*espeak_voice.frames(), EndFrame()])  # the end right behind the voice

    run = asyncio.run(run_pipeline(pv_config, portrait, drive))
    assert voice_of(run) == espeak_voice.pcm
    assert isinstance(run.frames[-1], EndFrame)
    assert run.pacer is not None and run.pacer.done()
    assert run.processor.closed and not run.processor.running and run.processor.tasks == []
    assert run.engine_threads_after == []
    asyncio.run(run.processor.aclose())  # idempotent


@pytest.mark.parametrize("stop", ["cancel", "stop"])
def test_cancel_and_stop_frames_end_the_frames(pv_config: AppConfig, portrait: Portrait, long_voice: Voice,
                                               stop: str) -> None:  # fmt: skip
    async def drive(worker: PipelineWorker, sink: RecordingSink, processor: PortraitVideoProcessor) -> None:
        await sink.wait_for_images(3)
        await worker.queue_frames(long_voice.frames())
        await sink.wait_for_voice(len(long_voice.pcm) // 4)
        if stop == "cancel":
            await worker.cancel()
        else:
            await worker.queue_frame(StopFrame())  # the worker ends when it reaches the sink

    run = asyncio.run(run_pipeline(pv_config, portrait, drive, cleanup=stop == "stop"))
    assert run.pacer is not None and run.pacer.done()
    assert not run.processor.running and run.processor.tasks == []
    # Pipecat keeps a stopped pipeline's processors (for another run): the owner's cleanup closes them.
    assert run.processor.closed and run.engine_threads_after == []
    frames = run.frames
    if stop == "cancel":  # the rest of the voice is dropped; nothing follows the CancelFrame
        cancel = next(i for i, f in enumerate(frames) if isinstance(f, CancelFrame))
        assert not any(isinstance(f, (OutputImageRawFrame, OutputAudioRawFrame)) for f in frames[cancel:])
        assert len(voice_of(run)) < len(long_voice.pcm)
    else:  # a StopFrame lets the queued voice play out first, then passes, and the frames end
        index = next(i for i, f in enumerate(frames) if isinstance(f, StopFrame))
        assert voice_of(run) == long_voice.pcm
        assert not any(isinstance(f, (OutputImageRawFrame, OutputAudioRawFrame)) for f in frames[index:])


# ---- pacing, on a fake clock ----------------------------------------------------------------------


def test_frames_are_paced_by_frame_index_never_in_bursts(pv_config: AppConfig, portrait: Portrait,
                                                         speech_wav_48k_stereo: Path) -> None:  # fmt: skip
    """One image per frame period of the processor's clock, also while the voice of a turn is queued
    all at once, and after the clock jumps (a stalled loop): one frame then, not a catch-up burst.
    The voice here is 48 kHz stereo."""
    voice = read_voice(speech_wav_48k_stereo)
    clock = FakeClock(start_s=50.0)
    period = 1.0 / FPS
    step_s = period + 1e-9  # a hair over a period: float sums never fall short of a frame's time
    counts: list[int] = []

    async def drive(worker: PipelineWorker, sink: RecordingSink, processor: PortraitVideoProcessor) -> None:
        await sink.wait_until(lambda: sink.images >= 1)  # slot 0 goes out at once
        await worker.queue_frames(voice.frames())
        await sink.wait_until(lambda: any(isinstance(f, TTSStartedFrame) for f in sink.frames))
        for step in range(round(voice.duration_s * FPS) + 20):
            target = sink.images + 1
            if step == 40:  # the loop stalled for half a second: the frame goes out late, and alone
                clock.jump(0.5)
                await clock.advance(0.0)
            else:
                await clock.advance(step_s)
            await sink.wait_until(lambda target=target: sink.images >= target)
            await asyncio.sleep(0.01)  # a burst would show up here
            counts.append(sink.images)
        await worker.queue_frame(EndFrame())  # it goes out with the next frame
        while not any(isinstance(f, EndFrame) for f in sink.frames):
            await clock.advance(step_s)
            await asyncio.sleep(0.01)

    run = asyncio.run(run_pipeline(pv_config, portrait, drive, clock=clock))
    assert counts == list(range(2, len(counts) + 2)), "more than one image in a frame period"
    assert run.processor.stats()["reanchors"] == 1
    assert voice_of(run) == voice.pcm
    inner = [s.samples.size for s in slots(run.frames) if s.voice][1:-1]
    assert set(inner) == {2 * 48_000 // FPS}  # interleaved stereo: two values per sample


# ---- the example -------------------------------------------------------------------------------------


def test_the_example_writes_a_marked_signed_mp4(tmp_path: Path) -> None:
    out = tmp_path / "example.mp4"
    result = subprocess.run(
        [sys.executable, "examples/pipecat_portrait.py", "--size", str(SIZE), "--pause", "0.3",
         "--say", "Hello from the pipeline.", "-o", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},  # this checkout's avatar, whatever is installed
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote {out}" in result.stdout
    with av.open(str(out)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.width, video.codec_context.height) == (SIZE, SIZE)
        assert video.average_rate == FPS
        frames = sum(1 for _ in container.decode(video))
    assert frames >= FPS * 1.5  # the sentence, with rest before and after it
    assert audio is not None
    verify = subprocess.run(
        [sys.executable, "-m", "avatar", "verify", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    report = verify.stdout.strip().splitlines()[-1]
    assert '"synthetic": true' in report and '"detected": true' in report and '"valid": true' in report


# ---- the voice timeline, on its own ------------------------------------------------------------------


Output = VoicePiece[str] | Marker[str]


def _timeline_out(timeline: VoiceTimeline[str], slots_n: int, first_slot: int = 0) -> list[list[Output]]:
    out = []
    for n in range(first_slot, first_slot + slots_n):
        timeline.window(n)
        out.append(timeline.take(n))
    return out


def test_the_timeline_cuts_any_voice_exactly_per_frame(pv_config: AppConfig) -> None:
    rng = np.random.default_rng(3)
    for rate, channels in ((44_100, 2), (22_050, 1), (8_000, 1), (16_000, 2)):
        timeline: VoiceTimeline[str] = VoiceTimeline(pv_config.windows, pv_config.vad, FPS)
        voice = rng.integers(-20_000, 20_000, size=(rate * 2, channels), dtype=np.int16)
        start = 0
        while start < voice.shape[0]:  # chunks of any length
            size = int(rng.integers(1, rate // 10))
            timeline.push_voice(voice[start : start + size], rate, f"chunk{start}")
            start += size
        timeline.push_marker("done")
        out = [item for items in _timeline_out(timeline, 2 * FPS + 10) for item in items]
        pieces = [p for p in out if isinstance(p, VoicePiece)]
        assert np.array_equal(np.concatenate([p.samples for p in pieces]), voice)
        assert out[-1] == Marker("done") and timeline.idle


def test_the_timeline_keeps_uninterruptible_items_and_starts_afresh(pv_config: AppConfig) -> None:
    timeline: VoiceTimeline[str] = VoiceTimeline(pv_config.windows, pv_config.vad, FPS)
    loud = (np.sin(np.arange(16_000) / 3.0) * 20_000).astype(np.int16)
    timeline.push_voice(loud, 16_000, "speech")
    timeline.push_marker("text")
    timeline.push_marker("function result", interruptible=False)
    timeline.push_voice(loud[:800], 16_000, "must play", interruptible=False)
    _timeline_out(timeline, 5)
    dropped = timeline.interrupt(5)
    assert 0.5 < dropped < 1.0
    out = [item for items in _timeline_out(timeline, 10, first_slot=5) for item in items]
    assert [o.item for o in out if isinstance(o, Marker)] == ["function result"]
    assert np.array_equal(np.concatenate([p.samples for p in out if isinstance(p, VoicePiece)])[:, 0], loud[:800])
    # The new epoch's windows hold nothing of the dropped speech: after the kept 50 ms, silence.
    windows = [timeline.window(n) for n in range(15, 25)]
    assert all(np.abs(w.samples).max() == 0 for w in windows[3:])


def test_the_timeline_prebuffers_voice_after_silence(pv_config: AppConfig) -> None:
    timeline: VoiceTimeline[str] = VoiceTimeline(pv_config.windows, pv_config.vad, FPS, prebuffer_s=0.1)
    timeline.push_voice(np.full(320, 1000, np.int16), 16_000, "first 20 ms")
    _timeline_out(timeline, 1)  # 20 ms queued: it waits
    assert timeline.pending_voice_s == pytest.approx(0.02)
    timeline.push_voice(np.full(1600, 1000, np.int16), 16_000, "the rest")
    out = [item for items in _timeline_out(timeline, 10, first_slot=1) for item in items]
    pieces = [p for p in out if isinstance(p, VoicePiece)]
    assert sum(p.samples.shape[0] for p in pieces) == 1920 and timeline.idle
