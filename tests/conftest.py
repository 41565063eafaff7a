"""Shared fixtures: real speech made at test time with espeak-ng, and small real audio files."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from avatar.config import AppConfig
from avatar.speech import synthesize_speech

SENTENCE = "Open the window wide. Move the boat, my friend."


@pytest.fixture(scope="session", autouse=True)
def _user_data_in_a_temporary_directory(tmp_path_factory: pytest.TempPathFactory) -> object:
    """Renders sign with a local chain made in the user's data directory: keep the tests' own
    (and the CLIs they start) out of the real home."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg-data")))
        yield


@pytest.fixture(scope="session")
def config() -> AppConfig:
    """Defaults, not the repository's config.toml, so a local edit cannot change test outcomes."""
    return AppConfig()


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audio")


@pytest.fixture(scope="session")
def speech_wav(audio_dir: Path) -> Path:
    """A spoken sentence, 16 kHz mono 16-bit, with 0.5 s of silence before and after."""
    return synthesize_speech(SENTENCE, audio_dir / "speech16k.wav")


@pytest.fixture(scope="session")
def speech(speech_wav: Path) -> np.ndarray:
    """The sentence as int16 mono 16 kHz samples."""
    from avatar.audio import load_audio_file

    return load_audio_file(speech_wav)


@pytest.fixture(scope="session")
def speech_wav_48k_stereo(audio_dir: Path) -> Path:
    return synthesize_speech(SENTENCE, audio_dir / "speech48k.wav", sample_rate_hz=48_000, channels=2)


@pytest.fixture(scope="session")
def speech_wav_8k(audio_dir: Path) -> Path:
    return synthesize_speech(SENTENCE, audio_dir / "speech8k.wav", sample_rate_hz=8_000)


@pytest.fixture(scope="session")
def silence_wav(audio_dir: Path) -> Path:
    path = audio_dir / "silence.wav"
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(path), "trim", "0", "2"], check=True)
    return path


@pytest.fixture(scope="session")
def noise_wav(audio_dir: Path) -> Path:
    """Two seconds of white noise at a moderate level."""
    path = audio_dir / "noise.wav"
    subprocess.run(
        ["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(path), "synth", "2", "whitenoise", "vol", "0.3"],
        check=True,
    )
    return path


@pytest.fixture(scope="session")
def clipped_speech_wav(speech_wav: Path, audio_dir: Path) -> Path:
    """The sentence amplified 20 dB so that it clips hard."""
    path = audio_dir / "clipped.wav"
    subprocess.run(["sox", str(speech_wav), str(path), "gain", "20"], check=True, capture_output=True)
    return path


def read_wav_int16(path: Path) -> tuple[np.ndarray, int]:
    """Read a 16-bit PCM WAV with the standard library: (samples (n, channels) int16, rate_hz)."""
    import wave

    with wave.open(str(path), "rb") as wav:
        rate = wav.getframerate()
        channels = wav.getnchannels()
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, channels)
    return data, rate


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Small per-frame ops: on a busy 2-core machine, intra-op threads spin at barriers (40x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
