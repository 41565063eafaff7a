"""The page in a real headless Chromium, with a fake microphone playing speech, against the server.

Server and browser run together in a fresh network namespace where only `lo` is up (`unshare -n`,
as root), so WebRTC can only use 127.0.0.1. The driver script (tests/browser_check.py) prints one
JSON line: frames decoded, the mouth region's motion drawn from the <video> to a canvas, what each
WebSocket sent (and, for speech items, received), the browser console and the page's
Content-Security-Policy violations, screenshots.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import pytest

from avatar.speech import synthesize_speech
from tests.conftest import SENTENCE

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
SCREENSHOT = Path("/tmp/page.png")
IDLE_SCREENSHOT = Path("/tmp/page-wait.png")
SAY_SCREENSHOT = Path("/tmp/page-say.png")  # taken while the caption shows the sentence
CLIP = Path("/usr/share/sounds/alsa/Front_Center.wav")  # a human voice (Debian alsa-utils)
SAY = "Hello there. I am the portrait, and I say what you type into the box."
LONG = "This is a long sentence that the portrait will not get to finish, because it is stopped."


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


@pytest.fixture(scope="module")
def silent_mic_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A microphone that hears nothing: only the speech items move the mouth."""
    path = tmp_path_factory.mktemp("mic") / "silence.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        out.writeframes(bytes(2 * 16_000 * 2))
    return path


def _browser_check(*args: str, timeout: float = 120) -> dict[str, Any]:
    """Run tests/browser_check.py in a fresh network namespace; its JSON result (errors asserted)."""
    reason = _namespace_reason()
    if reason is not None:
        pytest.skip(reason)
    script = f"ip link set lo up && exec {sys.executable} tests/browser_check.py {shlex.join(args)}"
    env = {**os.environ}
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result; rc={proc.returncode}\nstdout:{proc.stdout[-2000:]}\nstderr:{proc.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    print(json.dumps({k: v for k, v in result.items() if k != "traceback"}))
    assert "error" not in result, result.get("traceback") or result["error"] + "\n" + proc.stderr[-4000:]
    return result


def _assert_clean_console(result: dict[str, Any]) -> None:
    """The server's CSP was in force, and nothing broke it or logged an error (a 404 would)."""
    assert "script-src 'self'" in (result["csp"] or ""), result["csp"]
    assert result["console_on_load"] == [], result["console_on_load"]
    assert result["console_problems"] == [], result["console_problems"]
    assert result["csp_violations"] == [], result["csp_violations"]


def test_page_in_chromium_talks(fake_mic_wav: Path) -> None:
    SCREENSHOT.unlink(missing_ok=True)
    result = _browser_check("--wav", str(fake_mic_wav), "--screenshot", str(SCREENSHOT), "--seconds", "6")
    _assert_clean_console(result)

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
    # Whenever the video shows, the page says it is synthetic, right under the video, and what the
    # server's frames carry (welcome.disclosure: here the visible label and the watermark).
    label = result["disclosure"]
    assert label["visible"] is True, label
    assert label["badge"] == "AI-generated", label
    assert "labelled and watermarked" in label["text"], label
    assert 0 <= label["gap_px"] <= 24 and 0 <= label["left_px"] <= 24, label
    assert result["disclosure_before_start"]["visible"] is False  # no video yet, the placeholder shows
    assert result["disclosure_after_stop"]["visible"] is False
    # Stop ended the session; the page opens no socket until it needs one.
    assert result["sessions_before_stop"] == 1, result
    assert result["session_ended_on_stop"] is True, result
    assert result["sockets"] == [["hello", "binary", "portrait", "offer", "bye"]], result["sockets"]
    assert SCREENSHOT.is_file()


def test_page_waits_past_offer_timeout_then_starts(fake_mic_wav: Path) -> None:
    """Wrong tokens get rate_limited without reconnects; a person who waits longer than
    offer_timeout_s before Start sees no error, the page does not reconnect in a loop, and Start then
    works; max_session_s ends the session with a readable text."""
    IDLE_SCREENSHOT.unlink(missing_ok=True)
    result = _browser_check(
        "--scenario", "idle", "--offer-timeout", "1.5", "--max-session", "5",
        "--wav", str(fake_mic_wav), "--screenshot", str(IDLE_SCREENSHOT),
    )  # fmt: skip
    _assert_clean_console(result)

    # Wrong tokens: refused, then throttled with a readable text; Start waits out the throttle and
    # the page never asks again by itself (one socket per load, one rate_limited refusal in all).
    limited = result["rate_limited_page"]
    assert "try again in" in (limited["error"] or ""), limited
    assert not limited["startEnabled"] and limited["state"].startswith("Start again in"), limited
    assert result["rate_limited_held_s"] >= 0.5, result
    after = result["rate_limited_after"]
    assert after["held"] and after["startEnabled"] and after["connections"] == 1, after
    assert result["rate_limited_refusals"] == 1, result
    assert result["unauthorized_refusals"] == result["rate_limited_loads"] - 1, result

    # Idle past the timeout three times over: the server ended the first session once, quietly.
    idle = result["idle_page"]
    assert result["idle_s"] >= 4.5, result["idle_s"]
    assert result["offer_timeouts"] == 1, result
    assert result["clients_while_idle"] == 0, result
    assert idle["error"] is None, idle
    assert idle["state"] == "Ready" and idle["startEnabled"], idle
    assert idle["sockets"] == [["hello", "portrait"]], idle["sockets"]
    assert idle["connections"] == 1 and not idle["open"], idle

    # Start opened a fresh session: hello, the chosen portrait again, then the offer; video flows.
    session = result["session_page"]
    assert session["sockets"] == [["hello", "portrait"], ["hello", "portrait", "offer"]], session["sockets"]
    assert session["error"] is None, session
    assert result["sessions_started"] == 1, result
    first, last = result["frames_decoded"]
    assert last > first + 30, result["frames_decoded"]
    assert 18.0 <= result["decoded_fps"] <= 27.0, result["decoded_fps"]
    # This server draws no label into its frames: the page's own label says so, and still shows.
    label = result["disclosure"]
    assert label["visible"] is True and label["badge"] == "AI-generated", label
    assert "(watermarked)" in label["text"] and "no label" in label["text"], label

    # max_session_s: the session ends with a message a person understands, and the page waits.
    ended = result["ended_page"]
    assert result["max_session_ends"] == 1, result
    assert "maximum length" in (result["ended_error"] or ""), result["ended_error"]
    assert "Press Start" in ended["error"], ended
    assert ended["state"] == "Session ended" and ended["startEnabled"], ended
    assert ended["connections"] == 2 and not ended["open"], ended
    assert result["active_after_end"] == 0 and result["clients_after_end"] == 0, result
    # A portrait chosen afterwards opens a fresh session for it, and the old message goes away.
    chosen = result["chosen_after_end"]
    assert chosen and chosen["sockets"][2] == ["hello", "portrait"] and chosen["error"] is None, chosen
    assert IDLE_SCREENSHOT.is_file()


def _changes(captions: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The caption's states (text, and when: before, during or after the item was heard), repeats dropped."""
    out: list[tuple[str, str]] = []
    for c in captions:
        state = ("" if c["hidden"] else c["text"], c["when"])
        if not out or out[-1] != state:
            out.append(state)
    return out


def _assert_spoken(item: dict[str, Any], kind: str, text: str | None, caption: str) -> None:
    """One item sent, heard (speaking, then spoken, not interrupted), captioned while heard and
    only then, with the mouth moving and the voice coming back meanwhile."""
    assert len(item["sent"]) == 1 and item["sent"][0]["type"] == kind, item["sent"]
    if text is not None:
        assert item["sent"][0]["text"] == text, item["sent"]
    item_id = item["sent"][0]["id"]
    speaking: dict[str, Any] = {"type": "speaking", "id": item_id}
    if kind == "say":
        speaking["text"] = text
    assert item["events"] == [speaking, {"type": "spoken", "id": item_id, "interrupted": False}], item["events"]
    # The caption appeared with the speaking event and was cleared by the spoken one.
    assert _changes(item["captions"]) == [(caption, "during"), ("", "after")], item["captions"]
    assert item["caption_polled"] == [caption], item["caption_polled"]
    assert item["after"]["caption"] is None and item["after"]["captionHidden"] is False, item["after"]
    # The mouth region (drawn from the <video>) moved while the item was heard, and was still before.
    mouth = item["mouth"]
    assert mouth["rest_grabs"] >= 10 and mouth["during_grabs"] >= 5, mouth
    assert mouth["during_p90"] > 3 * max(1.0, mouth["rest_p90"]), mouth
    # The portrait's voice came back (the received audio's energy rose while it spoke).
    before, after = item["voice_energy"]
    assert after - before > 0.005, item["voice_energy"]  # silence adds about 1e-9
    # The session went on: connected, no banner, nothing else to say.
    assert item["after"]["connection"] == "connected" and item["after"]["error"] is None, item["after"]


def test_page_says_typed_text_plays_a_clip_and_presents_without_a_microphone(silent_mic_wav: Path) -> None:
    """The speech box in Chromium: a typed sentence (Say button) is spoken with its caption and a
    moving mouth; an uploaded clip plays; Enter sends and Stop speaking cuts it short; an empty text
    and a clip over 20 MB are refused beside the box while the session goes on; then, with the
    microphone refused, the presenter mode (recvonly audio) still shows the portrait and speaks."""
    SAY_SCREENSHOT.unlink(missing_ok=True)
    result = _browser_check(
        "--scenario", "say", "--wav", str(silent_mic_wav), "--say", SAY, "--clip", str(CLIP),
        "--screenshot", str(SAY_SCREENSHOT), timeout=240,
    )  # fmt: skip
    _assert_clean_console(result)
    speech_controls = ("say-text", "say", "clip", "stop-speaking")

    # Before Start the speech controls are off (the presenter choice is on); while it runs, on.
    before = result["before_start"]
    assert not any(before["enabled"][c] for c in speech_controls), before
    assert before["enabled"]["presenter"] and before["captionHidden"], before
    running = result["running"]
    assert all(running["enabled"][c] for c in speech_controls), running
    assert not running["enabled"]["presenter"] and running["caption"] is None, running

    # A sentence typed and sent with Say; then a clip uploaded through the file input.
    _assert_spoken(result["say"], "say", SAY, SAY)
    assert result["say"]["after"]["field"] == "", result["say"]["after"]  # the box is ready for the next
    assert result["say"]["screenshot"] and SAY_SCREENSHOT.is_file()
    _assert_spoken(result["clip"], "play", None, "(audio clip)")

    # Enter sends; Stop speaking sends clear: the item ends interrupted and the caption clears.
    cut = result["cut"]
    assert result["cut_caption"] == LONG, result["cut_caption"]
    assert cut["speaking"] and cut["spoken"]["interrupted"] is True, cut
    assert cut["events"] == ["speaking", "spoken"], cut
    assert cut["after"]["caption"] is None and cut["after"]["connection"] == "connected", cut["after"]
    assert result["sockets_sent"] == [["hello", "portrait", "offer", "say", "play", "say", "clear"]]

    # An empty text: the server's bad_speech is shown beside the box, no banner, the session goes on.
    error = result["empty_error"]
    assert error["code"] == "bad_speech" and "empty" in error["message"], error
    empty = result["empty"]
    assert empty["statusBad"] and "empty" in empty["status"], empty
    assert empty["error"] is None and empty["connection"] == "connected", empty
    # A clip over 20 MB is refused by the page with a readable message, and not sent.
    huge = result["huge_clip"]
    assert huge and "too large" in huge["status"] and "20 MB" in huge["status"], huge
    assert result["huge_clip_sent"] == 0 and huge["error"] is None, result
    # ...and the session still speaks.
    _assert_spoken(result["still_here"], "say", "Still here.", "Still here.")
    assert result["still_here"]["after"]["sockets"] == 1, result["still_here"]["after"]
    assert result["sessions_before_stop"] == 1 and result["session_ended_on_stop"] is True, result
    after_stop = result["after_stop"]
    assert not any(after_stop["enabled"][c] for c in speech_controls) and after_stop["captionHidden"], after_stop

    # The microphone refused: Start says so and points to the presenter mode.
    refused = result["refused_microphone"]
    assert "denied" in refused["error"] and "Presenter" in refused["error"], refused
    assert refused["enabled"]["start"] and refused["enabled"]["presenter"], refused
    # Presenter: no microphone asked for or sent (a recvonly audio transceiver), video and a
    # spoken sentence with its voice all the same.
    assert result["presenter_get_user_media_calls"] == 1, result  # only the refused attempt
    assert result["presenter_offer_audio"] == ["recvonly"], result["presenter_offer_audio"]
    assert result["presenter_senders"] == 0, result
    assert result["presenter_running"]["state"] == "Live: type what it says", result["presenter_running"]
    assert result["presenter_candidates"] == ["127.0.0.1"] and result["presenter_connection"] == "connected"
    first, last = result["presenter_frames"]
    assert last > first + 30, result["presenter_frames"]
    _assert_spoken(result["presenter_say"], "say", SAY, SAY)
    assert result["presenter_audio_bytes"][1] > result["presenter_audio_bytes"][0] + 10_000, result
    assert result["presenter_sessions"] == 1 and result["presenter_ended_on_stop"] is True, result
    assert result["sockets"] == [["hello", "portrait", "offer", "say", "bye"]], result["sockets"]
