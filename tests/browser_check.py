"""Drive the page in a real headless Chromium against a real server; print one JSON line of results.

Run by tests/test_browser.py inside a network namespace where only `lo` is up (`unshare -n`), so
both WebRTC ends can only meet on 127.0.0.1. The server runs in this process (a thread with its own
event loop); Chromium gets the flags of DESIGN.md section 4 and a fake microphone playing a WAV.

Scenarios: `talk` (upload refused, built-in portrait, Start, the mouth moves, Stop) and `idle` (a
short offer_timeout_s and max_session_s, the visible mark off: the page waits past the timeout, then
Start, then the session reaches its maximum length). Both record the browser console and every Content-Security-
Policy violation from before the page's first script runs, and what each WebSocket sent.

    python tests/browser_check.py --wav SPEECH.wav [--scenario talk|idle] [--screenshot /tmp/page.png]
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
import urllib.request
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
TOKEN = "browser-check-token"  # the idle scenario's server needs it

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


# Installed before any script of the page runs (CDP, so the page's CSP does not apply to it):
# records CSP violations, and the types of the messages each WebSocket sends, in window objects.
# The page's "AI-generated" label: shown, on top (nothing covers it), and where it sits by the video.
DISCLOSURE_JS = """
const el = document.getElementById('disclosure');
const badge = el.querySelector('.disclosure-badge');
const r = badge.getBoundingClientRect(), f = document.getElementById('frame').getBoundingClientRect();
const cs = getComputedStyle(el);
const hit = r.width > 0 ? document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2) : null;
return {
  visible: !el.hidden && cs.display !== 'none' && cs.visibility === 'visible' && Number(cs.opacity) > 0.9
    && r.width > 0 && r.height > 0 && !!hit && el.contains(hit),
  badge: badge.innerText, text: el.innerText,
  gap_px: Math.round(r.top - f.bottom), left_px: Math.round(r.left - f.left),
};
"""

WATCH_JS = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__csp.push({ directive: e.violatedDirective, blocked: e.blockedURI, source: e.sourceFile,
                      line: e.lineNumber });
});
window.__sockets = [];
const ids = new WeakMap();
const send = WebSocket.prototype.send;
WebSocket.prototype.send = function (data) {
  if (!ids.has(this)) { ids.set(this, window.__sockets.length); window.__sockets.push([]); }
  let kind = 'binary';
  if (typeof data === 'string') { try { kind = JSON.parse(data).type; } catch (err) { kind = 'text'; } }
  window.__sockets[ids.get(this)].push(kind);
  return send.call(this, data);
};
"""

PAGE_JS = """
const app = window.portraitApp;
return {
  state: document.getElementById('state').textContent,
  error: document.getElementById('error').hidden ? null : document.getElementById('error-text').textContent,
  startEnabled: !document.getElementById('start').disabled,
  portraitStatus: document.getElementById('portrait-status').textContent,
  sockets: window.__sockets, csp: window.__csp, connections: app.connections,
  open: !!app.ws && app.ws.readyState === WebSocket.OPEN,
};
"""


class Console:
    """The browser console (every level), drained from chromedriver as the run goes."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self.entries: list[dict[str, Any]] = []

    def drain(self) -> list[dict[str, Any]]:
        self.entries.extend(
            {"level": e.get("level"), "message": e.get("message", "")[:500]} for e in self.driver.get_log("browser")
        )
        return self.entries

    def problems(self) -> list[dict[str, Any]]:
        """Errors, and anything about the Content Security Policy, at any level."""
        return [e for e in self.drain() if e["level"] == "SEVERE" or "content security policy" in e["message"].lower()]


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


CHROMIUM_FLAGS = (  # DESIGN.md section 4: a fake microphone, WebRTC on loopback, nothing phoning home
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--autoplay-policy=no-user-gesture-required",
)


def start_chromium(wav: Path, profile: Path, extra_flags: tuple[str, ...] = ()) -> Any:
    """Headless Chromium with a fresh profile and `wav` as its microphone, driven by chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    own = (f"--user-data-dir={profile}", f"--use-file-for-fake-audio-capture={wav}")
    for flag in (*CHROMIUM_FLAGS, *own, *extra_flags):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def chromium(wav: Path, profile: Path) -> Any:
    driver = start_chromium(wav, profile, ("--window-size=1100,900",))
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": WATCH_JS})
    return driver


def page_csp(url: str) -> str | None:
    """The Content-Security-Policy the server sends with the page."""
    with urllib.request.urlopen(url, timeout=10) as response:  # 127.0.0.1 only
        return response.headers.get("Content-Security-Policy")


def frames_decoded(driver: Any) -> int:
    return int((driver.execute_async_script(STATS_JS) or {}).get("framesDecoded", 0))


def wait_for(predicate: Any, timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


def make_config(args: argparse.Namespace, **server: Any) -> AppConfig:
    return with_overrides(
        AppConfig(),
        server={"host": "127.0.0.1", "port": 0, **server},
        webrtc={"host_addresses": ["127.0.0.1"]},
        video={"width_px": args.size, "height_px": args.size, "fps": args.fps},
        # Only speech moves the mouth region: no head motion or breathing to confuse the check.
        warp={"head_motion": 0.0, "breathing": 0.0},
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the server and Chromium, run the scenario, and always report the console."""
    if args.scenario == "idle":
        config = make_config(args, offer_timeout_s=args.offer_timeout, max_session_s=args.max_session, token=TOKEN)
        # An operator who turned the visible mark off: the page still says the video is synthetic.
        config = with_overrides(config, disclosure={"mark": False})
    else:
        config = make_config(args)
    result: dict[str, Any] = {"scenario": args.scenario}
    server = ServerThread(config)
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
    driver = None
    console: Console | None = None
    t0 = time.monotonic()
    try:
        url = server.start()
        result["url"] = url
        result["server_start_s"] = round(time.monotonic() - t0, 2)
        result["csp"] = page_csp(url)
        driver = chromium(args.wav, profile)
        driver.set_script_timeout(10)
        console = Console(driver)
        if args.scenario == "idle":
            run_idle(args, server, driver, console, result)
        else:
            run_talk(args, server, driver, console, result)
    finally:
        if driver is not None:
            try:
                result["console_problems"] = console.problems() if console else None
                result["console"] = console.entries[-30:] if console else None
                result["csp_violations"] = driver.execute_script("return window.__csp || null")
            except Exception as exc:  # the browser may be gone; say so instead of hiding the result
                result["console_error"] = f"{type(exc).__name__}: {exc}"
            driver.quit()
        server.stop()
        shutil.rmtree(profile, ignore_errors=True)
    result["total_s"] = round(time.monotonic() - t0, 2)
    return result


def refused(server: ServerThread, reason: str) -> int:
    """How many connections the server refused or ended for `reason` (its metrics)."""
    assert server.server is not None
    value = server.server.metrics.registry.get_sample_value("avatar_refused_connections_total", {"reason": reason})
    return int(value or 0)


def run_talk(
    args: argparse.Namespace, server: ServerThread, driver: Any, console: Console, result: dict[str, Any]
) -> None:
    from selenium.webdriver.common.by import By

    assert server.server is not None
    driver.get(result["url"])

    start = driver.find_element(By.ID, "start")
    if not wait_for(lambda: start.is_enabled(), 20):
        raise RuntimeError("the Start button never became enabled (no welcome?)")
    result["console_on_load"] = console.problems()
    # An upload without a face is refused with a message a person understands.
    fd, name = tempfile.mkstemp(prefix="no-face-", suffix=".png")
    no_face = Path(name)
    with open(fd, "wb") as f:
        Image.fromarray(np.full((240, 240, 3), 140, np.uint8)).save(f, format="PNG")
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
    result["disclosure_before_start"] = driver.execute_script(DISCLOSURE_JS)
    start.click()
    t_start = time.monotonic()
    first = wait_for(lambda: frames_decoded(driver) > 0, 20, 0.2)
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
    result["disclosure"] = driver.execute_script(DISCLOSURE_JS)
    if args.screenshot:
        driver.save_screenshot(str(args.screenshot))
    result["sessions_before_stop"] = server.server.active_sessions
    driver.find_element(By.ID, "stop").click()
    result["session_ended_on_stop"] = wait_for(lambda: server.server.active_sessions == 0, 10)
    result["disclosure_after_stop"] = driver.execute_script(DISCLOSURE_JS)
    result["sockets"] = driver.execute_script("return window.__sockets")


def run_idle(
    args: argparse.Namespace, server: ServerThread, driver: Any, console: Console, result: dict[str, Any]
) -> None:
    """Wrong tokens until rate_limited; then a person who waits past offer_timeout_s with the page
    open, then Start, then max_session_s; then a portrait chosen after the session ended."""
    from selenium.webdriver.common.by import By

    assert server.server is not None
    timeout_s = args.offer_timeout
    page = lambda: driver.execute_script(PAGE_JS)  # noqa: E731

    # Reload with a wrong token until the server throttles the address (the 4th failure locks it).
    loads, shown = 0, None
    while loads < 8 and not (shown and "wrong access tokens" in shown):
        driver.get(result["url"] + "?token=wrong")
        loads += 1
        shown = wait_for(lambda: page()["error"], 10)
    result["rate_limited_loads"] = loads
    result["rate_limited_page"] = page()
    if args.screenshot:
        driver.save_screenshot(str(args.screenshot.with_name(args.screenshot.stem + "-rate-limited.png")))
    # Start stays disabled for as long as the server said; the page does not ask again by itself.
    t_refused = time.monotonic()
    held = wait_for(lambda: page()["startEnabled"], 10, 0.1)
    result["rate_limited_held_s"] = round(time.monotonic() - t_refused, 2)
    time.sleep(1.0)
    result["rate_limited_after"] = {**page(), "held": bool(held)}
    result["rate_limited_refusals"] = refused(server, "rate_limited")
    result["unauthorized_refusals"] = refused(server, "unauthorized")

    driver.get(result["url"] + f"?token={TOKEN}")
    start = driver.find_element(By.ID, "start")
    if not wait_for(lambda: start.is_enabled(), 20):
        raise RuntimeError("the Start button never became enabled (no welcome?)")
    t_welcome = time.monotonic()
    result["console_on_load"] = console.problems()
    # A portrait chosen on the first session must be chosen again on the session that Start opens.
    driver.find_element(By.CSS_SELECTOR, "#builtins button").click()
    status = driver.find_element(By.ID, "portrait-status")
    if not wait_for(lambda: "face found" in status.text, 10):
        raise RuntimeError(f"no portrait reply: {status.text!r}")
    # Wait past the offer timeout three times over: one quiet end, and no new socket after it.
    time.sleep(max(0.0, t_welcome + 3 * timeout_s - time.monotonic()))
    result["idle_s"] = round(time.monotonic() - t_welcome, 2)
    result["idle_page"] = driver.execute_script(PAGE_JS)
    result["offer_timeouts"] = refused(server, "offer_timeout")
    result["clients_while_idle"] = server.server.clients
    if args.screenshot:
        driver.save_screenshot(str(args.screenshot.with_name(args.screenshot.stem + "-idle.png")))

    start.click()
    t_start = time.monotonic()
    if not wait_for(lambda: frames_decoded(driver) > 0, 20, 0.2):
        raise RuntimeError("no video frame decoded: " + json.dumps(driver.execute_async_script(STATS_JS)))
    result["first_frame_s"] = round(time.monotonic() - t_start, 2)
    f1, t1 = frames_decoded(driver), time.monotonic()
    time.sleep(2.0)
    f2, t2 = frames_decoded(driver), time.monotonic()
    result["frames_decoded"] = [f1, f2]
    result["decoded_fps"] = round((f2 - f1) / (t2 - t1), 2)
    result["session_page"] = driver.execute_script(PAGE_JS)
    result["disclosure"] = driver.execute_script(DISCLOSURE_JS)
    result["sessions_started"] = server.server.active_sessions
    if args.screenshot:
        driver.save_screenshot(str(args.screenshot))

    # max_session_s ends the session: a readable message, Start again, and no reconnecting.
    ended = wait_for(lambda: driver.execute_script(PAGE_JS)["error"], args.max_session + 5, 0.2)
    result["ended_after_s"] = round(time.monotonic() - t_start, 2)
    time.sleep(2.0)
    result["ended_page"] = driver.execute_script(PAGE_JS)
    result["ended_error"] = ended
    result["max_session_ends"] = refused(server, "max_session")
    result["active_after_end"] = server.server.active_sessions
    result["clients_after_end"] = server.server.clients
    if args.screenshot:
        driver.save_screenshot(str(args.screenshot.with_name(args.screenshot.stem + "-ended.png")))

    # Choosing a portrait now opens a fresh session for it (and clears the message).
    driver.find_element(By.CSS_SELECTOR, "#builtins button").click()
    result["chosen_after_end"] = wait_for(
        lambda: (p := page())["connections"] == 3 and "face found" in p["portraitStatus"] and p, 10
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--wav", type=Path, required=True)
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--scenario", choices=("talk", "idle"), default="talk")
    parser.add_argument("--offer-timeout", type=float, default=1.5, help="idle: server.offer_timeout_s")
    parser.add_argument("--max-session", type=float, default=5.0, help="idle: server.max_session_s")
    return run_and_report(run, parser.parse_args())


def run_and_report(run: Any, args: argparse.Namespace) -> int:
    """Run a check, print its result as one JSON line (an error and its traceback when it failed:
    reported, not hidden, for the test to print); exit status 0 when it ran through."""
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("aioice", "websockets", "selenium", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        result = run(args)
    except Exception as exc:
        import traceback

        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    print(json.dumps(result))
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
