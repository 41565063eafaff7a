"""Offline render: portrait + audio file -> talking video (H264 + AAC in MP4).

It runs the same chain as the live service, frame by frame: the audio is fed to the windower in
20 ms chunks as a microphone would deliver it, each due window is stepped through the generator, and
the frames are encoded as they come. The original audio (any file av decodes, at its own rate) is
muxed beside the video, interleaved, so a long render never holds the whole video in memory.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import numpy as np
from av.audio.stream import AudioStream
from av.video.stream import VideoStream
from tqdm import tqdm

from avatar.audio import load_audio_file
from avatar.config import SAMPLE_RATE_HZ, AppConfig, DisclosureConfig
from avatar.disclosure.credentials import default_credentials_dir, read_credentials, sign_video
from avatar.errors import AudioError
from avatar.generators import load_generator
from avatar.microphone import record_microphone
from avatar.portrait import default_portrait, load_portrait
from avatar.speech import synthesize_speech
from avatar.windows import iter_clip_windows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RenderResult:
    out_path: Path
    frames: int
    duration_s: float
    drives: list[dict[str, float]]
    # What read_credentials says of the output; None when content credentials are off.
    content_credentials: dict | None = None


def _decoded_audio_frames(path: Path) -> Iterator[av.AudioFrame]:
    """The original file's audio, as float planar frames at its own rate (mono or stereo) for AAC."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise AudioError(f"{path}: no audio stream")
        stream = container.streams.audio[0]
        layout = "mono" if stream.codec_context.channels == 1 else "stereo"
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=stream.codec_context.sample_rate)
        for frame in container.decode(stream):
            frame.pts = None
            yield from resampler.resample(frame)
        yield from resampler.resample(None)


class _Muxer:
    """H264 video + AAC audio in one MP4, audio interleaved up to the latest video time."""

    def __init__(self, out_path: Path, config: AppConfig, audio_path: Path) -> None:
        self._container = av.open(str(out_path), mode="w")
        fps = config.video.fps
        self._fps = fps
        self._video = cast(
            VideoStream,
            self._container.add_stream(config.render.video_codec, rate=fps, options={"crf": str(config.render.crf)}),
        )
        self._video.width = config.video.width_px
        self._video.height = config.video.height_px
        self._video.pix_fmt = "yuv420p"
        self._video.time_base = Fraction(1, fps)
        self._audio_frames = _decoded_audio_frames(audio_path)
        first = next(self._audio_frames, None)
        self._pending_audio = first
        rate = first.sample_rate if first is not None else SAMPLE_RATE_HZ
        layout = first.layout.name if first is not None else "mono"
        self._audio = cast(AudioStream, self._container.add_stream(config.render.audio_codec, rate=rate, layout=layout))
        self._audio.bit_rate = config.render.audio_bitrate_bps
        # AAC takes frames of exactly frame_size samples; this FIFO re-chunks the decoded audio.
        self._fifo = av.AudioFifo()
        self._audio_samples = 0
        self._rate = rate
        # The voice plays `voice_lead_s` ahead of its frames, as it does live (config.WindowConfig).
        self._skip_samples = round(config.windows.voice_lead_used_s * rate)
        self._encoded_samples = 0

    def write_video(self, rgb: np.ndarray, frame_index: int) -> None:
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = frame_index
        self._container.mux(self._video.encode(frame))
        self._write_audio_until((frame_index + 1) / self._fps)

    def _write_audio_until(self, time_s: float | None) -> None:
        while self._pending_audio is not None and (time_s is None or self._audio_samples / self._rate < time_s):
            frame = self._pending_audio
            self._audio_samples += frame.samples
            self._fifo.write(frame)
            if self._skip_samples and self._fifo.samples:
                skipped = min(self._skip_samples, self._fifo.samples)
                self._fifo.read(skipped)
                self._skip_samples -= skipped
            self._drain_fifo(final=False)
            self._pending_audio = next(self._audio_frames, None)

    def _drain_fifo(self, final: bool) -> None:
        size = self._audio.codec_context.frame_size or 1024
        while self._fifo.samples >= size or (final and self._fifo.samples > 0):
            chunk = self._fifo.read(min(size, self._fifo.samples))
            assert chunk is not None  # the FIFO holds that many samples
            chunk.pts = self._encoded_samples
            chunk.time_base = Fraction(1, self._rate)
            self._encoded_samples += chunk.samples
            self._container.mux(self._audio.encode(chunk))

    def close(self) -> None:
        try:
            self._write_audio_until(None)
            self._drain_fifo(final=True)
            self._container.mux(self._audio.encode(None))
            self._container.mux(self._video.encode(None))
        finally:
            self._container.close()


def render_file(
    config: AppConfig,
    *,
    audio_path: Path | None,
    out_path: Path,
    portrait_path: Path | None = None,
    landmarks_path: Path | None = None,
    say: str | None = None,
    record_s: float | None = None,
    progress: bool = True,
    credentials_dir: Path | None = None,
) -> RenderResult:
    """Render `audio_path` (or `say`, spoken with espeak-ng, or `record_s` seconds recorded from the
    microphone) on a portrait into `out_path`.

    With `[disclosure] content_credentials` on, the output is signed (C2PA) with the operator's
    certificate or the local chain in `credentials_dir` (else `[disclosure] credentials_dir`, else
    the user's data directory: this entry point is where the environment may be read for it)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    disclosure = config.disclosure
    if credentials_dir is None and disclosure.content_credentials:
        credentials_dir = (
            Path(disclosure.credentials_dir).expanduser() if disclosure.credentials_dir else default_credentials_dir()
        )
    credentials: dict | None = None
    with tempfile.TemporaryDirectory(prefix="avatar-render-") as tmp, _video_file(out_path, disclosure) as video_path:
        if say is not None:
            audio_path = synthesize_speech(say, Path(tmp) / "say.wav")
        elif record_s is not None:
            audio_path = record_microphone(record_s, Path(tmp) / "recorded.wav")
        if audio_path is None:
            raise AudioError("no audio: give an audio file or text to say")
        audio_path = Path(audio_path)
        samples = load_audio_file(audio_path)
        if portrait_path is None:
            portrait = default_portrait(config)
        else:
            portrait = load_portrait(Path(portrait_path), config.portrait, config.video, landmarks=landmarks_path)
        generator = load_generator(config)
        session_number = secrets.randbits(32)  # the watermark's session number, also in the credentials
        stream = generator.new_stream(portrait, seed=config.generator.seed, session_number=session_number)
        total_frames = -(-len(samples) * config.video.fps // SAMPLE_RATE_HZ)
        log.info(
            "rendering %.2f s of audio on %r with %s on %s: %d frames, watermark session number %08x",
            len(samples) / SAMPLE_RATE_HZ,
            portrait.name,
            generator.name,
            generator.device,
            total_frames,
            session_number,
        )
        muxer = _Muxer(video_path, config, audio_path)
        drives: list[dict[str, float]] = []
        try:
            with tqdm(total=total_frames, unit="frame", disable=not progress, desc="render") as bar:
                for window in iter_clip_windows(samples, config.windows, config.vad, config.video.fps):
                    generated = generator.step([stream], [window])[0]
                    muxer.write_video(generated.rgb, window.frame_index)
                    drives.append(dict(generated.drive))
                    bar.update(1)
        finally:
            muxer.close()
        if disclosure.content_credentials and credentials_dir is not None:
            sign_video(
                video_path,
                out_path,
                disclosure,
                credentials_dir=credentials_dir,
                portrait_name=portrait.name,
                audio_name=audio_path.name,
                watermark={"service_id": disclosure.service_id, "session": session_number},
            )
            credentials = read_credentials(out_path)
    return RenderResult(
        out_path=out_path,
        frames=len(drives),
        duration_s=len(drives) / config.video.fps,
        drives=drives,
        content_credentials=credentials,
    )


@contextlib.contextmanager
def _video_file(out_path: Path, disclosure: DisclosureConfig) -> Iterator[Path]:
    """Where the muxer writes: `out_path` itself when content credentials are off, else a hidden file
    beside it that sign_video turns into `out_path`, removed however the render ends (so a failure
    never leaves an unsigned or half-signed file at `out_path`)."""
    if not disclosure.content_credentials:
        log.warning("content credentials are off: %s will carry no signed C2PA manifest", out_path)
        yield out_path
        return
    unsigned = out_path.with_name(f".{out_path.stem}.{secrets.token_hex(4)}.unsigned{out_path.suffix}")
    try:
        yield unsigned
    finally:
        unsigned.unlink(missing_ok=True)
