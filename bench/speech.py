"""Speech items in a live session: from `say` to the first open-mouth frame and to the first voiced
audio, and the frame rate while the portrait speaks, through real WebRTC on loopback.

The server runs in this process (`SignalingServer`, ICE on 127.0.0.1); a client with no microphone
(a presenter: recvonly audio, `--microphone` sends silence instead) sends `--count` says of
`--text`, one after the other's `spoken`, and measures, per say, from the moment it was sent:
- `speaking_ms`: the `speaking` event (the synthesiser ran, the item reached the play-out clock);
- `mouth_ms`: the arrival of the first video frame whose mouth moved 30 % of the way to its
  farthest point in that say (the mouth box of bench/latency.py, against the portrait at rest);
- `voice_ms`: the arrival of the first returned audio packet louder than -40 dBFS RMS;
and the frames per second that arrived between `speaking` and `spoken`. Both receivers release
media promptly (bench/latency.py's prompt audio and video jitter buffers), as a browser would.
It also times the synthesiser alone (espeak-ng, or `[tts] command` of --config) for the text.

    python bench/speech.py [--count 5] [--text "..."] [--size 256] [--microphone] [--config PATH]

Prints one line per say, the medians, and a JSON line with everything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from latency import Capture, install_prompt_video_jitter_buffer, mouth_box, read_audio, read_video  # noqa: E402

from avatar.config import AppConfig, load_config, with_overrides  # noqa: E402
from avatar.portrait import default_portrait  # noqa: E402
from avatar.speech import synthesize  # noqa: E402
from signaling.peer import set_audio_jitter_prefetch  # noqa: E402
from signaling.server import SignalingServer  # noqa: E402

VOICED_RMS = 0.01  # -40 dBFS


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    config = load_config(args.config) if args.config else AppConfig()
    config = with_overrides(
        config,
        server={"host": "127.0.0.1", "port": 0, "token": ""},
        webrtc={"host_addresses": ["127.0.0.1"]},
        video={"width_px": args.size, "height_px": args.size},
    )
    synth_ms = []
    for _ in range(3):
        t = time.perf_counter()
        await synthesize(args.text, None, config.tts)
        synth_ms.append((time.perf_counter() - t) * 1000)
    portrait = await asyncio.to_thread(default_portrait, config)
    box = mouth_box(portrait)
    rest = portrait.rgb[box[1] : box[3], box[0] : box[2]].astype(np.float32)
    server = SignalingServer(config)
    await server.start()
    capture = Capture()
    events: list[tuple[float, dict[str, Any]]] = []
    pc = RTCPeerConnection()
    readers: list[asyncio.Task[None]] = []
    try:
        async with connect(server.url.replace("http://", "ws://").rstrip("/") + "/ws", max_size=2**24) as ws:

            async def receive() -> dict[str, Any]:
                while True:
                    message = json.loads(await asyncio.wait_for(ws.recv(), 60))
                    if message.get("type") != "stats":
                        return message

            await ws.send(json.dumps({"type": "hello"}))
            welcome = await receive()
            assert welcome["type"] == "welcome", welcome
            if args.microphone:
                audio = pc.addTransceiver(AudioStreamTrack(), direction="sendrecv")
            else:
                audio = pc.addTransceiver("audio", direction="recvonly")
            video = pc.addTransceiver("video", direction="recvonly")
            set_audio_jitter_prefetch(audio.receiver, 0)
            install_prompt_video_jitter_buffer(video.receiver)
            await pc.setLocalDescription(await pc.createOffer())
            await ws.send(json.dumps({"type": "offer", "sdp": pc.localDescription.sdp}))
            answer = await receive()
            assert answer["type"] == "answer", answer
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
            tracks = {t.kind: t.receiver.track for t in pc.getTransceivers()}
            readers = [asyncio.ensure_future(read_video(tracks["video"], capture, box, rest)),
                       asyncio.ensure_future(read_audio(tracks["audio"], capture))]  # fmt: skip
            await asyncio.sleep(1.5)  # rest frames first
            sent: list[float] = []
            for i in range(args.count):
                sent.append(time.monotonic())
                await ws.send(json.dumps({"type": "say", "text": args.text, "id": f"say-{i}"}))
                while True:
                    message = await receive()
                    events.append((time.monotonic(), message))
                    if message.get("type") == "error":
                        raise SystemExit(f"the server refused the say: {message}")
                    if message.get("type") == "spoken":
                        break
                await asyncio.sleep(args.gap_s)
    finally:
        for task in readers:
            task.cancel()
        await pc.close()
        await server.aclose()
    return analyse(capture, events, sent, args, synth_ms)


def analyse(capture: Capture, events: list[tuple[float, dict[str, Any]]], sent: list[float],
            args: argparse.Namespace, synth_ms: list[float]) -> dict[str, Any]:  # fmt: skip
    video = np.array(capture.video, dtype=np.float64).reshape(-1, 3)
    audio = np.array(capture.audio, dtype=np.float64).reshape(-1, 2)
    starts = {m["id"]: t for t, m in events if m["type"] == "speaking"}
    ends = {m["id"]: t for t, m in events if m["type"] == "spoken"}
    rows = []
    print(f"{'say':>5} {'speaking_ms':>11} {'mouth_ms':>9} {'voice_ms':>9} {'fps':>6}")
    for i, t_sent in enumerate(sent):
        item = f"say-{i}"
        t0, t1 = starts.get(item), ends.get(item)
        if t0 is None or t1 is None:
            continue
        during = (video[:, 0] >= t_sent) & (video[:, 0] < t1)
        change = video[:, 2]
        before = (video[:, 0] >= t_sent - 0.5) & (video[:, 0] < t_sent)
        rest = float(np.median(change[before])) if before.any() else 0.0
        peak = float((change[during] - rest).max()) if during.any() else 0.0
        opened = np.flatnonzero(during & (change - rest >= 0.3 * peak)) if peak > 2 else np.array([], int)
        voiced = np.flatnonzero((audio[:, 0] >= t_sent) & (audio[:, 1] > VOICED_RMS))
        speaking_frames = (video[:, 0] >= t0) & (video[:, 0] < t1)
        row = {
            "speaking_ms": round((t0 - t_sent) * 1000, 1),
            "mouth_ms": round((video[opened[0], 0] - t_sent) * 1000, 1) if opened.size else None,
            "voice_ms": round((audio[voiced[0], 0] - t_sent) * 1000, 1) if voiced.size else None,
            "fps": round(float(speaking_frames.sum()) / (t1 - t0), 2),
        }
        rows.append(row)
        print(f"{i:>5} {row['speaking_ms']:>11} {row['mouth_ms']!s:>9} {row['voice_ms']!s:>9} {row['fps']:>6}")

    def median(key: str) -> float | None:
        values = [r[key] for r in rows if r[key] is not None]
        return round(float(np.median(values)), 1) if values else None

    result = {
        "says": len(sent), "measured": len(rows), "text": args.text, "size": args.size,
        "microphone": args.microphone, "synthesis_ms_median": round(float(np.median(synth_ms)), 1),
        "speaking_ms_median": median("speaking_ms"), "mouth_ms_median": median("mouth_ms"),
        "voice_ms_median": median("voice_ms"), "fps_median": median("fps"), "rows": rows,
    }  # fmt: skip
    print(f"say -> speaking {result['speaking_ms_median']} ms, first open mouth {result['mouth_ms_median']} ms, "
          f"first voiced audio {result['voice_ms_median']} ms (medians); {result['fps_median']} fps while speaking; "
          f"the synthesiser alone {result['synthesis_ms_median']} ms")  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=5)
    parser.add_argument("--text", default="Hello! I am the portrait, and I say what you type.")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--gap-s", type=float, default=0.5)
    parser.add_argument("--microphone", action="store_true", help="send a silent microphone (default: none)")
    parser.add_argument("--config", type=Path)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result))
    with contextlib.suppress(Exception):
        sys.stdout.flush()


if __name__ == "__main__":
    main()
