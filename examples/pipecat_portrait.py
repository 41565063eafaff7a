"""A pipecat pipeline with the talking portrait, runnable offline: no network, no API key.

    .venv/bin/python examples/pipecat_portrait.py                    # two sentences, spoken by espeak-ng
    .venv/bin/python examples/pipecat_portrait.py speech.wav --size 256 -o out/talk.mp4
    .venv/bin/python examples/pipecat_portrait.py --say "Hello there." --say "Goodbye."

Each WAV file (16-bit PCM, any rate, mono or stereo) or --say text is one bot turn: its TTS frames
(TTSStartedFrame, 20 ms TTSAudioRawFrame chunks, TTSStoppedFrame) are queued into the pipeline

    PortraitVideoProcessor -> Mp4Sink

one turn after another with --pause seconds of rest between them, as a TTS service would push
them. The sink writes what reaches it, the portrait's frames and the voice that goes out beside
them, to an MP4 (H264 + AAC), signed with content credentials as `avatar render` does (unless
--unsigned or `[disclosure] content_credentials = false`).

In a voice agent, put the processor after the TTS service and before the output transport, and
let the transport send live video at the processor's size and rate, for example:

    from avatar.config import load_config
    from avatar.integrations.pipecat import PortraitVideoProcessor

    config = load_config()
    portrait = PortraitVideoProcessor(config)  # the portrait of config.portrait.default
    transport = SmallWebRTCTransport(connection, TransportParams(
        audio_in_enabled=True, audio_out_enabled=True,
        video_out_enabled=True, video_out_is_live=True, video_out_framerate=config.video.fps,
        video_out_width=config.video.width_px, video_out_height=config.video.height_px))
    pipeline = Pipeline([transport.input(), stt, user_aggregator, llm, tts,
                         portrait, transport.output(), assistant_aggregator])

The processor sends frames from the StartFrame on (the mouth at rest between turns), drops its
queued voice on an interruption, and lets it play out before an EndFrame.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import secrets
import sys
import tempfile
import wave
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import av
import numpy as np
from av.audio.stream import AudioStream
from av.video.stream import VideoStream
from loguru import logger as pipecat_logger
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    OutputAudioRawFrame,
    OutputImageRawFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from avatar.config import AppConfig, load_config, with_overrides
from avatar.disclosure.credentials import default_credentials_dir, sign_video
from avatar.errors import AvatarError
from avatar.integrations.pipecat import PortraitVideoProcessor
from avatar.logs import setup_logging
from avatar.portrait import default_portrait, load_portrait
from avatar.speech import synthesize_speech

log = logging.getLogger("examples.pipecat_portrait")

DEFAULT_TURNS = (
    "Hello! I am a talking portrait inside a pipecat pipeline.",
    "Every frame you see says that it was made by a machine.",
)
CHUNK_S = 0.02  # TTS services push audio in small chunks; 20 ms here
AUDIO_RATE_HZ = 48_000  # the MP4's audio


@dataclass(frozen=True)
class Turn:
    name: str
    pcm: bytes  # int16, interleaved
    sample_rate_hz: int
    channels: int

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / (2 * self.channels * self.sample_rate_hz)

    def frames(self, context_id: str) -> list[Frame]:
        """The frames a TTS service pushes for this turn."""
        step = round(CHUNK_S * self.sample_rate_hz) * 2 * self.channels
        chunks: list[Frame] = [
            TTSAudioRawFrame(self.pcm[i : i + step], self.sample_rate_hz, self.channels, context_id=context_id)
            for i in range(0, len(self.pcm), step)
        ]
        return [TTSStartedFrame(context_id=context_id), *chunks, TTSStoppedFrame(context_id=context_id)]


def read_wav(path: Path) -> Turn:
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2 or wav.getcomptype() != "NONE":
            raise SystemExit(f"{path}: give a 16-bit PCM WAV file")
        return Turn(path.name, wav.readframes(wav.getnframes()), wav.getframerate(), wav.getnchannels())


class Mp4Sink(FrameProcessor):
    """The end of the pipeline: image frames to H264, the voice beside them to AAC, in one MP4.

    The voice that comes after image k plays from k / fps on (the processor sends each frame's
    voice right after it); where no voice comes, the audio track holds silence. Encoding runs on
    one worker thread, off the event loop that paces the frames.
    """

    def __init__(self, path: Path, config: AppConfig, channels: int) -> None:
        super().__init__(name="Mp4Sink")
        self.path = path
        self.fps = config.video.fps
        self.images = 0
        self.voice_s = 0.0
        self._layout = "stereo" if channels >= 2 else "mono"
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mp4-sink")
        self._container = av.open(str(path), mode="w")
        render = config.render
        # One fast encoder thread: the generator, which must keep real time, needs the other cores.
        options = {"crf": str(render.crf), "preset": "veryfast", "threads": "1"}
        self._video = cast(VideoStream, self._container.add_stream(render.video_codec, rate=self.fps, options=options))
        self._video.width, self._video.height = config.video.width_px, config.video.height_px
        self._video.pix_fmt = "yuv420p"
        self._video.time_base = Fraction(1, self.fps)
        self._audio = cast(
            AudioStream, self._container.add_stream(render.audio_codec, rate=AUDIO_RATE_HZ, layout=self._layout)
        )
        self._audio.bit_rate = render.audio_bitrate_bps
        self._fifo = av.AudioFifo()
        self._resamplers: dict[tuple[int, int], av.AudioResampler] = {}
        self._audio_samples = 0  # written to the FIFO, at AUDIO_RATE_HZ
        self._encoded = 0
        self._voice_since_image = False
        self._closed = False

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction is FrameDirection.DOWNSTREAM:
            if isinstance(frame, OutputImageRawFrame):
                await self._in_thread(self._write_image, frame)
            elif isinstance(frame, OutputAudioRawFrame):
                await self._in_thread(self._write_voice, frame)
            elif isinstance(frame, EndFrame):
                await self._in_thread(self.close)
        await self.push_frame(frame, direction)

    async def _in_thread(self, fn: Callable[..., None], *args: Any) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _write_image(self, frame: OutputImageRawFrame) -> None:
        width, height = frame.size
        rgb = np.frombuffer(frame.image, dtype=np.uint8).reshape(height, width, 3)
        if not self._voice_since_image:  # a silence: what the resamplers hold belongs before it
            self._flush_resamplers()
        self._pad_audio_to(round(self.images * AUDIO_RATE_HZ / self.fps))
        video = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        video.pts = self.images
        self._container.mux(self._video.encode(video))
        self.images += 1
        self._voice_since_image = False

    def _write_voice(self, frame: OutputAudioRawFrame) -> None:
        key = (frame.sample_rate, frame.num_channels)
        resampler = self._resamplers.get(key)
        if resampler is None:
            self._flush_resamplers()
            resampler = self._resamplers[key] = av.AudioResampler(
                format="fltp", layout=self._layout, rate=AUDIO_RATE_HZ
            )
        packed = np.frombuffer(frame.audio, dtype="<i2").reshape(1, -1)
        audio = av.AudioFrame.from_ndarray(packed, format="s16", layout=f"{frame.num_channels}c")
        audio.sample_rate = frame.sample_rate
        for out in resampler.resample(audio):
            self._write_audio(out)
        self.voice_s += frame.num_frames / frame.sample_rate
        self._voice_since_image = True

    def _flush_resamplers(self) -> None:
        for resampler in self._resamplers.values():
            for out in resampler.resample(None):
                self._write_audio(out)
        self._resamplers.clear()

    def _pad_audio_to(self, samples: int) -> None:
        missing = samples - self._audio_samples
        if missing > 0:
            channels = 2 if self._layout == "stereo" else 1
            silence = av.AudioFrame.from_ndarray(
                np.zeros((channels, missing), dtype=np.float32), format="fltp", layout=self._layout
            )
            silence.sample_rate = AUDIO_RATE_HZ
            self._write_audio(silence)

    def _write_audio(self, frame: av.AudioFrame) -> None:
        frame.pts = None
        self._fifo.write(frame)
        self._audio_samples += frame.samples
        self._drain(final=False)

    def _drain(self, final: bool) -> None:
        size = self._audio.codec_context.frame_size or 1024
        while self._fifo.samples >= size or (final and self._fifo.samples > 0):
            chunk = self._fifo.read(min(size, self._fifo.samples))
            assert chunk is not None  # the FIFO holds that many samples
            chunk.pts = self._encoded
            chunk.time_base = Fraction(1, AUDIO_RATE_HZ)
            self._encoded += chunk.samples
            self._container.mux(self._audio.encode(chunk))

    def close(self) -> None:
        """Finish both streams (the audio padded to the video's end) and the file; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._flush_resamplers()
            self._pad_audio_to(round(self.images * AUDIO_RATE_HZ / self.fps))
            self._drain(final=True)
            self._container.mux(self._audio.encode(None))
            self._container.mux(self._video.encode(None))
        finally:
            self._container.close()

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._in_thread(self.close)  # a cancelled pipeline still leaves a playable file
        self._executor.shutdown(wait=True)


async def run_pipeline(
    config: AppConfig, args: argparse.Namespace, turns: list[Turn], video_path: Path
) -> tuple[str, int]:
    """Run the pipeline; what it wrote, and the session number its frames' watermark carries."""
    portrait = (
        load_portrait(args.portrait, config.portrait, config.video) if args.portrait else default_portrait(config)
    )
    processor = PortraitVideoProcessor(config, portrait=portrait, session_id=f"example-{secrets.token_hex(4)}")
    sink = Mp4Sink(video_path, config, channels=max(turn.channels for turn in turns))
    worker = PipelineWorker(Pipeline([processor, sink]), enable_rtvi=False, cancel_on_idle_timeout=False)
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def on_started(worker: PipelineWorker, frame: Frame) -> None:
        started.set()

    async def speak() -> None:
        await started.wait()
        await asyncio.sleep(args.pause)  # the portrait at rest first
        for number, turn in enumerate(turns):
            log.info("turn %d: %s, %.2f s at %d Hz", number + 1, turn.name, turn.duration_s, turn.sample_rate_hz)
            await worker.queue_frames(turn.frames(context_id=f"turn-{number + 1}"))
            await asyncio.sleep(turn.duration_s + args.pause)
        await worker.queue_frame(EndFrame())  # the processor lets the queued voice play out first

    runner = WorkerRunner()
    await runner.add_workers(worker)
    await asyncio.gather(runner.run(), speak())
    stats = processor.stats()
    summary = (
        f"{sink.images} frames of {config.video.width_px}x{config.video.height_px} at {config.video.fps} fps "
        f"({sink.images / config.video.fps:.2f} s, {stats['repeated_frames']} repeated), "
        f"{sink.voice_s:.2f} s of voice in {len(turns)} turns, watermark session number "
        f"{processor.session_number:08x}"
    )
    return summary, processor.session_number


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("audio", nargs="*", type=Path, help="16-bit PCM WAV files, one turn each")
    parser.add_argument("--say", action="append", default=[], help="text spoken with espeak-ng (repeatable)")
    parser.add_argument("-o", "--out", type=Path, default=Path("out/pipecat_portrait.mp4"), help="the MP4 to write")
    parser.add_argument("--portrait", type=Path, help="portrait image (default: the config's built-in one)")
    parser.add_argument("--size", type=int, help="frame width and height in pixels (default: the config's)")
    parser.add_argument("--fps", type=int, help="frame rate (default: the config's)")
    parser.add_argument("--pause", type=float, default=0.6, help="seconds of rest before, between and after turns")
    parser.add_argument("--config", type=Path, help="config file (default: the repository's config.toml)")
    parser.add_argument("--unsigned", action="store_true", help="write no content credentials")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    pipecat_logger.remove()  # pipecat logs with loguru, at DEBUG by default
    pipecat_logger.add(sys.stderr, level=args.log_level)
    config = load_config(args.config)
    video = {k: v for k, v in (("width_px", args.size), ("height_px", args.size), ("fps", args.fps)) if v}
    config = with_overrides(config, video=video)
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    sign = config.disclosure.content_credentials and not args.unsigned
    try:
        with tempfile.TemporaryDirectory(prefix="pipecat-portrait-") as tmp:
            turns = [read_wav(path) for path in args.audio]
            texts = args.say or ([] if turns else list(DEFAULT_TURNS))
            for number, text in enumerate(texts):
                wav = synthesize_speech(text, Path(tmp) / f"say{number}.wav", sample_rate_hz=24_000,
                                        lead_silence_s=0.0, tail_silence_s=0.0)  # fmt: skip
                turns.append(read_wav(wav))
            video_path = Path(tmp) / "unsigned.mp4" if sign else out
            summary, session = asyncio.run(run_pipeline(config, args, turns, video_path))
            if sign:
                disclosure = config.disclosure
                credentials = (
                    Path(disclosure.credentials_dir).expanduser()
                    if disclosure.credentials_dir
                    else default_credentials_dir()
                )
                sign_video(
                    video_path,
                    out,
                    disclosure,
                    credentials_dir=credentials,
                    portrait_name=args.portrait.name if args.portrait else config.portrait.default,
                    audio_name=", ".join(turn.name for turn in turns),
                    watermark={"service_id": disclosure.service_id, "session": session},
                )
    except AvatarError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    credentials_note = "signed content credentials" if sign else "no content credentials"
    print(f"wrote {out}: {summary}; {credentials_note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
