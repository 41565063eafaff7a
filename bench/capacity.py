"""Capacity: how many concurrent live sessions one process holds at the configured frame rate.

For each size (default 256x256 and 512x512) the bench loads the generator once, starts one engine,
and runs N sessions at once, N = 1, 2, 3, ...: each is a real WebRTC pair on loopback (the server
side is signaling.peer.Peer + AvatarSession, as `avatar serve` does; the client sends a looped
espeak sentence like a microphone and receives the video). After a warm-up it counts, over the
measuring window, the frames each client receives and the frames each session's video track sent.
It stops at the first N whose slowest session falls below 95 % of the configured fps. The video
tracks repeat the last frame when the generator is late, so delivered fps alone overstates what
is held: "fresh" is the rate of frames that were not repeats (the generator keeping up); the run
also stops when it falls under half the fps, and the summary gives both counts.

The clients run in the same process and on the same cores as the server (decoding VP8 in aiortc's
threads costs about as much as encoding it), so the numbers are a lower bound for a server whose
clients are elsewhere. Prints one table row per (size, N) and a JSON line at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from latency import MicTrack, client_peer, load_bench_generator  # noqa: E402

from avatar.config import AppConfig, load_config, with_overrides  # noqa: E402
from avatar.engine import InferenceEngine  # noqa: E402
from avatar.portrait import default_portrait  # noqa: E402
from avatar.session import AvatarSession  # noqa: E402
from avatar.speech import DEMO_SENTENCE, synthesize_speech  # noqa: E402
from signaling.ice import host_addresses  # noqa: E402
from signaling.peer import Peer  # noqa: E402


def speech_48k(seconds: float) -> np.ndarray:
    import av

    with tempfile.TemporaryDirectory() as tmp:
        path = synthesize_speech(DEMO_SENTENCE, Path(tmp) / "s.wav", sample_rate_hz=48_000)
        with av.open(str(path)) as container:
            pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    reps = int(np.ceil(seconds * 48_000 / pcm.size))
    return np.tile(pcm.astype(np.int16), reps)[: round(seconds * 48_000)]


async def count_frames(track: MediaStreamTrack, arrivals: list[float]) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()
            arrivals.append(time.monotonic())


class Pair:
    """One client and one server session on loopback."""

    def __init__(self, index: int, config: AppConfig, engine: InferenceEngine, generator: Any,
                 portrait: Any, audio: np.ndarray) -> None:
        self.index = index
        self.config = config
        self.engine = engine
        self.generator = generator
        self.portrait = portrait
        self.mic = MicTrack(audio)
        self.client = client_peer(self.mic, 0, True)
        self.peer = Peer(config.webrtc, f"cap-{index}")
        self.session: AvatarSession | None = None
        self.arrivals: list[float] = []
        self.reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        async def make_session(return_audio: bool) -> AvatarSession:
            self.session = AvatarSession(self.config, self.engine, self.generator, self.portrait,
                                         session_id=f"cap-{self.index}", return_audio=return_audio)
            return self.session

        await self.client.setLocalDescription(await self.client.createOffer())
        answer = await self.peer.negotiate(self.client.localDescription.sdp, make_session)
        assert self.session is not None
        await self.session.start()
        await self.client.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        video = next(t for t in self.client.getTransceivers() if t.kind == "video")
        audio = next(t for t in self.client.getTransceivers() if t.kind == "audio")
        self.reader = asyncio.ensure_future(count_frames(video.receiver.track, self.arrivals))
        self.audio_reader = asyncio.ensure_future(count_frames(audio.receiver.track, []))

    async def aclose(self) -> None:
        for task in (self.reader, self.audio_reader):
            if task is not None:
                task.cancel()
        await self.client.close()
        if self.session is not None:
            await self.session.aclose()
        await self.peer.aclose()


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_n(n: int, config: AppConfig, engine: InferenceEngine, generator: Any, portrait: Any,
                args: argparse.Namespace) -> dict[str, Any]:
    audio = speech_48k(args.warmup + args.measure + 5)
    pairs = [Pair(i, config, engine, generator, portrait, audio) for i in range(n)]
    try:
        for pair in pairs:
            await pair.start()
        await asyncio.sleep(args.warmup)
        sent_before = [p.session.video_track.counters.frames for p in pairs if p.session]
        new_before = [p.session.video_track.counters.new for p in pairs if p.session]
        steps_before = engine.stats()["steps"]
        frames_before = engine.stats()["frames"]
        start, cpu_start = time.monotonic(), cpu_s()
        await asyncio.sleep(args.measure)
        end, cpu_end = time.monotonic(), cpu_s()
        stats = engine.stats()
        sent = [p.session.video_track.counters.frames - b for p, b in zip(pairs, sent_before, strict=True)
                if p.session]
        new = [p.session.video_track.counters.new - b for p, b in zip(pairs, new_before, strict=True)
               if p.session]
        received = [sum(1 for t in p.arrivals if start <= t < end) for p in pairs]
        session_stats = [p.session.stats() for p in pairs if p.session]
        steps = stats["steps"] - steps_before
        return {
            "n": n,
            "client_fps_min": round(min(received) / (end - start), 2),
            "client_fps_mean": round(float(np.mean(received)) / (end - start), 2),
            "server_fps_min": round(min(sent) / (end - start), 2),
            # Frames that were new (not a repeat of the previous one): the animation's own rate.
            "fresh_fps_min": round(min(new) / (end - start), 2),
            "step_ms_p50": stats["step_ms_p50"],
            "step_ms_p95": stats["step_ms_p95"],
            "mean_batch": round((stats["frames"] - frames_before) / steps, 2) if steps else 0.0,
            "late_frames": sum(s["late_frames"] for s in session_stats),
            "repeated_frames": sum(s["repeated_frames"] for s in session_stats),
            "delay_ms_max": max(s["delay_ms"] for s in session_stats),
            "cpu_cores_busy": round((cpu_end - cpu_start) / (end - start), 2),
        }
    finally:
        for pair in pairs:
            with contextlib.suppress(Exception):
                await pair.aclose()


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    base = load_config(args.config) if args.config else AppConfig()
    rows: list[dict[str, Any]] = []
    header = (f"{'size':>5} {'N':>3} {'client fps min':>14} {'mean':>6} {'server fps min':>14} {'fresh':>5} "
              f"{'step ms p50':>11} {'p95':>6} {'batch':>5} {'late':>5} {'repeats':>7} {'delay ms':>8} {'cores':>5}")
    print(header)
    with host_addresses(["127.0.0.1"]):
        for size in args.sizes:
            config = with_overrides(base, video={"fps": args.fps, "width_px": size, "height_px": size})
            generator = load_bench_generator(config, args.generator)
            portrait = await asyncio.to_thread(default_portrait, config)
            engine = InferenceEngine(generator, config.video)
            await engine.start()
            try:
                for n in range(1, args.max_sessions + 1):
                    row = {"size": size, **await run_n(n, config, engine, generator, portrait, args)}
                    rows.append(row)
                    print(f"{size:>5} {n:>3} {row['client_fps_min']:>14} {row['client_fps_mean']:>6} "
                          f"{row['server_fps_min']:>14} {row['fresh_fps_min']:>5} "
                          f"{row['step_ms_p50']:>11} {row['step_ms_p95']:>6} "
                          f"{row['mean_batch']:>5} {row['late_frames']:>5} {row['repeated_frames']:>7} "
                          f"{row['delay_ms_max']:>8} {row['cpu_cores_busy']:>5}", flush=True)
                    if min(row["client_fps_min"], row["server_fps_min"]) < 0.95 * args.fps:
                        break
                    if row["fresh_fps_min"] < 0.5 * args.fps:  # delivered, but mostly repeats
                        break
            finally:
                await engine.aclose()
    def held(size: int, key: str) -> int:
        ok = [r["n"] for r in rows if r["size"] == size and r[key] >= 0.95 * args.fps
              and min(r["client_fps_min"], r["server_fps_min"]) >= 0.95 * args.fps]
        return max(ok, default=0)

    delivered = {size: held(size, "client_fps_min") for size in args.sizes}
    fresh = {size: held(size, "fresh_fps_min") for size in args.sizes}
    print("sessions held at >= 95% of the configured fps, delivered: "
          + ", ".join(f"{s}x{s}: {n}" for s, n in delivered.items())
          + "; with >= 95% fresh frames: " + ", ".join(f"{s}x{s}: {n}" for s, n in fresh.items())
          + f" (generator {args.generator}, {os.cpu_count()} cores, load average before {args.load_before:.1f})")
    print(json.dumps({"rows": rows, "held_delivered": delivered, "held_fresh": fresh,
                      "generator": args.generator, "fps": args.fps}))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--generator", default="warp", choices=["warp", "loudness"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--max-sessions", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring, per N")
    parser.add_argument("--measure", type=float, default=4.0, help="seconds measured, per N")
    args = parser.parse_args()
    args.load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
