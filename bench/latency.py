"""Audio-to-mouth latency through real WebRTC on loopback, and the delivered frame rate.

A client plays sharp speech onsets ("pa", spoken by espeak-ng, one every `--spacing` seconds after
one second of silence) like a microphone: the 20 ms frame holding samples [20i, 20i + 20) ms leaves
at start + 20(i + 1) ms, as a real capture would. For each onset it takes the wall time at which
that sample was "spoken" and the arrival of the first returning video frame whose mouth is open,
measured from pixels: the mean absolute difference of the mouth box (from the portrait's 68
landmarks, widened and lengthened downwards for the jaw) against the portrait; "open" is the first
frame whose value moved 30 % of the way from its level just before the onset (the face at rest) to
its farthest point during that syllable.

Modes:
- in-process (default): the engine and an AvatarSession behind signaling.peer.Peer (the server's
  own peer code) and a client RTCPeerConnection, in one process, no signaling server;
- `--server URL`: a running `avatar serve` (its /ws protocol: hello -> offer -> answer), which must
  offer 127.0.0.1 (config `[webrtc] host_addresses = ["127.0.0.1"]`);
- `--spawn`: starts `avatar serve --port 0` with such a config, measures through it, stops it.

Receivers: aiortc's audio receiver holds 4 packets (80 ms) before playing the first, and every
aiortc receiver releases a frame only when the next one starts (audio +20 ms, video +1 frame). The
server side uses `webrtc.audio_jitter_prefetch` (0: signaling.peer's prompt audio buffer); the bench
client does the same for the voice it gets back (`--client-prefetch`, default 0) and releases each
video frame once its marker packet is in (`--client-video-jitter prompt`), as a browser would, so
the numbers are not inflated by the client.

Prints one line per onset, then p50/p95 latency, delivered fps, inter-frame jitter and the offset
between the returned voice and the mouth, and finally one JSON line with all the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import fractions
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from avatar.config import AppConfig, load_config, with_overrides  # noqa: E402
from avatar.portrait import Portrait, default_portrait  # noqa: E402
from avatar.speech import synthesize_speech  # noqa: E402
from signaling.ice import host_addresses  # noqa: E402
from signaling.peer import set_audio_jitter_prefetch  # noqa: E402

RATE = 48_000
PTIME = 0.02
FRAME = 960


# -- the client's microphone --------------------------------------------------------------------


def make_onsets(count: int, spacing_s: float, lead_s: float = 1.0) -> tuple[np.ndarray, list[int]]:
    """`count` espeak "pa" syllables, 48 kHz mono int16, and the sample index of each onset."""
    with tempfile.TemporaryDirectory() as tmp:
        path = synthesize_speech("pa", Path(tmp) / "pa.wav", sample_rate_hz=RATE, lead_silence_s=0,
                                 tail_silence_s=0)
        with av.open(str(path)) as container:
            pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    pcm = pcm.astype(np.float32)
    loud = np.flatnonzero(np.abs(pcm) > 0.02 * np.abs(pcm).max())
    syllable = pcm[loud[0] : loud[-1] + 1]
    syllable = syllable / np.abs(syllable).max() * 0.5 * 32767
    total = round((lead_s + count * spacing_s + 1.0) * RATE)
    out = np.zeros(total, dtype=np.float32)
    onsets = []
    for i in range(count):
        start = round((lead_s + i * spacing_s) * RATE)
        out[start : start + syllable.size] += syllable[: total - start]
        # The onset: the first 2.5 ms block whose RMS passes 10 % of the syllable's loudest block.
        blocks = syllable[: syllable.size // 120 * 120].reshape(-1, 120)
        rms = np.sqrt(np.mean(blocks**2, axis=1))
        onsets.append(start + int(np.argmax(rms > 0.1 * rms.max())) * 120)
    return out.astype(np.int16), onsets


class MicTrack(MediaStreamTrack):
    """Sends samples like a microphone: frame i (20 ms) leaves when its last sample was captured."""

    kind = "audio"

    def __init__(self, samples: np.ndarray) -> None:
        super().__init__()
        self.samples = samples
        self.index = 0
        self.start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.start is None:
            self.start = time.monotonic()
        await asyncio.sleep(max(0.0, self.start + (self.index + 1) * PTIME - time.monotonic()))
        chunk = self.samples[self.index * FRAME : (self.index + 1) * FRAME]
        if chunk.size < FRAME:
            chunk = np.concatenate([chunk, np.zeros(FRAME - chunk.size, np.int16)])
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self.index * FRAME
        frame.time_base = fractions.Fraction(1, RATE)
        self.index += 1
        return frame


# -- the client -------------------------------------------------------------------------------------


class PromptVideoJitterBuffer(JitterBuffer):
    """Releases a video frame as soon as it is complete, not when the next frame's first packet comes.

    aiortc's JitterBuffer only knows a frame is complete when a packet of the next one arrives, so
    an aiortc client adds one frame period (40 ms at 25 fps) that a browser does not. Here a frame is
    complete on the packet with the RTP marker bit when every packet since the oldest held one is
    there; anything else (a gap, reordering) falls back to aiortc's rule.
    """

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        packets = []
        timestamp = None
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self._capacity]  # type: ignore[operator]
            if packet is None or (timestamp is not None and packet.timestamp != timestamp):
                break
            timestamp = packet.timestamp
            packets.append(packet)
            if packet.marker:
                self.remove(count + 1)
                data = b"".join(p._data for p in packets)  # type: ignore[attr-defined]
                return JitterFrame(data=data, timestamp=timestamp)
        return super()._remove_frame(sequence_number)


_JITTER_ATTR = "_RTCRtpReceiver__jitter_buffer"


def install_prompt_video_jitter_buffer(receiver: Any) -> None:
    current = getattr(receiver, _JITTER_ATTR)
    assert isinstance(current, JitterBuffer), "aiortc changed: no jitter buffer to replace"
    setattr(receiver, _JITTER_ATTR, PromptVideoJitterBuffer(capacity=current.capacity, is_video=True))


@dataclasses.dataclass
class Capture:
    video: list[tuple[float, int, float]] = dataclasses.field(default_factory=list)  # (arrival, pts, mouth)
    audio: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # (arrival, rms)


def mouth_box(portrait: Portrait) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the lips' box, widened a quarter and lengthened downwards for the jaw."""
    lips = portrait.landmarks[48:68]
    x0, y0 = lips.min(axis=0)
    x1, y1 = lips.max(axis=0)
    w, h = x1 - x0, y1 - y0
    height, width = portrait.rgb.shape[:2]
    return (max(0, int(x0 - 0.25 * w)), max(0, int(y0 - 0.3 * h)),
            min(width, int(x1 + 0.25 * w)), min(height, int(y1 + 1.2 * h)))


async def read_video(track: MediaStreamTrack, capture: Capture, box: tuple[int, int, int, int],
                     rest: np.ndarray) -> None:
    x0, y0, x1, y1 = box
    with contextlib.suppress(MediaStreamError):
        while True:
            frame = await track.recv()
            arrival = time.monotonic()
            assert isinstance(frame, av.VideoFrame)
            rgb = frame.to_ndarray(format="rgb24")
            mouth = rgb[y0:y1, x0:x1].astype(np.float32)
            capture.video.append((arrival, int(frame.pts or 0), float(np.mean(np.abs(mouth - rest)))))


async def read_audio(track: MediaStreamTrack, capture: Capture) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            frame = await track.recv()
            assert isinstance(frame, av.AudioFrame)
            samples = frame.to_ndarray().astype(np.float32) / 32768.0
            capture.audio.append((time.monotonic(), float(np.sqrt(np.mean(samples**2)))))


def client_peer(mic: MicTrack, prefetch: int, prompt_video: bool) -> RTCPeerConnection:
    """The bench's client: its voice out, video and the returned voice in, with prompt receivers."""
    pc = RTCPeerConnection()
    audio = pc.addTransceiver(mic, direction="sendrecv")
    video = pc.addTransceiver("video", direction="recvonly")
    set_audio_jitter_prefetch(audio.receiver, prefetch)  # 0: signaling.peer's prompt audio buffer
    if prompt_video:
        install_prompt_video_jitter_buffer(video.receiver)
    return pc


def start_readers(pc: RTCPeerConnection, capture: Capture, box: tuple[int, int, int, int],
                  rest: np.ndarray) -> list[asyncio.Task[None]]:
    tracks = {t.kind: t.receiver.track for t in pc.getTransceivers()}
    return [asyncio.ensure_future(read_video(tracks["video"], capture, box, rest)),
            asyncio.ensure_future(read_audio(tracks["audio"], capture))]


async def run_in_process(config: AppConfig, args: argparse.Namespace, mic: MicTrack,
                         capture: Capture) -> dict[str, Any]:
    from avatar.engine import InferenceEngine
    from avatar.session import AvatarSession
    from signaling.peer import Peer

    generator = load_bench_generator(config, args.generator)
    portrait = await asyncio.to_thread(default_portrait, config)
    engine = InferenceEngine(generator, config.video)
    await engine.start()
    box = mouth_box(portrait)
    rest = portrait.rgb[box[1] : box[3], box[0] : box[2]].astype(np.float32)
    session: AvatarSession | None = None

    async def make_session(return_audio: bool) -> AvatarSession:
        nonlocal session
        session = AvatarSession(config, engine, generator, portrait, session_id="bench",
                                return_audio=return_audio)
        return session

    client = client_peer(mic, args.client_prefetch, args.client_video_jitter == "prompt")
    server = Peer(config.webrtc, "bench")
    readers: list[asyncio.Task[None]] = []
    try:
        await client.setLocalDescription(await client.createOffer())
        answer = await server.negotiate(client.localDescription.sdp, make_session)
        assert session is not None
        await session.start()
        await client.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        readers = start_readers(client, capture, box, rest)  # (the client's tracks exist now)
        await wait_for_mic(mic, args)
        stats = session.stats()
        stats["engine"] = engine.stats()
    finally:
        await client.close()
        if session is not None:
            await session.aclose()
        await server.aclose()
        await engine.aclose()
        for task in readers:
            task.cancel()
    return stats


async def run_with_server(url: str, config: AppConfig, args: argparse.Namespace, mic: MicTrack,
                          capture: Capture) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    ws_url = url.replace("http://", "ws://", 1).rstrip("/")
    if not ws_url.endswith("/ws"):
        ws_url += "/ws"
    stats: list[dict[str, Any]] = []

    async def receive(ws: Any) -> dict[str, Any]:
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if message.get("type") != "stats":
                return message
            stats.append(message)

    async with connect(ws_url, max_size=2**24) as ws:
        await ws.send(json.dumps({"type": "hello", **({"token": args.token} if args.token else {})}))
        welcome = await receive(ws)
        if welcome.get("type") != "welcome":
            raise SystemExit(f"server refused: {welcome}")
        config = with_overrides(config, video={"fps": welcome["fps"], "width_px": welcome["width"],
                                               "height_px": welcome["height"]})
        portrait = await asyncio.to_thread(default_portrait, config)  # the server's default, here too
        box = mouth_box(portrait)
        rest = portrait.rgb[box[1] : box[3], box[0] : box[2]].astype(np.float32)
        client = client_peer(mic, args.client_prefetch, args.client_video_jitter == "prompt")
        readers: list[asyncio.Task[None]] = []
        try:
            await client.setLocalDescription(await client.createOffer())
            await ws.send(json.dumps({"type": "offer", "sdp": client.localDescription.sdp}))
            answer = await receive(ws)
            if answer.get("type") != "answer":
                raise SystemExit(f"no answer: {answer}")
            await client.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
            readers = start_readers(client, capture, box, rest)
            pump = asyncio.ensure_future(_collect_stats(ws, stats))
            await wait_for_mic(mic, args)
            pump.cancel()
            with contextlib.suppress(Exception):
                await ws.send(json.dumps({"type": "bye"}))
        finally:
            await client.close()
            for task in readers:
                task.cancel()
    return stats[-1] if stats else {}


async def _collect_stats(ws: Any, stats: list[dict[str, Any]]) -> None:
    with contextlib.suppress(Exception):
        async for text in ws:
            message = json.loads(text)
            if message.get("type") == "stats":
                stats.append(message)


async def wait_for_mic(mic: MicTrack, args: argparse.Namespace) -> None:
    total = mic.samples.size / RATE
    deadline = time.monotonic() + total + 30
    while (mic.start is None or time.monotonic() < mic.start + total + 0.5) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def load_bench_generator(config: AppConfig, name: str) -> Any:
    if name == "loudness":  # the tests' double: pipeline cost without the animator's
        sys.path.insert(0, str(ROOT / "tests"))
        from media_doubles import LoudnessGenerator

        return LoudnessGenerator(config.video.width_px, config.video.height_px, config.video.fps)
    from avatar.generators import load_generator

    return load_generator(config)


@contextlib.contextmanager
def spawned_server(config_path: Path | None, args: argparse.Namespace) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "bench.toml"
        base = config_path.read_text() if config_path else ""
        extra = (f'\n[webrtc]\nhost_addresses = ["127.0.0.1"]\naudio_jitter_prefetch = 0\n'
                 f"\n[video]\nfps = {args.fps}\nwidth_px = {args.size}\nheight_px = {args.size}\n")
        if "[webrtc]" in base or "[video]" in base:
            raise SystemExit("--spawn writes its own [webrtc] and [video]; give a config without them")
        cfg.write_text(base + extra)
        command = [sys.executable, "-m", "avatar", "serve", "--config", str(cfg), "--port", "0"]
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            assert process.stdout is not None
            url = None
            started = time.monotonic()
            while time.monotonic() - started < 120:
                line = process.stdout.readline()
                if not line:
                    break
                if "http://" in line:
                    url = line[line.index("http://") :].split()[0]
                    break
            if url is None:
                raise SystemExit("avatar serve did not print its URL")
            yield url
        finally:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
            if process.poll() is None:
                process.kill()


# -- analysis ---------------------------------------------------------------------------------------


def analyse(capture: Capture, mic: MicTrack, onsets: list[int], fps: int, spacing_s: float) -> dict[str, Any]:
    assert mic.start is not None
    video = np.array(capture.video, dtype=np.float64).reshape(-1, 3)
    arrival, pts, mouth = video[:, 0], video[:, 1], video[:, 2]
    latencies: list[float] = []
    print(f"{'onset':>5} {'spoken_s':>8} {'latency_ms':>10} {'rest':>6} {'change':>6}")
    for i, onset in enumerate(onsets):
        spoken = mic.start + onset / RATE
        before = (arrival > spoken - 0.5) & (arrival < spoken - 0.05)
        after = (arrival >= spoken) & (arrival < spoken + min(0.8, spacing_s - 0.1))
        if before.sum() < 3 or after.sum() < 3:
            print(f"{i:>5} {onset / RATE:8.2f} {'(no frames)':>10}")
            continue
        rest = float(np.median(mouth[before]))
        change = np.abs(mouth - rest)
        peak = float(change[after].max())
        if peak < 2.0:
            print(f"{i:>5} {onset / RATE:8.2f} {'(no motion)':>10} {rest:6.1f} {peak:6.1f}")
            continue
        first = np.flatnonzero(after & (change > 0.3 * peak))[0]
        latency = (arrival[first] - spoken) * 1000
        latencies.append(latency)
        print(f"{i:>5} {onset / RATE:8.2f} {latency:10.1f} {rest:6.1f} {peak:6.1f}")
    steady = arrival > arrival[0] + 1.0
    intervals = np.diff(arrival[steady]) * 1000
    fps_measured = (steady.sum() - 1) / (arrival[steady][-1] - arrival[steady][0]) if steady.sum() > 2 else 0.0
    pts_step = np.diff(pts[steady])
    # The returned voice against the mouth: first loud audio frame after each onset vs first open mouth.
    av_offsets = []
    if capture.audio:
        audio = np.array(capture.audio)
        for onset, latency in zip(onsets, latencies, strict=False):
            spoken = mic.start + onset / RATE
            loud = np.flatnonzero((audio[:, 0] >= spoken) & (audio[:, 1] > 0.02))
            if loud.size:
                av_offsets.append((spoken + latency / 1000 - audio[loud[0], 0]) * 1000)
    result = {
        "onsets": len(onsets),
        "measured": len(latencies),
        "latency_ms_p50": round(float(np.percentile(latencies, 50)), 1) if latencies else None,
        "latency_ms_p95": round(float(np.percentile(latencies, 95)), 1) if latencies else None,
        "latency_ms_min": round(float(np.min(latencies)), 1) if latencies else None,
        "latency_ms_max": round(float(np.max(latencies)), 1) if latencies else None,
        "fps": round(float(fps_measured), 2),
        "configured_fps": fps,
        "frame_interval_ms_mean": round(float(intervals.mean()), 2) if intervals.size else None,
        "frame_interval_ms_std": round(float(intervals.std()), 2) if intervals.size else None,
        "frame_interval_ms_p95": round(float(np.percentile(intervals, 95)), 2) if intervals.size else None,
        "pts_step_median": int(np.median(pts_step)) if pts_step.size else None,
        "mouth_minus_voice_ms_median": round(float(np.median(av_offsets)), 1) if av_offsets else None,
    }
    return result


# -- main -------------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    config = load_config(args.config) if args.config else AppConfig()
    config = with_overrides(config, video={"fps": args.fps, "width_px": args.size, "height_px": args.size},
                            webrtc={"audio_jitter_prefetch": args.server_prefetch})
    samples, onsets = make_onsets(args.onsets, args.spacing)
    mic = MicTrack(samples)
    capture = Capture()
    with host_addresses(["127.0.0.1"]):
        if args.spawn:
            with spawned_server(args.config, args) as url:
                print(f"server: {url}")
                server_stats = await run_with_server(url, config, args, mic, capture)
        elif args.server:
            server_stats = await run_with_server(args.server, config, args, mic, capture)
        else:
            server_stats = await run_in_process(config, args, mic, capture)
    result = analyse(capture, mic, onsets, config.video.fps, args.spacing)
    result["mode"] = "spawn" if args.spawn else ("server" if args.server else "in-process")
    result["generator"] = args.generator if not (args.server or args.spawn) else "server's"
    result["size"] = args.size
    result["client_audio_prefetch"] = args.client_prefetch
    result["client_video_jitter"] = args.client_video_jitter
    result["server_audio_prefetch"] = "server's" if (args.server or args.spawn) else args.server_prefetch
    result["server"] = server_stats
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", help="URL of a running `avatar serve` (http://host:port)")
    parser.add_argument("--spawn", action="store_true", help="start `avatar serve --port 0` and use it")
    parser.add_argument("--token", default="", help="token for hello, when the server wants one")
    parser.add_argument("--config", type=Path, default=None, help="config file (default: built-in defaults)")
    parser.add_argument("--generator", default="warp", choices=["warp", "loudness"],
                        help="in-process only: the configured animator, or the tests' loudness double")
    parser.add_argument("--onsets", type=int, default=12)
    parser.add_argument(
        "--spacing", type=float, default=1.21,
        help="seconds between onsets; not a multiple of the frame period, so they fall at every phase of the grid",
    )
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--size", type=int, default=256, help="video width and height")
    parser.add_argument("--client-prefetch", type=int, default=0,
                        help="packets the client's audio receiver holds (0: prompt, as the server's)")
    parser.add_argument("--server-prefetch", type=int, default=0,
                        help="in-process: webrtc.audio_jitter_prefetch of the server's receiver")
    parser.add_argument("--client-video-jitter", default="prompt", choices=["prompt", "aiortc"],
                        help="client video receiver: release a frame once complete (like a browser), or "
                             "aiortc's buffer (holds each frame until the next one starts)")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    print(f"latency p50 {result['latency_ms_p50']} ms, p95 {result['latency_ms_p95']} ms "
          f"({result['measured']}/{result['onsets']} onsets); fps {result['fps']} "
          f"(configured {result['configured_fps']}), frame interval {result['frame_interval_ms_mean']} "
          f"+- {result['frame_interval_ms_std']} ms; mouth - voice {result['mouth_minus_voice_ms_median']} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
