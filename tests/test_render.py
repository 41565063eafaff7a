"""Offline render: a playable MP4 whose length matches the audio and whose mouth moves with speech."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from avatar.audio import load_audio_file
from avatar.config import SAMPLE_RATE_HZ, AppConfig, with_overrides
from avatar.errors import AudioError
from avatar.lipsync import audio_envelope
from avatar.portrait import default_portrait
from avatar.render import render_file

SMALL = {"width_px": 256, "height_px": 256}


@pytest.fixture(scope="module")
def small_config() -> AppConfig:
    return with_overrides(AppConfig(), video=SMALL)


def mouth_box(config: AppConfig) -> tuple[int, int, int, int]:
    """The portrait's mouth (landmarks 48-67) with a margin, as (x0, y0, x1, y1) in output pixels."""
    lips = default_portrait(config).landmarks[48:68]
    (x0, y0), (x1, y1) = lips.min(axis=0), lips.max(axis=0)
    margin = 0.3 * (x1 - x0)
    return int(x0 - margin), int(y0 - margin), int(x1 + margin), int(y1 + margin)


def decode_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def mouth_change(frames: list[np.ndarray], box: tuple[int, int, int, int]) -> np.ndarray:
    """Mean absolute difference of each frame's mouth region from the first (silent) frame."""
    x0, y0, x1, y1 = box
    rest = frames[0][y0:y1, x0:x1].astype(np.float32)
    return np.array([np.abs(f[y0:y1, x0:x1].astype(np.float32) - rest).mean() for f in frames])


def test_render_speech(small_config: AppConfig, speech_wav: Path, tmp_path: Path) -> None:
    out = tmp_path / "speech.mp4"
    result = render_file(small_config, audio_path=speech_wav, out_path=out, progress=False)
    samples = load_audio_file(speech_wav)
    fps = small_config.video.fps
    expected_frames = math.ceil(len(samples) * fps / SAMPLE_RATE_HZ)
    assert result.frames == expected_frames

    with av.open(str(out)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0]
        assert video.codec_context.name == "h264" and audio.codec_context.name == "aac"
        assert (video.codec_context.width, video.codec_context.height) == (256, 256)
        assert audio.codec_context.sample_rate == 16_000
        duration_s = container.duration / av.time_base
    assert abs(duration_s - len(samples) / SAMPLE_RATE_HZ) < 0.1

    frames = decode_frames(out)
    assert len(frames) == expected_frames
    change = mouth_change(frames, mouth_box(small_config))
    envelope = audio_envelope(samples, len(frames), fps)
    speaking = envelope > 0.1 * envelope.max()
    lead_silence = slice(0, int(0.4 * fps))  # the fixture starts with 0.5 s of silence
    assert not speaking[lead_silence].any()
    assert change[lead_silence].max() < 4.0, "the mouth moved before the speech started"
    assert np.median(change[speaking]) > 8.0, "the mouth hardly moved during speech"
    assert np.median(change[speaking]) > 4 * change[lead_silence].max()
    # Mouth motion follows the words: correlated with the loudness envelope.
    assert np.corrcoef(change, envelope)[0, 1] > 0.5
    # Drive values come back beside every frame.
    assert len(result.drives) == expected_frames and "jaw" in result.drives[0]


def test_render_keeps_the_original_audio(small_config: AppConfig, speech_wav_48k_stereo: Path, tmp_path: Path) -> None:
    out = tmp_path / "stereo.mp4"
    render_file(small_config, audio_path=speech_wav_48k_stereo, out_path=out, progress=False)
    with av.open(str(out)) as container:
        audio = container.streams.audio[0]
        assert audio.codec_context.sample_rate == 48_000
        assert audio.codec_context.channels == 2
        decoded_s = sum(frame.samples for frame in container.decode(audio=0)) / 48_000
    assert abs(decoded_s - len(load_audio_file(speech_wav_48k_stereo)) / SAMPLE_RATE_HZ) < 0.1


def test_render_plays_the_voice_ahead_of_its_frames_by_voice_lead(
    small_config: AppConfig, speech_wav_48k_stereo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "lead.mp4"
    render_file(small_config, audio_path=speech_wav_48k_stereo, out_path=out, progress=False)
    with av.open(str(out)) as container:
        frames = list(container.decode(audio=0))
        start_s = float(frames[0].pts * frames[0].time_base)
        played = np.concatenate([f.to_ndarray()[0] for f in frames]).astype(np.float64)
    with av.open(str(speech_wav_48k_stereo)) as container:
        heard = np.concatenate([f.to_ndarray().reshape(-1)[::2] for f in container.decode(audio=0)]).astype(np.float64)
    n = 1 << int(np.ceil(np.log2(played.size + heard.size)))
    xcorr = np.fft.irfft(np.fft.rfft(heard, n) * np.conj(np.fft.rfft(played, n)), n)
    lag = int(np.argmax(xcorr[:4800]))  # input sample `lag` is at the file's time 0
    assert (lag / 48_000 - start_s) == pytest.approx(small_config.windows.voice_lead_used_s, abs=0.002)


def test_render_refuses_what_is_not_audio(small_config: AppConfig, tmp_path: Path) -> None:
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("this is not audio")
    with pytest.raises(AudioError):
        render_file(small_config, audio_path=not_audio, out_path=tmp_path / "x.mp4", progress=False)


@pytest.mark.slow
def test_cli_render_says_a_sentence(tmp_path: Path) -> None:
    """The README's render command, on the default portrait, as a user runs it."""
    config_path = tmp_path / "small.toml"
    config_path.write_text("[video]\nwidth_px = 256\nheight_px = 256\n")
    out = tmp_path / "hello.mp4"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "avatar",
            "render",
            "--say",
            "Hello there.",
            "-o",
            str(out),
            "--config",
            str(config_path),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip().splitlines()[-1] == str(out)
    assert len(decode_frames(out)) > 25


def test_cli_render_reports_bad_input(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "avatar", "render", str(tmp_path / "missing.wav"), "-o", str(tmp_path / "o.mp4")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 2
    assert "error" in completed.stderr and "missing.wav" in completed.stderr


def test_recording_without_a_microphone_is_a_clear_error(tmp_path: Path) -> None:
    from avatar.errors import DeviceError
    from avatar.microphone import default_input_device

    try:
        name = default_input_device()
    except DeviceError:
        name = None
    if name is not None:
        pytest.skip(f"this machine has a microphone ({name}); the test checks the error without one")
    completed = subprocess.run(
        [sys.executable, "-m", "avatar", "render", "--record", "2", "-o", str(tmp_path / "o.mp4")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 2
    assert "cannot use the microphone" in completed.stderr
    assert not (tmp_path / "o.mp4").exists()
