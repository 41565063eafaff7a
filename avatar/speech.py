"""Speech sources: text spoken by a synthesiser, and audio clips, as the chain's samples.

`synthesize_speech` writes espeak-ng speech to a WAV (`avatar render --say`, the benchmarks, the
tests; no recording ships with the project). For a live session, `synthesize` runs the configured
synthesiser (`[tts]`: espeak-ng, or any command that reads text and writes a WAV) off the event
loop with a time limit, and `decode_clip` decodes a clip in any format av reads; both give a
`SpeechClip`, the same speech at 48 kHz (the voice sent back) and 16 kHz (the drive).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from avatar.audio import AudioNormalizer
from avatar.config import SAMPLE_RATE_HZ, TtsConfig
from avatar.errors import AudioError, SpeechError

VOICE_RATE_HZ = 48_000  # the rate of the voice a session sends back

DEMO_SENTENCE = (
    "Hello! I am a talking portrait. Speak to me, and I will move my lips with your words. "
    "Open wide, say ooh, and then... stop."
)


def _require(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise AudioError(f"{tool} is not installed; run scripts/setup.sh or `apt-get install {package}`")
    return path


def synthesize_speech(
    text: str,
    out_path: Path,
    *,
    sample_rate_hz: int = 16_000,
    channels: int = 1,
    lead_silence_s: float = 0.5,
    tail_silence_s: float = 0.5,
    words_per_minute: int = 150,
    voice: str = "en-us",
    pitch: int | None = None,
    ssml: bool = False,
) -> Path:
    """Speak `text` into a 16-bit PCM WAV at `sample_rate_hz` with silence before and after.

    `pitch`: espeak-ng's 0..99 (None: the voice's own); `ssml`: `text` is SSML markup."""
    espeak = _require("espeak-ng", "espeak-ng")
    sox = _require("sox", "sox")
    out_path = Path(out_path)
    raw_path = out_path.with_suffix(".espeak.wav")
    subprocess.run(
        [
            espeak, "-v", voice, "-s", str(words_per_minute), *(["-p", str(pitch)] if pitch is not None else []),
            *(["-m"] if ssml else []), "-w", str(raw_path), text,
        ],  # fmt: skip
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            [
                sox, str(raw_path), "-b", "16", "-e", "signed-integer", "-c", str(channels),
                "-r", str(sample_rate_hz), str(out_path),
                "pad", f"{lead_silence_s}", f"{tail_silence_s}",
            ],
            check=True,
            capture_output=True,
        )
    finally:
        raw_path.unlink(missing_ok=True)
    return out_path


@dataclass(frozen=True)
class SpeechClip:
    """One speech item's audio: mono int16 at 48 kHz and at 16 kHz, of the same duration."""

    samples48: np.ndarray
    samples16: np.ndarray

    @property
    def duration_s(self) -> float:
        return self.samples48.size / VOICE_RATE_HZ


def decode_clip(data: bytes, max_s: float) -> SpeechClip:
    """An audio file's bytes (any format av decodes) -> a SpeechClip; SpeechError if unusable."""
    if not data:
        raise SpeechError("the audio clip is empty")
    to48 = AudioNormalizer(VOICE_RATE_HZ)
    parts48: list[np.ndarray] = []
    decoded = 0.0
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise SpeechError("the clip holds no audio stream")
            for frame in container.decode(container.streams.audio[0]):
                decoded += frame.samples / max(1, frame.sample_rate)
                if decoded > max_s:
                    raise SpeechError(f"the clip is longer than {max_s:g} s")
                parts48.append(to48.push_frame(frame))
    except SpeechError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, AudioError) as exc:
        raise SpeechError(f"the clip cannot be decoded as audio: {exc}") from None
    parts48.append(to48.flush())
    samples48 = np.concatenate(parts48)
    if samples48.size == 0:
        raise SpeechError("the clip holds no audio samples")
    to16 = AudioNormalizer(SAMPLE_RATE_HZ)
    samples16 = np.concatenate([to16.push_array(samples48, VOICE_RATE_HZ), to16.flush()])
    # The two resamplers may differ by a few samples: make the durations match exactly (3:1).
    n16 = min(samples16.size, samples48.size // 3)
    return SpeechClip(samples48[: n16 * 3].astype(np.int16), samples16[:n16].astype(np.int16))


@functools.cache
def espeak_voices() -> frozenset[str]:
    """The names espeak-ng takes for `-v`: its languages (en-us), voice names and file names."""
    espeak = _require("espeak-ng", "espeak-ng")
    listing = subprocess.run([espeak, "--voices"], capture_output=True, text=True, timeout=10, check=True).stdout
    names: set[str] = set()
    for line in listing.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 5:
            names.update({cols[1].lower(), cols[3].lower(), cols[4].lower(), cols[4].rsplit("/", 1)[-1].lower()})
    return frozenset(names)


def check_text(text: str, voice: str | None, tts: TtsConfig) -> str:
    """The voice to use for `text`, or SpeechError: empty or overlong text, an unknown voice."""
    if not text.strip():
        raise SpeechError("the text to say is empty")
    if len(text) > tts.max_text_chars:
        raise SpeechError(f"the text is too long ({len(text)} characters, at most {tts.max_text_chars})")
    chosen = (voice or tts.voice).strip()
    if not chosen or len(chosen) > 100 or chosen.startswith("-") or any(c in chosen for c in "\x00\n\r"):
        raise SpeechError(f"{chosen[:40]!r} is not a voice name")
    if tts.voices:
        if chosen not in tts.voices:
            raise SpeechError(f"unknown voice {chosen[:40]!r}; this server has {', '.join(tts.voices)}")
    elif not tts.command and chosen.lower() not in espeak_voices():
        raise SpeechError(f"unknown voice {chosen[:40]!r}; espeak-ng voices are named like en-us, en-gb, de, fr")
    return chosen


async def synthesize(text: str, voice: str | None, tts: TtsConfig) -> SpeechClip:
    """Speak `text` with the configured synthesiser, off the event loop, within `tts.timeout_s`."""
    chosen = check_text(text, voice, tts)
    with tempfile.TemporaryDirectory(prefix="avatar-tts-") as tmp:
        out = os.path.join(tmp, "speech.wav")
        if tts.command:
            argv = [arg.replace("{out}", out).replace("{voice}", chosen) for arg in tts.command]
        else:
            argv = [_require("espeak-ng", "espeak-ng"), "-v", chosen, "--stdin", "-w", out]
        try:
            # Its own process group, so that a time-out kills whatever it started too.
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
            )
        except OSError as exc:
            raise SpeechError(f"the speech synthesiser {argv[0]!r} cannot be started: {exc}") from None
        try:
            _, stderr = await asyncio.wait_for(proc.communicate(text.encode("utf-8")), tts.timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise SpeechError(f"the speech synthesiser took longer than {tts.timeout_s:g} s") from None
        if proc.returncode != 0:
            last = (stderr.decode("utf-8", "replace").strip().splitlines() or [""])[-1][:200]
            raise SpeechError(f"the speech synthesiser failed (exit status {proc.returncode}) {last}".strip())
        try:
            data = Path(out).read_bytes()
        except OSError:
            raise SpeechError("the speech synthesiser wrote no audio file") from None
    return await asyncio.to_thread(decode_clip, data, tts.max_clip_s)
