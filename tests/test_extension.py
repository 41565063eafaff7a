"""The browser extension (web/extension) in a real headless Chromium, against the server.

A call page on another origin (http://call.example:PORT, mapped to 127.0.0.2) finds the "Talking
portrait" camera, gets it with audio and sends it through WebRTC to a second peer in the same page;
the far end must get the portrait at full frame rate, a moving mouth and the voice. The server and
browser run in a network namespace where only `lo` is up, as in tests/test_browser.py; the driver is
tests/extension_check.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.av_sync import sync_drive_wav
from tests.conftest import SENTENCE
from tests.test_browser import _namespace_reason

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def extension_result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    reason = _namespace_reason()
    if reason is not None:
        pytest.skip(reason)
    # Syllables, two recordings of a human voice and a sentence; sampled for one whole loop of it.
    wav, seconds = sync_drive_wav(tmp_path_factory.mktemp("mic") / "mic.wav", SENTENCE)
    script = f"ip link set lo up && exec {sys.executable} tests/extension_check.py --wav {wav} --seconds {seconds:.1f}"
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=150,
        env={**os.environ},
    )  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result; rc={proc.returncode}\nstdout:{proc.stdout[-2000:]}\nstderr:{proc.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    print(json.dumps({k: v for k, v in result.items() if k not in ("traceback", "devices")}))
    assert "error" not in result, result.get("traceback") or result["error"] + "\n" + proc.stderr[-4000:]
    return result


def test_camera_is_listed_on_another_origin(extension_result: dict[str, Any]) -> None:
    r = extension_result
    assert r["page_origin"].startswith("http://call.example:") and r["secure_context"] is True, r
    # The reason signalling runs in the service worker: the page's own WebSocket is refused (403).
    assert r["page_socket"] == "error", r["page_socket"]
    cameras = [d for d in r["devices"] if d["kind"] == "videoinput"]
    assert [d["label"] for d in cameras] == ["fake_device_0", "Talking portrait"], cameras
    assert r["devices_again"] == ["talking-portrait-camera"]  # stable across loads


def test_portrait_camera_reaches_the_far_end(extension_result: dict[str, Any]) -> None:
    r = extension_result
    tracks = {t["kind"]: t for t in r["call"]["tracks"]}
    assert tracks["video"]["label"] == "Talking portrait" and tracks["video"]["state"] == "live", tracks
    assert tracks["video"]["deviceId"] == "talking-portrait-camera", tracks
    assert "audio" in tracks and tracks["audio"]["state"] == "live", tracks
    assert r["sessions_during_call"] == 1
    # Full frame rate at the far end of a second WebRTC hop, at the server's size.
    assert r["far_size"] == [256, 256], r["far_size"]
    assert 20.0 <= r["far_fps"] <= 27.0, r["far_fps"]
    # The mouth moves during speech; the voice arrives with energy.
    sync, heard = r["sync"], r["sync_web_audio"]
    assert sync["frames"] >= 250, sync
    assert sync["mouth_max"] > 4.0 and sync["mouth_p90"] > 1.5 * sync["mouth_min"], sync
    assert r["far_audio_bytes"] > 10_000 and sync["rms_max"] > 0.01 and heard["rms_max"] > 0.01, r
    # Lips and voice in sync at the far end: the median, over the voice onsets after silence
    # (syllables, the recordings, the sentence's words), of the first open-mouth frame's display
    # time minus the time the far end played the voice out (tests/av_sync.py). The far end is two
    # Chromium hops sharing 2 cores with the server and the test: its jitter buffers settle on a
    # different delay each run (medians of 7 to 80 ms in nine idle runs here, 108 and 139 ms in two
    # CI runs; `bench/call_sync.py` measures the spread), so this bounds a gross loss of sync (a
    # queue of frames, a wrong voice lead: several frames off), and the benchmark keeps the precision.
    assert sync["onset_onsets"] >= 8, sync
    assert -150 <= sync["onset_median_ms"] <= 200, sync
    # Mouth motion follows the voice's envelope at both ends.
    assert sync["corr"] > 0.4 and r["sync_near_web_audio"]["corr"] > 0.4, (sync, r["sync_near_web_audio"])
    # The popup shows the running session and can check the service.
    assert "connected" in r["popup"]["sessions"], r["popup"]
    assert r["popup"]["check"].startswith("Connected: 256x256"), r["popup"]
    assert "astronaut" in r["popup"]["portraits"], r["popup"]
    # A picture uploaded in the popup is the next session's portrait (the astronaut, mirrored).
    assert r["upload"].startswith("Uploaded picture in use"), r["upload"]
    shown = r["upload_frame"]
    assert shown["uploaded"] > 0.9 and shown["uploaded"] > shown["default"] + 0.2, shown


def test_stopping_or_closing_ends_the_session(extension_result: dict[str, Any]) -> None:
    r = extension_result
    assert r["ended_on_stop"] is True and r["ended_on_stop_s"] < 2.0, r
    assert r["two"] == {"ok": True, "tracks": [1, 1]} and r["two_sessions"] == 2, r
    assert r["two_ended"] is True
    busy = r["busy"]
    assert busy["ok"] is False and busy["name"] == "NotReadableError" and "busy" in busy["message"], busy
    assert "busy" in (r["popup_busy"]["last_error"] or ""), r["popup_busy"]
    assert r["tab_call"] == {"ok": True} and r["tab_sessions"] == 1, r
    assert r["tab_closed_ended"] is True and r["tab_closed_ended_s"] < 2.0, r


def test_errors_are_readable_and_real_camera_works(extension_result: dict[str, Any]) -> None:
    r = extension_result
    wrong = r["wrong_token"]
    assert wrong["ok"] is False and wrong["isDOMException"] and wrong["name"] == "NotReadableError", wrong
    assert "access token" in wrong["message"] and "popup" in wrong["message"], wrong
    assert r["active_after_wrong_token"] == 0
    down = r["service_down"]
    assert down["name"] == "NotReadableError" and "cannot reach the service" in down["message"], down
    real = r["real_camera"]
    assert real["ok"] and real["label"] == "fake_device_0" and real["state"] == "live" and real["audio"] == 1, real
    assert r["active_after_real_camera"] == 0
    # Nothing logged an error but the page's own refused WebSocket (the probe above).
    problems = [p for p in r["console_problems"] if "403" not in p["message"]]
    assert problems == [], problems
