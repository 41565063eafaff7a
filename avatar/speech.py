"""Spoken test audio made on this machine with espeak-ng (and sox for padding and resampling).

Used by `avatar render --say`, the benchmarks and the tests; no recording ships with the project.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from avatar.errors import AudioError

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
) -> Path:
    """Speak `text` into a 16-bit PCM WAV at `sample_rate_hz` with silence before and after."""
    espeak = _require("espeak-ng", "espeak-ng")
    sox = _require("sox", "sox")
    out_path = Path(out_path)
    raw_path = out_path.with_suffix(".espeak.wav")
    subprocess.run(
        [espeak, "-v", voice, "-s", str(words_per_minute), "-w", str(raw_path), text],
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
