"""The local microphone, for `avatar render --record SECONDS`: record yourself, then render.

sounddevice needs PortAudio (Debian's libportaudio2) and an input device. Where either is missing
(a server, a container, CI) recording fails with a DeviceError that says which, before any work.
"""

from __future__ import annotations

import logging
import wave
from pathlib import Path

import numpy as np

from avatar.config import SAMPLE_RATE_HZ
from avatar.errors import DeviceError

log = logging.getLogger(__name__)


def _sounddevice():  # type: ignore[no-untyped-def]
    try:
        import sounddevice
    except OSError as exc:  # raised at import when the PortAudio library is missing
        raise DeviceError(f"cannot use the microphone: PortAudio is not installed ({exc})") from exc
    return sounddevice


def default_input_device() -> str:
    """The name of the default input device; DeviceError when there is none."""
    sd = _sounddevice()
    try:
        info = sd.query_devices(kind="input")
    except sd.PortAudioError as exc:
        raise DeviceError(f"cannot use the microphone: no input device found ({exc})") from exc
    return str(info["name"])


def record_microphone(seconds: float, out_path: Path) -> Path:
    """Record `seconds` of mono 16 kHz audio from the default input device into a WAV file."""
    if not 0 < seconds <= 600:
        raise DeviceError("record between 0 and 600 seconds")
    sd = _sounddevice()
    name = default_input_device()
    log.info("recording %.1f s from %r", seconds, name)
    try:
        samples = sd.rec(round(seconds * SAMPLE_RATE_HZ), samplerate=SAMPLE_RATE_HZ, channels=1, dtype="int16")
        sd.wait()
    except sd.PortAudioError as exc:
        raise DeviceError(f"recording from {name!r} failed: {exc}") from exc
    with wave.open(str(out_path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE_HZ)
        wav.writeframes(np.ascontiguousarray(samples, dtype="<i2").tobytes())
    return out_path
