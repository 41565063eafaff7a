"""Drive the browser extension (web/extension) in a real headless Chromium; print one JSON line.

Run by tests/test_extension.py inside a network namespace where only `lo` is up (`unshare -n`).
The server runs in this process (a thread) on 127.0.0.1 with a token; a call page is served from
another origin, http://call.example:PORT (Chromium maps the name to 127.0.0.2 and treats that
origin as secure). The page finds the "Talking portrait" camera, gets it with audio, and sends
both tracks through a WebRTC connection to a second RTCPeerConnection in the same page; the far
end's frames, mouth region and audio level are what is measured.

    python tests/extension_check.py --wav SPEECH.wav [--seconds 6] [--screenshot CALL.png] [--mouth-shapes visemes]
"""

from __future__ import annotations

import argparse
import http.server
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from av_sync import WATCH_JS, sync_summary  # noqa: E402
from browser_check import Console, ServerThread, run_and_report, start_chromium, wait_for  # noqa: E402
from PIL import Image  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from skimage.data import astronaut  # noqa: E402

from avatar.config import MOUTH_SHAPES, AppConfig, with_overrides  # noqa: E402
from avatar.portrait import default_portrait, load_portrait  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
EXTENSION = REPO / "web" / "extension"
TOKEN = "extension-check-token"
CALL_HOST = "call.example"
CALL_PAGE = b"""<!doctype html><html><head><meta charset="utf-8"><title>Call</title>
<style>body{font:16px system-ui,sans-serif;background:#202124;color:#e8eaed;margin:24px}
.tile{display:inline-block;background:#3c4043;border-radius:12px;padding:10px;margin-right:16px;vertical-align:top}
.tile span{display:block;margin-top:6px;font-size:14px}</style></head>
<body><h1>A video call on another origin</h1>
<div class="tile"><video id="far" autoplay playsinline muted width="384" height="384"></video>
<canvas id="farShot" width="384" height="384" hidden></canvas><span>The other side of the call sees you</span></div>
<div class="tile" id="self"><span>You (camera: <b>Talking portrait</b>)</span></div>
</body></html>"""

# Headless screenshots leave <video> black: draw the far end's current frame into a canvas.
SHOT_JS = """
const video = document.getElementById('far'), shot = document.getElementById('farShot');
shot.getContext('2d').drawImage(video, 0, 0, shot.width, shot.height);
shot.hidden = false;
video.hidden = true;
"""

DEVICES_JS = """
const done = arguments[0];
navigator.mediaDevices.enumerateDevices().then(
  (ds) => done(ds.map((d) => ({ kind: d.kind, label: d.label, deviceId: d.deviceId, groupId: d.groupId }))),
  (e) => done({ error: String(e) }));
"""

# The page's WebSocket to the service from the MAIN world: the server refuses its Origin.
PAGE_SOCKET_JS = """
const [url, done] = arguments;
const ws = new WebSocket(url);
ws.onopen = () => { ws.close(); done('open'); };
ws.onerror = () => done('error');
"""

GUM_ERROR_JS = """
const [constraints, done] = arguments;
const t0 = performance.now();
navigator.mediaDevices.getUserMedia(constraints).then(
  (s) => { s.getTracks().forEach((t) => t.stop()); done({ ok: true }); },
  (e) => done({ ok: false, name: e.name, message: e.message, isDOMException: e instanceof DOMException,
                ms: Math.round(performance.now() - t0) }));
"""

# Get the portrait camera with audio; send its tracks to a second RTCPeerConnection (the far end).
CALL_JS = """
const [deviceId, done] = arguments;
(async () => {
  const t0 = performance.now();
  const stream = await navigator.mediaDevices.getUserMedia({ video: { deviceId: { exact: deviceId } }, audio: true });
  const gumMs = performance.now() - t0;
  const a = new RTCPeerConnection(), b = new RTCPeerConnection();
  a.onicecandidate = (e) => e.candidate && b.addIceCandidate(e.candidate);
  b.onicecandidate = (e) => e.candidate && a.addIceCandidate(e.candidate);
  const far = new MediaStream();
  b.ontrack = (e) => far.addTrack(e.track);
  for (const t of stream.getTracks()) a.addTrack(t, stream);
  await a.setLocalDescription(await a.createOffer());
  await b.setRemoteDescription(a.localDescription);
  await b.setLocalDescription(await b.createAnswer());
  await a.setRemoteDescription(b.localDescription);
  // Sampled at both ends (tests/av_sync.py): the far end is what the call's other side sees.
  const ctx = new AudioContext();
  const nearVideo = document.createElement('video');
  nearVideo.muted = true;
  nearVideo.width = nearVideo.height = 192;
  document.getElementById('self').prepend(nearVideo);
  const show = async (media, video) => {
    video.srcObject = media;
    video.muted = true;
    await video.play().catch(() => {});
  };
  await show(far, document.getElementById('far'));
  await show(stream, nearVideo);
  window.__call = { stream, a, b, far, ctx, gumMs, nearVideo };
  const tracks = stream.getTracks().map((t) => ({ kind: t.kind, label: t.label, state: t.readyState,
    deviceId: t.getSettings().deviceId }));
  done({ ok: true, tracks, gumMs: Math.round(gumMs) });
})().catch((e) => done({ ok: false, name: e.name, message: e.message }));
"""

FAR_STATS_JS = """
const done = arguments[0];
const call = window.__call;
call.b.getStats().then((report) => {
  const out = { framesDecoded: 0, audioLevel: null, audioBytes: 0, width: 0, height: 0, state: call.b.connectionState };
  report.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') {
      out.framesDecoded = s.framesDecoded || 0; out.width = s.frameWidth || 0; out.height = s.frameHeight || 0;
    }
    if (s.type === 'inbound-rtp' && s.kind === 'audio') {
      out.audioLevel = s.audioLevel ?? null; out.audioBytes = s.bytesReceived || 0;
    }
  });
  done(out);
});
"""

# Sample both ends (tests/av_sync.py) from now on.
START_WATCH_JS = """
const done = arguments[0];
const c = window.__call;
const box = [0.3, 0.55, 0.4, 0.3];  // the mouth region, as fractions of the frame
const farAudio = c.b.getReceivers().find((r) => r.track.kind === 'audio');
Promise.all([watchEnd(c.ctx, c.far, document.getElementById('far'), box, farAudio),
             watchEnd(c.ctx, c.stream, c.nearVideo, box)])
  .then(([far, near]) => { window.__ends = { far, near }; done(true); }, (e) => done(String(e)));
"""

# One frame of the portrait camera, as 64x64 gray values (for telling which portrait it shows).
FRAME_JS = """
const [deviceId, done] = arguments;
navigator.mediaDevices.getUserMedia({ video: { deviceId: { exact: deviceId } } }).then(async (s) => {
  const video = document.createElement('video');
  video.muted = true;
  video.srcObject = s;
  await video.play();
  await new Promise((r) => setTimeout(r, 1500));
  const canvas = document.createElement('canvas');
  canvas.width = canvas.height = 64;
  const c2d = canvas.getContext('2d', { willReadFrequently: true });
  c2d.drawImage(video, 0, 0, 64, 64);
  const data = c2d.getImageData(0, 0, 64, 64).data;
  const gray = [];
  for (let i = 0; i < data.length; i += 4) gray.push((data[i] + data[i + 1] + data[i + 2]) / 3);
  s.getTracks().forEach((t) => t.stop());
  done({ ok: true, gray });
}, (e) => done({ ok: false, name: e.name, message: e.message }));
"""

TWO_JS = """
const [deviceId, done] = arguments;
Promise.all([1, 2].map(() => navigator.mediaDevices.getUserMedia({ video: { deviceId } }))).then(
  (streams) => { window.__two = streams; done({ ok: true, tracks: streams.map((s) => s.getTracks().length) }); },
  (e) => done({ ok: false, name: e.name, message: e.message }));
"""

REAL_CAMERA_JS = """
const [deviceId, done] = arguments;
navigator.mediaDevices.getUserMedia({ video: { deviceId: { exact: deviceId } }, audio: true }).then((s) => {
  const v = s.getVideoTracks()[0];
  const out = { ok: true, label: v.label, deviceId: v.getSettings().deviceId, width: v.getSettings().width,
                audio: s.getAudioTracks().length, state: v.readyState };
  s.getTracks().forEach((t) => t.stop());
  done(out);
}, (e) => done({ ok: false, name: e.name, message: e.message }));
"""


class CallPage:
    """A tiny HTTP server for the call page, on 127.0.0.2 (the browser calls it call.example)."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(CALL_PAGE)))
                self.end_headers()
                self.wfile.write(CALL_PAGE)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()


def chromium(wav: Path, profile: Path, call_port: int) -> Any:
    return start_chromium(
        wav,
        profile,
        (
            "--window-size=1000,800",
            f"--load-extension={EXTENSION}",
            f"--disable-extensions-except={EXTENSION}",
            f"--host-resolver-rules=MAP {CALL_HOST} 127.0.0.2",
            f"--unsafely-treat-insecure-origin-as-secure=http://{CALL_HOST}:{call_port}",
        ),
    )


def extension_id(driver: Any) -> str:
    """The unpacked extension's id, from its service worker's target (CDP)."""

    def find() -> str | None:
        for target in driver.execute_cdp_cmd("Target.getTargets", {})["targetInfos"]:
            url = target.get("url", "")
            if url.startswith("chrome-extension://") and url.endswith("/background.js"):
                return url.split("/")[2]
        return None

    found = wait_for(find, 15, 0.2)
    if not found:
        raise RuntimeError("the extension's service worker never started (not loaded?)")
    return found


def save_settings(driver: Any, ext: str, service_url: str, token: str) -> str:
    """Fill the popup (opened as a tab) and press Save; the popup's message."""
    from selenium.webdriver.common.by import By

    driver.get(f"chrome-extension://{ext}/popup.html")
    for field, value in (("serviceUrl", service_url), ("token", token)):
        element = driver.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    driver.find_element(By.ID, "save").click()
    message = driver.find_element(By.ID, "message")
    return str(wait_for(lambda: "Saved" in message.text and message.text, 5) or message.text)


def upload_portrait(driver: Any, ext: str, picture: Path) -> str:
    """Pick `picture` in the popup's upload field and press Save; the popup's upload line."""
    from selenium.webdriver.common.by import By

    driver.get(f"chrome-extension://{ext}/popup.html")
    driver.find_element(By.ID, "portraitFile").send_keys(str(picture))
    message = driver.find_element(By.ID, "message")
    wait_for(lambda: "after Save" in message.text, 5)
    driver.find_element(By.ID, "save").click()
    upload = driver.find_element(By.ID, "upload")
    return str(wait_for(lambda: "Uploaded picture" in upload.text and upload.text, 5) or upload.text)


def which_portrait(gray: list[float], candidates: dict[str, np.ndarray]) -> dict[str, float]:
    """Correlation of a 64x64 gray frame with each candidate portrait (RGB at the output size)."""
    frame = np.asarray(gray, np.float64).reshape(64, 64)
    out = {}
    for name, rgb in candidates.items():
        small = np.asarray(Image.fromarray(rgb).convert("L").resize((64, 64), Image.BILINEAR), np.float64)
        a, b = frame - frame.mean(), small - small.mean()
        out[name] = round(float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum())), 3)
    return out


def popup_state(driver: Any, ext: str, want: str) -> dict[str, Any]:
    """Open the popup in a second tab, wait for `want` in its session list, press Check; back."""
    from selenium.webdriver.common.by import By

    main = driver.current_window_handle
    driver.switch_to.new_window("tab")
    try:
        driver.get(f"chrome-extension://{ext}/popup.html")
        sessions = driver.find_element(By.ID, "sessions")
        text = wait_for(lambda: want in sessions.text and sessions.text, 8) or sessions.text
        driver.find_element(By.ID, "check").click()
        message = driver.find_element(By.ID, "message")
        checked = wait_for(lambda: "Checking" not in message.text and message.text, 8) or message.text
        options = [o.text for o in driver.find_elements(By.CSS_SELECTOR, "#portraitName option")]
        last = driver.find_element(By.ID, "lastError")
        return {"sessions": text, "check": checked, "portraits": options,
                "last_error": last.text if last.is_displayed() else None}  # fmt: skip
    finally:
        driver.close()
        driver.switch_to.window(main)


def run(args: argparse.Namespace) -> dict[str, Any]:
    config = with_overrides(
        AppConfig(),
        server={"host": "127.0.0.1", "port": 0, "token": TOKEN, "max_sessions": 2},
        webrtc={"host_addresses": ["127.0.0.1"]},
        video={"width_px": 256, "height_px": 256, "fps": 25},
        warp={"head_motion": 0.0, "breathing": 0.0},
    )
    if args.mouth_shapes is not None:
        config = with_overrides(config, warp={"mouth_shapes": args.mouth_shapes})
    result: dict[str, Any] = {}
    server = ServerThread(config)
    call = CallPage()
    profile = Path(tempfile.mkdtemp(prefix="chromium-ext-profile-"))
    driver = None
    console: Console | None = None
    t0 = time.monotonic()
    try:
        url = server.start().rstrip("/")
        assert server.server is not None
        srv = server.server
        result["url"] = url
        driver = chromium(args.wav, profile, call.port)
        driver.set_script_timeout(30)
        console = Console(driver)
        ext = extension_id(driver)
        result["extension_id"] = ext
        call_url = f"http://{CALL_HOST}:{call.port}/"

        # Wrong token first: getUserMedia rejects with a readable DOMException.
        result["saved"] = save_settings(driver, ext, url, "wrong-token")
        driver.get(call_url)
        result["page_origin"] = driver.execute_script("return location.origin")
        result["secure_context"] = driver.execute_script("return window.isSecureContext")
        ws_url = url.replace("http://", "ws://") + "/ws"
        result["page_socket"] = driver.execute_async_script(PAGE_SOCKET_JS, ws_url)
        devices = driver.execute_async_script(DEVICES_JS)
        result["devices"] = devices
        portrait = [d for d in devices if d["kind"] == "videoinput" and d["label"] == "Talking portrait"]
        if len(portrait) != 1:
            raise RuntimeError(f"no Talking portrait camera: {devices}")
        portrait_id = portrait[0]["deviceId"]
        driver.get(call_url)
        again = driver.execute_async_script(DEVICES_JS)
        result["devices_again"] = [d["deviceId"] for d in again if d["label"] == "Talking portrait"]
        result["wrong_token"] = driver.execute_async_script(
            GUM_ERROR_JS, {"video": {"deviceId": {"exact": portrait_id}}, "audio": True}
        )
        result["active_after_wrong_token"] = srv.active_sessions

        # Service down (nothing listens there).
        save_settings(driver, ext, "http://127.0.0.1:9", TOKEN)
        driver.get(call_url)
        result["service_down"] = driver.execute_async_script(GUM_ERROR_JS, {"video": {"deviceId": portrait_id}})

        # The right settings: the call.
        save_settings(driver, ext, url, TOKEN)
        driver.get(call_url)
        got = driver.execute_async_script(CALL_JS, portrait_id)
        result["call"] = got
        if not got.get("ok"):
            raise RuntimeError(f"getUserMedia for the portrait failed: {got}")
        result["sessions_during_call"] = srv.active_sessions
        first = wait_for(lambda: driver.execute_async_script(FAR_STATS_JS)["framesDecoded"] > 0, 20, 0.2)
        if not first:
            raise RuntimeError("the far end decoded no frame: " + json.dumps(driver.execute_async_script(FAR_STATS_JS)))
        time.sleep(3.0)  # both hops' audio/video sync settle (Chromium adjusts it in steps, about once a second)
        s1, t1 = driver.execute_async_script(FAR_STATS_JS), time.monotonic()
        driver.execute_script(WATCH_JS)
        driver.execute_async_script(START_WATCH_JS)
        levels = []
        while time.monotonic() - t1 < args.seconds:
            levels.append(driver.execute_async_script(FAR_STATS_JS)["audioLevel"])
            time.sleep(0.2)
        driver.execute_script("window.__ends.far.stop(); window.__ends.near.stop()")
        s2, t2 = driver.execute_async_script(FAR_STATS_JS), time.monotonic()
        result["far_fps"] = round((s2["framesDecoded"] - s1["framesDecoded"]) / (t2 - t1), 2)
        result["far_size"] = [s2["width"], s2["height"]]
        result["far_audio_bytes"] = s2["audioBytes"]
        result["far_audio_level_max"] = max((x or 0.0) for x in levels)
        ends = driver.execute_script(
            "const e = window.__ends;"
            "return {far: [e.far.frames, e.far.audio, e.far.playout], near: [e.near.frames, e.near.audio]}"
        )
        result["sync"] = sync_summary(ends["far"][0], ends["far"][2])  # the far end's playout clock
        result["sync_web_audio"] = sync_summary(ends["far"][0], ends["far"][1])
        result["sync_near_web_audio"] = sync_summary(ends["near"][0], ends["near"][1])
        if args.screenshot:  # during speech
            driver.execute_script(SHOT_JS)
            driver.save_screenshot(str(args.screenshot))
            driver.execute_script("farShot.hidden = true; far.hidden = false")
        result["popup"] = popup_state(driver, ext, "connected")
        # Stop both tracks: the server session ends at once.
        driver.execute_script("window.__call.stream.getTracks().forEach((t) => t.stop())")
        t_stop = time.monotonic()
        result["ended_on_stop"] = bool(wait_for(lambda: srv.active_sessions == 0 and srv.clients == 0, 10, 0.05))
        result["ended_on_stop_s"] = round(time.monotonic() - t_stop, 2)

        # Two getUserMedia calls: two sessions; stopping them ends both.
        got = driver.execute_async_script(TWO_JS, portrait_id)
        result["two"] = got
        result["two_sessions"] = srv.active_sessions
        # Every media slot (max_sessions = 2) is taken: a third is refused as busy, and the popup says so.
        result["busy"] = driver.execute_async_script(GUM_ERROR_JS, {"video": {"deviceId": portrait_id}})
        result["popup_busy"] = popup_state(driver, ext, "connected")
        driver.execute_script("window.__two.forEach((s) => s.getTracks().forEach((t) => t.stop()))")
        result["two_ended"] = bool(wait_for(lambda: srv.active_sessions == 0, 10, 0.05))

        # A picture uploaded in the popup is the portrait of the next session (here: the astronaut,
        # mirrored, so that the frame tells which one it shows).
        picture = profile.parent / f"{profile.name}-mirrored.png"
        Image.fromarray(np.ascontiguousarray(astronaut()[:, ::-1])).save(picture)
        main = driver.current_window_handle
        driver.switch_to.new_window("tab")
        result["upload"] = upload_portrait(driver, ext, picture)
        driver.close()
        driver.switch_to.window(main)
        driver.get(call_url)
        frame = driver.execute_async_script(FRAME_JS, portrait_id)
        if frame.get("ok"):
            video = config.video
            candidates = {
                "default": default_portrait(config).rgb,
                "uploaded": load_portrait(picture, config.portrait, video).rgb,
            }
            result["upload_frame"] = which_portrait(frame["gray"], candidates)
        else:
            result["upload_frame"] = frame
        picture.unlink(missing_ok=True)
        save_settings(driver, ext, url, TOKEN)
        driver.get(f"chrome-extension://{ext}/popup.html")
        driver.find_element(By.ID, "clearUpload").click()
        driver.get(call_url)

        # A tab that closes ends its session.
        main = driver.current_window_handle
        driver.switch_to.new_window("tab")
        driver.get(call_url)
        got = driver.execute_async_script(
            GUM_ERROR_JS.replace("s.getTracks().forEach((t) => t.stop()); ", ""),
            {"video": {"deviceId": portrait_id}, "audio": True},
        )
        result["tab_call"] = got
        result["tab_sessions"] = srv.active_sessions
        driver.close()
        driver.switch_to.window(main)
        t_close = time.monotonic()
        result["tab_closed_ended"] = bool(wait_for(lambda: srv.active_sessions == 0 and srv.clients == 0, 10, 0.05))
        result["tab_closed_ended_s"] = round(time.monotonic() - t_close, 2)

        # The browser's own fake camera still works when chosen.
        real = [d for d in devices if d["kind"] == "videoinput" and d["deviceId"] != portrait_id]
        result["real_camera"] = driver.execute_async_script(REAL_CAMERA_JS, real[0]["deviceId"]) if real else None
        result["active_after_real_camera"] = srv.active_sessions
    finally:
        if driver is not None:
            try:
                result["console_problems"] = console.problems() if console else None
                result["console"] = console.entries[-30:] if console else None
            except Exception as exc:
                result["console_error"] = f"{type(exc).__name__}: {exc}"
            driver.quit()
        call.stop()
        server.stop()
        shutil.rmtree(profile, ignore_errors=True)
    result["total_s"] = round(time.monotonic() - t0, 2)
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--wav", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--mouth-shapes", choices=MOUTH_SHAPES, help="default: the config's")
    return run_and_report(run, parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
