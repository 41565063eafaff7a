"""The machine's sound devices, through sounddevice (PortAudio): find one by name or index, list all.

sounddevice needs PortAudio (Debian's libportaudio2). A machine may have PortAudio and no device at
all (a server, a container, CI): every lookup then fails with a DeviceError saying what is missing,
before any work; listing says so instead of failing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from avatar.errors import DeviceError

log = logging.getLogger(__name__)

Kind = Literal["input", "output"]

# What a person can do when the voice has no way out to a call app.
OUTPUT_HINT = (
    "a call app takes the voice from a virtual audio cable: on Linux a PulseAudio/PipeWire null sink "
    "(`pactl load-module module-null-sink sink_name=avatar`, then pick its monitor as the call's microphone), "
    "on Windows VB-CABLE, on macOS BlackHole"
)


def sounddevice_module() -> Any:
    """The sounddevice module; DeviceError when the PortAudio library is missing."""
    try:
        import sounddevice
    except OSError as exc:  # raised at import when the PortAudio library is missing
        raise DeviceError(
            "cannot use sound devices: PortAudio is not installed "
            f"(Debian/Ubuntu: sudo apt install libportaudio2) ({exc})"
        ) from exc
    return sounddevice


@dataclass(frozen=True)
class SoundDevice:
    index: int
    name: str
    channels: int  # of the asked-for kind
    default_rate_hz: int


def find_device(spec: str, kind: Kind) -> SoundDevice:
    """The `kind` device named by `spec` (an index, or a name or part of one; "" the default one)."""
    sd = sounddevice_module()
    role = "microphone (input)" if kind == "input" else "voice output"
    devices = sd.query_devices()
    channel_key = f"max_{kind}_channels"
    usable = [d for d in devices if d[channel_key] > 0]
    if not usable:
        fix = f"; {OUTPUT_HINT}" if kind == "output" else "; plug in a microphone or give --input"
        raise DeviceError(f"no sound {kind} device on this machine for the {role}{fix}")
    try:
        if spec.strip() == "":
            info = sd.query_devices(kind=kind)
        else:
            key: int | str = int(spec) if spec.strip().isdigit() else spec
            info = sd.query_devices(key, kind=kind)
    except (ValueError, sd.PortAudioError) as exc:
        names = ", ".join(f"{d['index']}: {d['name']!r}" for d in usable)
        what = "no default" if spec.strip() == "" else f"no {kind} device matches {spec!r}"
        raise DeviceError(f"{role}: {what} ({exc}); {kind} devices: {names}") from exc
    if info[channel_key] < 1:
        raise DeviceError(f"{role}: {info['name']!r} has no {kind} channels")
    return SoundDevice(int(info["index"]), str(info["name"]), int(info[channel_key]), int(info["default_samplerate"]))


def describe_devices() -> list[str]:
    """Lines naming every sound input and output device (the defaults marked), or why there are none."""
    try:
        sd = sounddevice_module()
    except DeviceError as exc:
        return [str(exc)]
    lines: list[str] = []
    try:
        devices = list(sd.query_devices())
        defaults = list(sd.default.device)
    except sd.PortAudioError as exc:
        return [f"cannot list sound devices: {exc}"]
    for kind, default in (("input", defaults[0]), ("output", defaults[1])):
        usable = [d for d in devices if d[f"max_{kind}_channels"] > 0]
        lines.append(f"sound {kind} devices:")
        if not usable:
            lines.append("  (none)" + (f": {OUTPUT_HINT}" if kind == "output" else ""))
        for d in usable:
            mark = " (default)" if d["index"] == default else ""
            lines.append(
                f"  {d['index']}: {d['name']}{mark}, {d[f'max_{kind}_channels']} ch, {int(d['default_samplerate'])} Hz"
            )
    return lines
