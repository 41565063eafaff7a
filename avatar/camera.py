"""`avatar camera`: the live chain on this machine, for desktop call apps.

    audio source (the microphone) -> AvatarSession (audio edge -> VAD -> windows -> engine)
        -> the session's paced video  -> frame sink (a virtual camera)
        -> the session's delayed voice -> audio sink (an output device: a virtual audio cable)

The session is the one the server runs for a peer, with the same engine, windows and VAD: only
where the voice comes from and where the frames and the voice go differ. Both outputs are read from
the session's tracks on its one clock, so the voice leaves delayed by exactly as much as the lips
(`delay_s`, logged at start). The sinks are small interfaces (`FrameSink`, `AudioSink`); tests drive
the chain with `FileAudioTrack` and sinks that record, the CLI with `MicrophoneTrack`,
`VirtualCamera` and `SoundOutput`. A device that is missing is found before the generator loads,
and every missing device is named at once with what to install.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import secrets
from pathlib import Path
from typing import Protocol

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from avatar.audio import load_audio_file
from avatar.clock import Clock, SessionClock
from avatar.config import AppConfig
from avatar.engine import InferenceEngine
from avatar.errors import AvatarError, DeviceError
from avatar.generators.base import FrameGenerator
from avatar.portrait import Portrait, default_portrait, load_portrait
from avatar.session import AvatarSession
from avatar.tracks import AUDIO_FRAME_SAMPLES, AUDIO_PTIME_S, AUDIO_RATE_HZ

log = logging.getLogger(__name__)

_STATS_EVERY_S = 10.0


class FrameSink(Protocol):
    """Where the video goes: one RGB uint8 (h, w, 3) frame at a time, at its clock time."""

    def write_frame(self, t_s: float, rgb: np.ndarray) -> None: ...

    def close(self) -> None: ...


class AudioSink(Protocol):
    """Where the synced voice goes: 48 kHz mono int16, 20 ms at a time, at its clock time."""

    def write_audio(self, t_s: float, samples: np.ndarray) -> None: ...

    def close(self) -> None: ...


class FileAudioTrack(MediaStreamTrack):
    """An audio file played in real time on `clock`, 20 ms of 48 kHz mono per frame, each frame
    released when its last sample would have been captured (as a microphone does); then the end.
    `start_s` is the clock time of the file's first sample (set at the first `recv()`)."""

    kind = "audio"

    def __init__(self, path: Path, *, clock: Clock | None = None) -> None:
        super().__init__()
        self.samples = load_audio_file(path, AUDIO_RATE_HZ)
        self.clock: Clock = clock or SessionClock()
        self.start_s: float | None = None
        self._index = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.start_s is None:
            self.start_s = self.clock.now_s()
        first = self._index * AUDIO_FRAME_SAMPLES
        if first >= self.samples.size:
            self.stop()
            raise MediaStreamError
        await self.clock.sleep_until(self.start_s + (self._index + 1) * AUDIO_PTIME_S)
        chunk = np.zeros(AUDIO_FRAME_SAMPLES, np.int16)
        part = self.samples[first : first + AUDIO_FRAME_SAMPLES]
        chunk[: part.size] = part
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE_HZ
        frame.pts = first
        frame.time_base = fractions.Fraction(1, AUDIO_RATE_HZ)
        self._index += 1
        return frame


class CameraChain:
    """One local live session between an audio source and two sinks; `start()`, `wait()`, `aclose()`."""

    def __init__(
        self,
        config: AppConfig,
        engine: InferenceEngine,
        generator: FrameGenerator,
        portrait: Portrait,
        source: MediaStreamTrack,
        frames: FrameSink,
        voice: AudioSink | None,
        *,
        clock: Clock | None = None,
        session_id: str | None = None,
    ) -> None:
        self.source = source
        self.frames = frames
        self.voice = voice
        self.session = AvatarSession(
            config,
            engine,
            generator,
            portrait,
            session_id=session_id or f"camera-{secrets.token_hex(4)}",
            return_audio=voice is not None,
            clock=clock,
        )
        self.error: AvatarError | None = None
        self._failed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def delay_s(self) -> float:
        """How long after it is captured the voice (and its mouth shapes) leave the chain."""
        return self.session.delay_s

    async def start(self) -> None:
        await self.session.start()
        self.session.attach_audio(self.source)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._video_pump(), name="camera-video"))
        if self.voice is not None:
            self._tasks.append(loop.create_task(self._voice_pump(), name="camera-voice"))

    async def _video_pump(self) -> None:
        track = self.session.video_track
        while True:
            try:
                t, rgb = await track.next_rgb()
            except MediaStreamError:
                return
            try:
                self.frames.write_frame(t, rgb)
            except Exception as exc:  # the device went away: end the chain, say why
                self._fail(DeviceError(f"the virtual camera failed: {exc}"))
                return

    async def _voice_pump(self) -> None:
        track = self.session.audio_track
        assert track is not None and self.voice is not None
        while True:
            try:
                t, samples = await track.next_samples()
            except MediaStreamError:
                return
            try:
                self.voice.write_audio(t, samples)
            except Exception as exc:
                self._fail(DeviceError(f"the voice output failed: {exc}"))
                return

    def _fail(self, error: AvatarError) -> None:
        if self.error is None:
            self.error = error
        self._failed.set()

    async def wait(self, stats_every_s: float = _STATS_EVERY_S) -> None:
        """Run until a sink fails (raised here); logs the session's figures every `stats_every_s`."""
        while True:
            try:
                await asyncio.wait_for(self._failed.wait(), stats_every_s)
            except TimeoutError:
                s = self.session.stats()
                log.info(
                    "%.1f fps, %d frames (%d late), latency %.0f ms, speaking %s",
                    s["fps"], s["frames"], s["late_frames"], s["latency_ms"], s["speaking"],
                )
                continue
            assert self.error is not None
            raise self.error

    async def aclose(self) -> None:
        """Stop the session, the pumps, the source and both sinks; idempotent."""
        await self.session.aclose()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self.source.stop()
        for sink in (self.frames, self.voice):
            if sink is not None:
                try:
                    sink.close()
                except Exception:  # closing a device that already failed
                    log.debug("closing a sink failed", exc_info=True)


def list_devices() -> list[str]:
    """What `avatar camera --list-devices` prints: sound inputs and outputs, virtual cameras."""
    from avatar.sound_devices import describe_devices
    from avatar.virtualcam import describe_cameras

    return describe_devices() + describe_cameras()


def open_devices(config: AppConfig) -> tuple[MediaStreamTrack, FrameSink, AudioSink]:
    """The microphone, the virtual camera and the voice output of `config.camera`, all checked
    before anything loads; every one that is missing is named in one DeviceError (a lone missing
    virtual camera raises its VirtualCameraError)."""
    from avatar.microphone import MicrophoneTrack
    from avatar.speaker import SoundOutput
    from avatar.virtualcam import VirtualCamera

    camera, video = config.camera, config.video
    problems: list[DeviceError] = []
    opened: list[FrameSink | AudioSink] = []
    source: MediaStreamTrack | None = None
    frames: FrameSink | None = None
    voice: AudioSink | None = None
    try:
        frames = VirtualCamera(video.width_px, video.height_px, video.fps, device=camera.device, backend=camera.backend)
        opened.append(frames)
    except DeviceError as exc:
        problems.append(exc)
    try:
        voice = SoundOutput(camera.output, latency_s=camera.output_latency_s)
        opened.append(voice)
    except DeviceError as exc:
        problems.append(exc)
    try:
        source = MicrophoneTrack(camera.input)
    except DeviceError as exc:
        problems.append(exc)
    if problems:
        for sink in opened:
            sink.close()
        if len(problems) == 1:
            raise problems[0]
        raise DeviceError("avatar camera cannot start:\n" + "\n".join(f"  - {p}" for p in problems))
    assert source is not None and frames is not None and voice is not None
    return source, frames, voice


def run_camera(config: AppConfig, *, portrait_path: Path | None = None, landmarks_path: Path | None = None) -> int:
    """Open the devices, load the portrait and the generator, run until Ctrl-C or a device fails."""
    from avatar.generators import load_generator

    source, frames, voice = open_devices(config)
    try:
        if portrait_path is None:
            portrait = default_portrait(config)
        else:
            portrait = load_portrait(Path(portrait_path), config.portrait, config.video, landmarks=landmarks_path)
        generator = load_generator(config)
    except BaseException:
        for sink in (frames, voice):
            sink.close()
        raise
    asyncio.run(_run(config, generator, portrait, source, frames, voice))
    return 0


async def _run(
    config: AppConfig,
    generator: FrameGenerator,
    portrait: Portrait,
    source: MediaStreamTrack,
    frames: FrameSink,
    voice: AudioSink,
) -> None:
    engine = InferenceEngine(generator, config.video)
    await engine.start()
    chain = CameraChain(config, engine, generator, portrait, source, frames, voice)
    try:
        await chain.start()
        log.info(
            "live: %r on the virtual camera, the voice %.0f ms behind the microphone (as the lips); Ctrl-C stops",
            portrait.name, chain.delay_s * 1000,
        )
        await chain.wait()
    finally:
        await chain.aclose()
        await engine.aclose()
