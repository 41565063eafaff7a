"""The page in a real headless Chromium, with a fake microphone playing speech, against the server.

Server and browser run together in a fresh network namespace where only `lo` is up (`unshare -n`,
as root), so WebRTC can only use 127.0.0.1. The driver script (tests/browser_check.py) prints one
JSON line: frames decoded, the mouth region's motion drawn from the <video> to a canvas, a screenshot.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from avatar.speech import synthesize_speech
from tests.conftest import SENTENCE

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
SCREENSHOT = Path("/tmp/page.png")


def _namespace_reason() -> str | None:
    """Why the test cannot run here, or None."""
    for tool in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
        if not Path(tool).exists():
            return f"{tool} is not installed (scripts/setup.sh installs chromium and chromium-driver)"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip (util-linux, iproute2) is missing"
    probe = subprocess.run(
        ["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True, timeout=20
    )
    if probe.returncode != 0:
        return f"cannot make a network namespace here (unshare -n needs root): {probe.stderr.strip()[:200]}"
    return None


@pytest.fixture(scope="module")
def fake_mic_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Chromium loops the file: speech, then a short pause, again and again.
    return synthesize_speech(
        SENTENCE, tmp_path_factory.mktemp("mic") / "mic.wav", lead_silence_s=0.3, tail_silence_s=0.7
    )


def test_page_in_chromium_talks(fake_mic_wav: Path) -> None:
    reason = _namespace_reason()
    if reason is not None:
        pytest.skip(reason)
    SCREENSHOT.unlink(missing_ok=True)
    script = (
        f"ip link set lo up && exec {sys.executable} tests/browser_check.py"
        f" --wav {fake_mic_wav} --screenshot {SCREENSHOT} --seconds 6"
    )
    env = {**os.environ}
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, env=env
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result; rc={proc.returncode}\nstdout:{proc.stdout[-2000:]}\nstderr:{proc.stderr[-4000:]}"
    result = json.loads(lines[-1])
    print(json.dumps({k: v for k, v in result.items() if k != "traceback"}))
    assert "error" not in result, result.get("traceback") or result["error"] + "\n" + proc.stderr[-4000:]

    # An upload without a face got a readable refusal.
    assert "face" in (result["no_face_error"] or "").lower(), result["no_face_error"]
    # WebRTC stayed on loopback and the connection came up.
    assert result["remote_candidates"] == ["127.0.0.1"]
    assert result["connection_state"] == "connected"
    assert result["video_size"] == [256, 256]
    # Video frames are decoded at about the configured rate.
    first, last = result["frames_decoded"]
    assert last > first + 60, result["frames_decoded"]
    assert 18.0 <= result["decoded_fps"] <= 27.0, result["decoded_fps"]
    # The voice comes back.
    assert result["audio_bytes"] > 10_000
    # The portrait's mouth moves: some grabbed frames differ clearly from the typical (closed) mouth.
    assert result["grabs"] >= 40
    assert result["mouth_diff_max"] > 4.0, result
    assert result["mouth_diff_p90"] > 1.5 * result["mouth_diff_min"], result
    # Stop ended the session (the page's fresh socket for the next Start holds no session slot).
    assert result["sessions_before_stop"] == 1, result
    assert result["session_ended_on_stop"] is True, result
    assert SCREENSHOT.is_file()
