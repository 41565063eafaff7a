"""Drive the page in a real headless Chromium against a real server; print one JSON line of results.

Run by tests/test_browser.py inside a network namespace where only `lo` is up (`unshare -n`), so
both WebRTC ends can only meet on 127.0.0.1. The server runs in this process (a thread with its own
event loop); Chromium gets the flags of DESIGN.md section 4 and a fake microphone playing a WAV.

Scenarios: `talk` (upload refused, built-in portrait, Start, the mouth moves, Stop), `idle` (a
short offer_timeout_s and max_session_s, the visible mark off: the page waits past the timeout, then
Start, then the session reaches its maximum length) and `say` (the speech box: a typed sentence with
its caption and moving mouth, an uploaded clip, Stop speaking, an empty text refused while the
session goes on, a clip over 20 MB refused by the page; then a browser whose microphone is refused
starts a presenter session, which has none, and the portrait says a sentence there too). All record
the browser console and every Content-Security-Policy violation from before the page's first script
runs, what each WebSocket sent, and (say) the speaking/spoken/error messages each received.

    python tests/browser_check.py --wav SPEECH.wav [--scenario talk|idle|say] [--screenshot /tmp/page.png]
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
CLIP = Path("/usr/share/sounds/alsa/Front_Center.wav")  # a human voice (Debian alsa-utils)
SAY_TEXT = "Hello there. I am the portrait, and I say what you type into the box."

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
    if (s.type === 'inbound-rtp' && s.kind === 'audio') {
      out.audioBytes = s.bytesReceived || 0;
      out.audioEnergy = s.totalAudioEnergy || 0;
    }
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
window.__received = [];  // speaking, spoken and error messages: {socket, t (its event's timeStamp), ...}
window.__sent = [];  // the say and play messages sent: {type, id, text}
const ids = new WeakMap();
const send = WebSocket.prototype.send;
WebSocket.prototype.send = function (data) {
  if (!ids.has(this)) {
    const socket = window.__sockets.length;
    ids.set(this, socket);
    window.__sockets.push([]);
    this.addEventListener('message', (e) => {  // after the page's onmessage: e.timeStamp is when it came
      if (typeof e.data !== 'string') return;
      let m;
      try { m = JSON.parse(e.data); } catch (err) { return; }
      if (m.type === 'speaking' || m.type === 'spoken' || m.type === 'error') {
        window.__received.push({ socket, t: e.timeStamp, ...m });
      }
    });
  }
  let kind = 'binary';
  if (typeof data === 'string') {
    try {
      const m = JSON.parse(data);
      kind = m.type;
      if (kind === 'say' || kind === 'play') window.__sent.push({ type: kind, id: m.id, text: m.text });
    } catch (err) { kind = 'text'; }
  }
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
        elif args.scenario == "say":
            run_say(args, server, driver, console, result)
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
    result["portrait"] = portrait = _choose_builtin(driver)
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


# ---- say: the speech box, the caption, the clip upload, Stop speaking, a presenter ---------------

# Installed before the page runs (say): every change of the caption, with its time on the page's
# clock (performance.now(); window.__received has the timeStamps of the message events, on that clock).
CAPTION_WATCH_JS = """
window.__captions = [];
document.addEventListener('DOMContentLoaded', () => {
  const el = document.getElementById('caption');
  if (!el) return;
  const note = () => window.__captions.push({ t: performance.now(), text: el.textContent, hidden: el.hidden });
  new MutationObserver(note).observe(el, { attributes: true, childList: true, characterData: true, subtree: true });
});
"""

# A browser whose microphone is refused (as a person who clicks Block, or a machine with none).
NO_MICROPHONE_JS = """
window.__getUserMedia = 0;
if (navigator.mediaDevices) {
  navigator.mediaDevices.getUserMedia = () => {
    window.__getUserMedia += 1;
    return Promise.reject(new DOMException('Permission denied', 'NotAllowedError'));
  };
}
"""

SPEECH_UI_JS = """
const el = (id) => document.getElementById(id);
const enabled = {};
for (const id of ['say-text', 'say', 'clip', 'stop-speaking', 'presenter', 'start', 'stop']) {
  enabled[id] = !el(id).disabled;
}
const pc = window.portraitApp.pc;
return {
  enabled, field: el('say-text').value,
  caption: el('caption').hidden || !el('caption').textContent ? null : el('caption').textContent,
  captionHidden: el('caption').hidden,
  status: el('speech-status').textContent, statusBad: el('speech-status').classList.contains('bad'),
  error: el('error').hidden ? null : el('error-text').textContent, state: el('state').textContent,
  connection: pc ? pc.connectionState : null, sockets: window.__sockets.length,
};
"""


def _received(driver: Any) -> list[dict[str, Any]]:
    return driver.execute_script("return window.__received") or []


def _event(driver: Any, predicate: Any, timeout: float) -> dict[str, Any] | None:
    """The first speaking/spoken/error message the page received that matches, waiting for it."""
    return wait_for(lambda: next((m for m in _received(driver) if predicate(m)), None), timeout, 0.05)


def _mouth_region(face: list[int]) -> tuple[int, int, int, int]:
    x, y, w, h = face
    return x + w // 4, y + int(0.62 * h), w // 2, int(0.38 * h)


def _grab(driver: Any, region: tuple[int, int, int, int]) -> tuple[float, np.ndarray] | None:
    mx, my, mw, mh = region
    got = driver.execute_async_script(GRAB_JS, mx, my, mw, mh)
    if not got:
        return None
    return float(got["t"]), np.asarray(got["gray"], dtype=np.float32).reshape(mh, mw)


def _grab_for(driver: Any, region: tuple[int, int, int, int], seconds: float) -> Grabs:
    grabs: Grabs = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if (g := _grab(driver, region)) is not None:
            grabs.append(g)
        time.sleep(0.03)
    return grabs


Grabs = list[tuple[float, np.ndarray]]  # (page time in ms, the mouth region in gray)


def _motion(rest: Grabs, grabs: Grabs, t0: float, t1: float) -> dict[str, Any]:
    """How far the mouth region is from its resting look (the median of `rest`): at rest, and in
    the grabs between t0 and t1 (page clock, ms)."""
    base = np.median(np.stack([g for _, g in rest]), axis=0)
    rest_d = [float(np.abs(g - base).mean()) for _, g in rest]
    during = [float(np.abs(g - base).mean()) for t, g in grabs if t0 <= t <= t1]
    return {
        "rest_grabs": len(rest_d),
        "rest_p90": round(float(np.percentile(rest_d, 90)), 2),
        "during_grabs": len(during),
        "during_p90": round(float(np.percentile(during, 90)), 2) if during else None,
        "during_max": round(max(during), 2) if during else None,
    }


def _sent(driver: Any) -> list[dict[str, Any]]:
    return driver.execute_script("return window.__sent") or []


def _speak_and_watch(
    driver: Any, region: tuple[int, int, int, int], act: Any, screenshot: Path | None = None, timeout: float = 30.0
) -> dict[str, Any]:
    """Rest grabs, then `act()` (press Say, upload a clip: one say or play is sent), then grabs until
    the page got that item's `spoken`; what was sent, the item's events, the caption's changes (each
    placed before, during or after the item was heard) and the mouth's motion."""
    rest = _grab_for(driver, region, 1.2)
    sent_before, seen_before = len(_sent(driver)), len(_received(driver))
    energy_before = _stats(driver).get("audioEnergy")
    act()
    sent = wait_for(lambda: _sent(driver)[sent_before:], 10, 0.05)
    if not sent:
        raise RuntimeError(f"the page sent no say or play: {driver.execute_script(SPEECH_UI_JS)}")
    item = sent[0]["id"]
    grabs: Grabs = []
    polled: list[str] = []
    shot = False
    spoken = None
    end = time.monotonic() + timeout
    while spoken is None and time.monotonic() < end:
        if (g := _grab(driver, region)) is not None:
            grabs.append(g)
        caption = driver.execute_script(SPEECH_UI_JS)["caption"]
        if caption is not None and caption not in polled:
            polled.append(caption)
            if screenshot is not None and not shot:
                driver.save_screenshot(str(screenshot))
                shot = True
        events = _received(driver)[seen_before:]
        spoken = next((m for m in events if m["type"] == "spoken" and m.get("id") == item), None)
        time.sleep(0.02)
    time.sleep(0.3)
    energy_after = _stats(driver).get("audioEnergy")
    mine = [m for m in _received(driver)[seen_before:] if m.get("id") == item]
    speaking = next((m for m in mine if m["type"] == "speaking"), None)
    t0 = speaking["t"] if speaking else (grabs[0][0] if grabs else 0.0)
    t1 = spoken["t"] if spoken else (grabs[-1][0] if grabs else 0.0)
    captions = [c for c in driver.execute_script("return window.__captions") or [] if c["t"] >= rest[0][0]]
    return {
        "sent": [{k: v for k, v in m.items() if v is not None} for m in sent],
        "events": [{k: v for k, v in m.items() if k not in ("t", "socket")} for m in mine],
        "heard_ms": round(t1 - t0) if speaking and spoken else None,
        "captions": [
            {"text": c["text"], "hidden": c["hidden"], "when": _when(c["t"], t0, t1)} for c in captions
        ],  # fmt: skip
        "caption_polled": polled,
        "screenshot": shot,
        "mouth": _motion(rest, grabs, t0, t1),
        # The voice that came back (inbound audio's totalAudioEnergy, before and after).
        "voice_energy": [energy_before, energy_after],
        "after": driver.execute_script(SPEECH_UI_JS),
    }


def _when(t: float, t0: float, t1: float) -> str:
    return "before" if t < t0 else "during" if t < t1 else "after"


def _choose_builtin(driver: Any) -> dict[str, Any]:
    """Click the first built-in portrait; its reply (with the face box)."""
    from selenium.webdriver.common.by import By

    driver.execute_script(
        "window.__portrait = null; const ws = window.portraitApp.ws;"
        "ws.addEventListener('message', (e) => { try { const m = JSON.parse(e.data);"
        " if (m.type === 'portrait') window.__portrait = m; } catch (err) {} });"
    )
    driver.find_element(By.CSS_SELECTOR, "#builtins button").click()
    portrait = wait_for(lambda: driver.execute_script("return window.__portrait"), 20)
    if not portrait:
        raise RuntimeError("no portrait reply")
    return portrait


def _stats(driver: Any) -> dict[str, Any]:
    return driver.execute_async_script(STATS_JS) or {}


def run_say(
    args: argparse.Namespace, server: ServerThread, driver: Any, console: Console, result: dict[str, Any]
) -> None:
    """The speech box on a microphone session, then a presenter session with the microphone refused."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    assert server.server is not None
    ui = lambda: driver.execute_script(SPEECH_UI_JS)  # noqa: E731
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CAPTION_WATCH_JS})
    driver.get(result["url"])
    start = driver.find_element(By.ID, "start")
    if not wait_for(lambda: start.is_enabled(), 20):
        raise RuntimeError("the Start button never became enabled (no welcome?)")
    result["console_on_load"] = console.problems()
    result["before_start"] = ui()
    portrait = _choose_builtin(driver)
    region = _mouth_region(portrait["face"])
    start.click()
    if not wait_for(lambda: frames_decoded(driver) > 0, 20, 0.2):
        raise RuntimeError("no video frame decoded: " + json.dumps(_stats(driver)))
    if not wait_for(lambda: ui()["enabled"]["say"], 10):
        raise RuntimeError(f"the Say button never became enabled: {ui()}")
    result["running"] = ui()
    time.sleep(0.5)
    box = driver.find_element(By.ID, "say-text")

    # A typed sentence, sent with the Say button: the caption shows it while it is heard.
    def say_it() -> None:
        box.send_keys(args.say)
        driver.find_element(By.ID, "say").click()

    result["say"] = _speak_and_watch(driver, region, say_it, args.screenshot)

    # A clip, uploaded through the file input: "(audio clip)" while it plays.
    clip_input = driver.find_element(By.ID, "clip")
    result["clip"] = _speak_and_watch(driver, region, lambda: clip_input.send_keys(str(args.clip)))

    # A long sentence, sent with Enter, cut short by Stop speaking.
    long = "This is a long sentence that the portrait will not get to finish, because it is stopped."
    seen = len(_received(driver))
    box.send_keys(long + Keys.ENTER)
    speaking = _event(driver, lambda m: m["type"] == "speaking" and m.get("text") == long, 20)
    time.sleep(0.6)
    result["cut_caption"] = ui()["caption"]
    driver.find_element(By.ID, "stop-speaking").click()
    cut = _event(driver, lambda m: speaking and m["type"] == "spoken" and m["id"] == speaking["id"], 10)
    time.sleep(0.3)
    result["cut"] = {
        "speaking": bool(speaking),
        "spoken": {k: v for k, v in (cut or {}).items() if k not in ("t", "socket")},
        "events": [m["type"] for m in _received(driver)[seen:]],
        "after": ui(),
    }
    result["sockets_sent"] = driver.execute_script("return window.__sockets")

    # An empty text: refused beside the box (bad_speech), and the session goes on.
    box.clear()
    seen = len(_received(driver))
    driver.find_element(By.ID, "say").click()
    result["empty_error"] = _event(driver, lambda m: m["type"] == "error", 10)
    wait_for(lambda: ui()["statusBad"], 5)
    result["empty"] = ui()
    # A clip over 20 MB: refused by the page itself, with a readable message; nothing is sent.
    fd, name = tempfile.mkstemp(prefix="huge-", suffix=".wav")
    with open(fd, "wb") as f:
        f.truncate(20_000_001)
    sent_before = len(_sent(driver))
    clip_input.send_keys(name)
    result["huge_clip"] = wait_for(lambda: (u := ui())["statusBad"] and "too large" in u["status"] and u, 10)
    result["huge_clip_sent"] = len(_sent(driver)) - sent_before
    Path(name).unlink()
    result["still_here"] = _speak_and_watch(driver, region, lambda: box.send_keys("Still here." + Keys.ENTER))
    result["sessions_before_stop"] = server.server.active_sessions
    result["received_first_session"] = [m["type"] for m in _received(driver)[seen:]]
    driver.find_element(By.ID, "stop").click()
    result["session_ended_on_stop"] = wait_for(lambda: server.server.active_sessions == 0, 10)
    result["after_stop"] = ui()

    # A presenter: the microphone is refused; Start says so and offers the presenter mode, which
    # opens a session without one (recvonly audio) where the portrait still speaks.
    gum = driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": NO_MICROPHONE_JS})
    driver.get(result["url"])
    start = driver.find_element(By.ID, "start")
    if not wait_for(lambda: start.is_enabled(), 20):
        raise RuntimeError("the Start button never became enabled (no welcome?)")
    start.click()
    result["refused_microphone"] = wait_for(lambda: (u := ui())["error"] and u, 10)
    portrait = _choose_builtin(driver)
    driver.find_element(By.ID, "presenter").click()
    start.click()
    if not wait_for(lambda: frames_decoded(driver) > 0, 20, 0.2):
        raise RuntimeError("presenter: no video frame decoded: " + json.dumps(_stats(driver)))
    if not wait_for(lambda: ui()["enabled"]["say"], 10):
        raise RuntimeError(f"presenter: the Say button never became enabled: {ui()}")
    result["presenter_running"] = ui()
    result["presenter_offer_audio"] = driver.execute_script(
        "const sdp = window.portraitApp.pc.localDescription.sdp;"
        "const audio = sdp.split('m=').find((s) => s.startsWith('audio')) || '';"
        "return ['sendrecv', 'sendonly', 'recvonly', 'inactive'].filter((d) => audio.includes('a=' + d));"
    )
    result["presenter_get_user_media_calls"] = driver.execute_script("return window.__getUserMedia")
    result["presenter_senders"] = driver.execute_script(
        "return window.portraitApp.pc.getSenders().filter((s) => s.track).length"
    )
    time.sleep(0.5)
    box = driver.find_element(By.ID, "say-text")
    p_before = _stats(driver)
    f1, t1 = frames_decoded(driver), time.monotonic()

    def present() -> None:
        box.send_keys(args.say)
        driver.find_element(By.ID, "say").click()

    presenter_shot = args.screenshot.with_name(args.screenshot.stem + "-presenter.png") if args.screenshot else None
    result["presenter_say"] = _speak_and_watch(driver, _mouth_region(portrait["face"]), present, presenter_shot)
    f2, t2 = frames_decoded(driver), time.monotonic()
    p_after = _stats(driver)
    result["presenter_frames"] = [f1, f2]
    result["presenter_decoded_fps"] = round((f2 - f1) / (t2 - t1), 2)
    result["presenter_audio_bytes"] = [p_before.get("audioBytes"), p_after.get("audioBytes")]
    result["presenter_connection"] = p_after.get("state")
    result["presenter_candidates"] = sorted(set(p_after.get("candidates", [])))
    result["presenter_sessions"] = server.server.active_sessions
    driver.find_element(By.ID, "stop").click()
    result["presenter_ended_on_stop"] = wait_for(lambda: server.server.active_sessions == 0, 10)
    driver.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": gum["identifier"]})
    result["sockets"] = driver.execute_script("return window.__sockets")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--wav", type=Path, required=True)
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--scenario", choices=("talk", "idle", "say"), default="talk")
    parser.add_argument("--say", default=SAY_TEXT, help="say: the sentence typed into the Say box")
    parser.add_argument("--clip", type=Path, default=CLIP, help="say: the audio clip uploaded")
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
