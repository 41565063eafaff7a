"""Drive the page in a real headless Chromium against a real server; print one JSON line of results.

Run by tests/test_browser.py inside a network namespace where only `lo` is up (`unshare -n`), so
both WebRTC ends can only meet on 127.0.0.1. The server runs in this process (a thread with its own
event loop); Chromium gets the flags of DESIGN.md section 4 and a fake microphone playing a WAV.

    python tests/browser_check.py --wav SPEECH.wav [--screenshot /tmp/page.png]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from avatar.config import AppConfig, with_overrides  # noqa: E402
from signaling.server import SignalingServer  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

GRAB_JS = """
const [x, y, w, h, done] = arguments;
const video = document.getElementById('video');
if (!video || video.videoWidth === 0) { done(null); return; }
const canvas = window.__grab || (window.__grab = document.createElement('canvas'));
canvas.width = video.videoWidth; canvas.height = video.videoHeight;
const ctx = canvas.getContext('2d', { willReadFrequently: true });
ctx.drawImage(video, 0, 0);
const data = ctx.getImageData(x, y, w, h).data;
const gray = new Array(w * h);
for (let i = 0; i < w * h; i++) gray[i] = (data[4 * i] + data[4 * i + 1] + data[4 * i + 2]) / 3;
done({ gray, width: video.videoWidth, height: video.videoHeight, t: performance.now() });
"""

STATS_JS = """
const done = arguments[0];
const pc = window.portraitApp && window.portraitApp.pc;
if (!pc) { done(null); return; }
pc.getStats().then((report) => {
  let out = { framesDecoded: 0, audioBytes: 0, state: pc.connectionState, candidates: [] };
  report.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') out.framesDecoded = s.framesDecoded || 0;
    if (s.type === 'inbound-rtp' && s.kind === 'audio') out.audioBytes = s.bytesReceived || 0;
    if (s.type === 'remote-candidate') out.candidates.push(s.address || s.ip);
  });
  done(out);
});
"""


class ServerThread:
    """A SignalingServer on its own event loop in a thread."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.server: SignalingServer | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> str:
        self.thread.start()
        self.server = SignalingServer(self.config)
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(120)
        return self.server.url

    def stop(self) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.aclose(2.0), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def chromium(wav: Path, profile: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
        "--allow-loopback-in-peer-connection",
        "--autoplay-policy=no-user-gesture-required",
        "--window-size=1100,900",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def wait_for(predicate: Any, timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    config = with_overrides(
        AppConfig(),
        server={"host": "127.0.0.1", "port": 0},
        webrtc={"host_addresses": ["127.0.0.1"]},
        video={"width_px": args.size, "height_px": args.size, "fps": args.fps},
        # Only speech moves the mouth region: no head motion or breathing to confuse the check.
        warp={"head_motion": 0.0, "breathing": 0.0},
    )
    result: dict[str, Any] = {}
    server = ServerThread(config)
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
    driver = None
    t0 = time.monotonic()
    try:
        url = server.start()
        result["url"] = url
        result["server_start_s"] = round(time.monotonic() - t0, 2)
        driver = chromium(args.wav, profile)
        driver.set_script_timeout(10)
        driver.get(url)
        from selenium.webdriver.common.by import By

        start = driver.find_element(By.ID, "start")
        if not wait_for(lambda: start.is_enabled(), 20):
            raise RuntimeError("the Start button never became enabled (no welcome?)")
        # An upload without a face is refused with a message a person understands.
        no_face = profile.parent / f"{profile.name}-gray.png"
        Image.fromarray(np.full((240, 240, 3), 140, np.uint8)).save(no_face)
        driver.find_element(By.ID, "file").send_keys(str(no_face))
        status = driver.find_element(By.ID, "portrait-status")
        result["no_face_error"] = wait_for(lambda: "cannot be used" in status.text and status.text, 20)
        no_face.unlink()
        if args.screenshot:  # the page before Start, with the refusal shown
            driver.save_screenshot(str(args.screenshot.with_name(args.screenshot.stem + "-idle.png")))
        # Choose the built-in portrait explicitly: its reply carries the face box.
        driver.execute_script(
            "window.__portrait = null; const ws = window.portraitApp.ws;"
            "ws.addEventListener('message', (e) => { try { const m = JSON.parse(e.data);"
            " if (m.type === 'portrait') window.__portrait = m; } catch (err) {} });"
        )
        driver.find_element(By.CSS_SELECTOR, "#builtins button").click()
        portrait = wait_for(lambda: driver.execute_script("return window.__portrait"), 20)
        if not portrait:
            raise RuntimeError("no portrait reply")
        result["portrait"] = portrait
        start.click()
        t_start = time.monotonic()
        first = wait_for(lambda: (driver.execute_async_script(STATS_JS) or {}).get("framesDecoded", 0) > 0, 20, 0.2)
        if not first:
            raise RuntimeError("no video frame decoded: " + json.dumps(driver.execute_async_script(STATS_JS)))
        result["first_frame_s"] = round(time.monotonic() - t_start, 2)
        s1 = driver.execute_async_script(STATS_JS)
        time.sleep(0.5)

        # Grab the mouth region for a few seconds while the fake mic plays the speech (looped).
        x, y, w, h = portrait["face"]
        mx, my, mw, mh = x + w // 4, y + int(0.62 * h), w // 2, int(0.38 * h)
        grabs, times = [], []
        t_grab = time.monotonic()
        while time.monotonic() - t_grab < args.seconds:
            got = driver.execute_async_script(GRAB_JS, mx, my, mw, mh)
            if got:
                grabs.append(np.asarray(got["gray"], dtype=np.float32).reshape(mh, mw))
                times.append(got["t"])
                result["video_size"] = [got["width"], got["height"]]
            time.sleep(0.03)
        s2 = driver.execute_async_script(STATS_JS)
        elapsed = time.monotonic() - t_grab + 0.5
        result["frames_decoded"] = [s1["framesDecoded"], s2["framesDecoded"]]
        result["decoded_fps"] = round((s2["framesDecoded"] - s1["framesDecoded"]) / elapsed, 2)
        result["audio_bytes"] = s2["audioBytes"]
        result["remote_candidates"] = sorted(set(s2["candidates"]))
        result["connection_state"] = s2["state"]
        stack = np.stack(grabs)
        median = np.median(stack, axis=0)
        per_frame = np.abs(stack - median).mean(axis=(1, 2))
        result["grabs"] = len(grabs)
        result["mouth_diff_max"] = round(float(per_frame.max()), 2)
        result["mouth_diff_p90"] = round(float(np.percentile(per_frame, 90)), 2)
        result["mouth_diff_min"] = round(float(per_frame.min()), 2)
        result["stats_line"] = driver.find_element(By.ID, "stats").text
        if args.screenshot:
            driver.save_screenshot(str(args.screenshot))
        result["sessions_before_stop"] = server.server.active_sessions
        driver.find_element(By.ID, "stop").click()
        # A slot is held from the offer on, so the page's fresh socket after Stop holds none.
        result["session_ended_on_stop"] = wait_for(lambda: server.server.active_sessions == 0, 10)
    finally:
        if driver is not None:
            driver.quit()
        server.stop()
        shutil.rmtree(profile, ignore_errors=True)
    result["total_s"] = round(time.monotonic() - t0, 2)
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--wav", type=Path, required=True)
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--fps", type=int, default=25)
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("aioice", "websockets", "selenium", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        result = run(args)
    except Exception as exc:  # report, do not hide: the test prints it
        import traceback

        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    print(json.dumps(result))
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
