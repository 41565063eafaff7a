"""`avatar camera`: the live chain from an audio source to a frame sink and a voice sink.

The chain runs for real (espeak-ng speech from a WAV file, the warp generator with its disclosure
stage, the engine on its thread, the session's VAD, windows and tracks) on a fake clock, which each
test moves 10 ms at a time after the engine has handed back every frame asked for: frame times and
the voice's delay are then exact. Only the device writes are replaced, by sinks that record.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar.camera import CameraChain, FileAudioTrack
from avatar.clock import FakeClock
from avatar.config import AppConfig, with_overrides
from avatar.disclosure.mark import VisibleMark
from avatar.engine import InferenceEngine
from avatar.generators import load_generator
from avatar.portrait import default_portrait
from avatar.tracks import AUDIO_RATE_HZ
from tests.label_check import label_contrast

SIZE = 256
FPS = 25
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class RecordingFrames:
    """A frame sink that keeps what a virtual camera would have been sent."""

    frames: list[tuple[float, np.ndarray]] = field(default_factory=list)
    closed: bool = False

    def write_frame(self, t_s: float, rgb: np.ndarray) -> None:
        self.frames.append((t_s, rgb.copy()))

    def close(self) -> None:
        self.closed = True


@dataclass
class RecordingVoice:
    """An audio sink that keeps what an output device would have played."""

    chunks: list[tuple[float, np.ndarray]] = field(default_factory=list)
    closed: bool = False

    def write_audio(self, t_s: float, samples: np.ndarray) -> None:
        self.chunks.append((t_s, samples.copy()))

    def close(self) -> None:
        self.closed = True


@dataclass
class Run:
    chain: CameraChain
    source: FileAudioTrack
    frames: RecordingFrames
    voice: RecordingVoice
    offset_s: float
    stats: dict


@pytest.fixture(scope="module")
def camera_config() -> AppConfig:
    # No nod or sway: the mouth region then changes only when the mouth does.
    video = {"width_px": SIZE, "height_px": SIZE, "fps": FPS}
    return with_overrides(AppConfig(), video=video, warp={"head_motion": 0.0})


async def _settle(chain: CameraChain, timeout_s: float = 10.0) -> None:
    """Wait (in real time) until the engine has returned every frame the session asked for."""
    deadline = time.monotonic() + timeout_s
    while chain.session.stats()["pending_windows"]:
        assert time.monotonic() < deadline, "the engine did not return its frames"
        await asyncio.sleep(0.001)


async def run_chain(config: AppConfig, wav: Path, tail_s: float = 1.0) -> Run:
    clock = FakeClock(start_s=100.0)
    generator = load_generator(config)
    engine = InferenceEngine(generator, config.video, clock=clock)
    await engine.start()
    source = FileAudioTrack(wav, clock=clock)
    frames, voice = RecordingFrames(), RecordingVoice()
    chain = CameraChain(
        config,
        engine,
        generator,
        default_portrait(config),
        source,
        frames,
        voice,
        clock=clock,
        session_id="camera-test",
    )
    try:
        await chain.start()
        steps = round((source.samples.size / AUDIO_RATE_HZ + tail_s) / 0.01)
        for _ in range(steps):
            await clock.advance(0.01)
            await _settle(chain)
        stats = chain.session.stats()
        offset = chain.session.timeline.offset_s
        assert offset is not None
    finally:
        await chain.aclose()
        await engine.aclose()
    assert frames.closed and voice.closed
    return Run(chain, source, frames, voice, offset, stats)


@pytest.fixture(scope="module")
def speech_run(camera_config: AppConfig, speech_wav: Path) -> Run:
    return asyncio.run(run_chain(camera_config, speech_wav))


def mouth_box(config: AppConfig) -> tuple[int, int, int, int]:
    lips = default_portrait(config).landmarks[48:68]
    (x0, y0), (x1, y1) = lips.min(axis=0), lips.max(axis=0)
    margin = 0.3 * (x1 - x0)
    return int(x0 - margin), int(y0 - margin), int(x1 + margin), int(y1 + margin)


def envelope_at(samples48: np.ndarray, times_s: np.ndarray, half_s: float = 0.04) -> np.ndarray:
    """RMS of the input voice around each input time."""
    x = samples48.astype(np.float64)
    half = round(half_s * AUDIO_RATE_HZ)
    out = []
    for t in times_s:
        i = round(t * AUDIO_RATE_HZ)
        piece = x[max(0, i - half) : max(0, i + half)]
        out.append(np.sqrt(np.mean(piece**2)) if piece.size else 0.0)
    return np.array(out)


def test_frames_leave_at_the_configured_rate(speech_run: Run) -> None:
    times = np.array([t for t, _ in speech_run.frames.frames])
    assert len(times) >= (speech_run.source.samples.size / AUDIO_RATE_HZ) * FPS
    spacing = np.diff(times)
    # One frame period apart, on the fake clock; once, when the voice starts, the grid moves onto
    # the voice's timeline: one longer interval (less than two periods), never a shorter one.
    off_grid = np.flatnonzero(np.abs(spacing - 1 / FPS) > 1e-6)
    assert len(off_grid) <= 1, spacing[off_grid]
    assert np.all((spacing[off_grid] > 1 / FPS) & (spacing[off_grid] < 2 / FPS))
    stats = speech_run.stats
    assert stats["late_frames"] == 0 and stats["reanchors"] == 0 and stats["stalls"] == 0
    assert stats["new_frames"] > 0.9 * (speech_run.source.samples.size / AUDIO_RATE_HZ) * FPS
    assert all(rgb.shape == (SIZE, SIZE, 3) and rgb.dtype == np.uint8 for _, rgb in speech_run.frames.frames)


def test_the_mouth_moves_with_the_speech_and_rests_in_silence(speech_run: Run, camera_config: AppConfig) -> None:
    x0, y0, x1, y1 = mouth_box(camera_config)
    times = np.array([t for t, _ in speech_run.frames.frames])
    mouths = [rgb[y0:y1, x0:x1].astype(np.float32) for _, rgb in speech_run.frames.frames]
    # The frame shown at clock time t is the one made for input time t - offset.
    input_t = times - speech_run.offset_s
    rest = mouths[int(np.flatnonzero(input_t >= 0)[0])]  # the first generated frame (silence)
    change = np.array([np.abs(m - rest).mean() for m in mouths])
    envelope = envelope_at(speech_run.source.samples, input_t)
    speaking = envelope > 0.1 * envelope.max()
    lead = (input_t > 0) & (input_t < 0.4)  # the fixture starts with 0.5 s of silence
    tail = input_t > speech_run.source.samples.size / AUDIO_RATE_HZ + 0.3  # silence fed after the file ends
    assert lead.sum() >= 8 and tail.sum() >= 8 and speaking.sum() >= 30
    assert not speaking[lead].any()
    assert change[lead].max() < 4.0, "the mouth moved before the speech"
    assert np.median(change[speaking]) > 8.0, "the mouth hardly moved during speech"
    assert change[tail].max() < 4.0, "the mouth did not close after the speech"
    assert np.corrcoef(change[input_t > 0], envelope[input_t > 0])[0, 1] > 0.5


def test_the_voice_leaves_delayed_by_the_reported_delay(speech_run: Run, camera_config: AppConfig) -> None:
    run = speech_run
    delay = run.chain.delay_s
    assert run.stats["delay_ms"] == pytest.approx(delay * 1000, abs=0.1)
    assert run.source.start_s is not None
    # The sink's samples on one 48 kHz grid from its first chunk; chunks are 20 ms, back to back.
    t_first = run.voice.chunks[0][0]
    starts = np.array([round((t - t_first) * AUDIO_RATE_HZ) for t, _ in run.voice.chunks])
    assert np.all(np.diff(starts) == 960)
    played = np.concatenate([s for _, s in run.voice.chunks]).astype(np.float64)
    heard = run.source.samples.astype(np.float64)
    # Cross-correlate: where in the sink's recording does the input line up best?
    spectrum = np.fft.rfft(played, 2 * played.size) * np.conj(np.fft.rfft(heard, 2 * played.size))
    xcorr = np.fft.irfft(spectrum)[: played.size]
    lag = int(np.argmax(xcorr))
    measured = (t_first + lag / AUDIO_RATE_HZ) - run.source.start_s  # sink time of input sample 0 - capture
    # The voice leads its frames by voice_lead_s (config.WindowConfig): it leaves that much sooner.
    assert measured == pytest.approx(delay - camera_config.windows.voice_lead_used_s, abs=1 / AUDIO_RATE_HZ)
    # And it is the input itself, sample for sample, not just something correlated with it.
    segment = played[lag : lag + heard.size]
    assert np.array_equal(segment, heard[: segment.size])


def test_frames_carry_the_visible_mark(speech_run: Run, camera_config: AppConfig) -> None:
    d = camera_config.disclosure
    assert d.mark
    mark = VisibleMark(d.mark_text, d.mark_corner, SIZE, SIZE, torch.device("cpu"))
    frames = speech_run.frames.frames
    for _, rgb in frames[:: max(1, len(frames) // 12)]:
        text, pill = label_contrast(rgb, mark)
        assert text - pill > 0.4, (text, pill)


# -- the command line, on a machine without the devices -----------------------------------------


def _avatar(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "avatar", "camera", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
        check=False,
    )


def _has_virtual_camera() -> bool:
    try:
        from avatar.virtualcam import VirtualCamera

        VirtualCamera(64, 64, FPS).close()
    except Exception:
        return False
    return True


def _sound_devices(kind: str) -> list[str]:
    import sounddevice

    return [d["name"] for d in sounddevice.query_devices() if d[f"max_{kind}_channels"] > 0]


def test_list_devices_works_without_devices() -> None:
    done = _avatar("--list-devices")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "sound input devices:" in lines and "sound output devices:" in lines and "virtual cameras:" in lines
    if not _sound_devices("output"):
        assert any(line.startswith("  (none)") and "virtual audio cable" in line for line in lines)
    if not _has_virtual_camera():
        assert any("v4l2loopback" in line for line in lines)


def test_no_virtual_camera_is_exit_2_naming_the_fix() -> None:
    if _has_virtual_camera():
        pytest.skip("this machine has a virtual camera; the test checks the error without one")
    done = _avatar("--generator", "warp")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "avatar camera: error:" in done.stderr
    assert "no virtual camera" in done.stderr
    assert "v4l2loopback-dkms" in done.stderr and "modprobe v4l2loopback devices=1 exclusive_caps=1" in done.stderr
    assert "Traceback" not in done.stderr


def test_no_output_device_is_exit_2_naming_the_fix() -> None:
    if _sound_devices("output"):
        pytest.skip("this machine has a sound output device; the test checks the error without one")
    done = _avatar("--output", "cable")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "no sound output device" in done.stderr and "virtual audio cable" in done.stderr
    assert "no sound input device" in done.stderr  # every missing device is named at once
    assert "Traceback" not in done.stderr


def test_a_missing_input_device_is_named(tmp_path: Path) -> None:
    from avatar.errors import DeviceError
    from avatar.microphone import MicrophoneTrack

    with pytest.raises(DeviceError, match="no sound input device|no input device matches"):
        MicrophoneTrack("no such microphone 4711")


# -- the device writes themselves, where the devices exist ----------------------------------------


async def test_frames_and_voice_reach_the_real_devices() -> None:
    if not _has_virtual_camera():
        pytest.skip("no virtual camera here (v4l2loopback not loaded): the device write cannot be tested")
    if not _sound_devices("output"):
        pytest.skip("no sound output device here: the voice write cannot be tested")
    from avatar.speaker import SoundOutput
    from avatar.virtualcam import VirtualCamera

    camera = VirtualCamera(SIZE, SIZE, FPS)
    voice = SoundOutput("")
    try:
        for k in range(FPS):
            camera.write_frame(k / FPS, np.full((SIZE, SIZE, 3), k * 8, np.uint8))
            voice.write_audio(k / FPS, np.zeros(960, np.int16))
            await asyncio.sleep(1 / FPS)
    finally:
        camera.close()
        voice.close()
    assert camera.frames == FPS
