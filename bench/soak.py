"""Soak: many connect / offer / close cycles against `avatar serve`; memory, thread and fd slopes.

Starts the real server as a subprocess (`python -m avatar serve --config <temp> --port 0 --host
127.0.0.1`, ICE restricted to 127.0.0.1, 256x256 video) and runs `--cycles` cycles, `--concurrency`
at a time, each a real WebSocket client with a real aiortc peer (tests/ws_client.py). The cycles
take turns through these endings:

- `bye`:     hello, complete offer, first video frame, `bye`, wait for the server to close the socket;
- `drop`:    hello, complete offer, first video frame, then the TCP connection is aborted (no close
             handshake: a killed tab);
- `close`:   hello, complete offer, first video frame, a plain WebSocket close (no bye);
- `nooffer`: hello, then a plain close without an offer;
- `bad`:     hello, then a message the server refuses (unknown type): it answers an error and closes.

With `--hold-s S` each session lives S seconds after its first frame before it ends (a real session
lives long enough for its objects to reach the cycle collector's oldest generation).

Every `--sample-every` cycles (and before the first and after the last) the script waits until no
cycle runs, lets the server settle (`--settle-s`), and samples the server process from /proc: RSS
(VmRSS), its thread count (/proc/PID/task) and its open file descriptors (/proc/PID/fd). It prints
one line per sample, then the RSS slope in MB per 100 cycles by least squares over the samples after
the warm-up (`--warmup`, a fraction of the cycles), and threads and fds at the start, after the
warm-up and at the end (the first sessions start pools that stay: the engine's worker thread, the
default executor aiortc encodes on, up to its cap), and one JSON line with all of it.

Growth is not always a leak: objects in reference cycles wait for the cycle collector's rare full
collections, and glibc keeps freed memory in its arenas (`--malloc-arena-max 2` runs the server
with fewer of them, to compare).

Traffic goes to 127.0.0.1 only; every cycle has a time limit (`--cycle-timeout-s`), the whole run
too (`--max-s`), and the server is always stopped (SIGTERM, then SIGKILL; on Linux it also gets
SIGTERM when this script dies). Numbers only: nothing here asserts a timing.

    .venv/bin/python bench/soak.py --cycles 300
    .venv/bin/python bench/soak.py --cycles 1000 --concurrency 2 --sample-every 50
    .venv/bin/python bench/soak.py --cycles 400 --concurrency 2 --hold-s 1   # sessions that live a while
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.ws_client import Client  # noqa: E402

KINDS = ("bye", "drop", "close", "nooffer", "bad")


# -- the server process -----------------------------------------------------------------------------


@dataclass
class Sample:
    cycle: int
    rss_mb: float
    threads: int
    fds: int
    elapsed_s: float


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the soak script dies, however it dies (Linux)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def proc_sample(pid: int, cycle: int, t0: float) -> Sample:
    rss_kb = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
                break
    threads = len(os.listdir(f"/proc/{pid}/task"))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return Sample(cycle, rss_kb / 1024.0, threads, fds, time.monotonic() - t0)


@contextlib.contextmanager
def spawned_server(args: argparse.Namespace) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """`avatar serve` on 127.0.0.1 with a temporary config; yields (process, URL, log path)."""
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        cfg = Path(tmp) / "soak.toml"
        cfg.write_text(
            "[server]\n"
            f"max_sessions = {max(8, 2 * args.concurrency)}\n"
            "\n[webrtc]\n"
            'host_addresses = ["127.0.0.1"]\n'
            "\n[video]\n"
            f"width_px = {args.size}\nheight_px = {args.size}\n"
        )
        log_path = Path(args.server_log) if args.server_log else Path(tmp) / "server.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if args.malloc_arena_max:
            env["MALLOC_ARENA_MAX"] = str(args.malloc_arena_max)
        command = [
            str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable,
            "-m", "avatar", "serve", "--config", str(cfg), "--port", "0", "--host", "127.0.0.1",
            "--log-level", args.log_level,
        ]
        with open(log_path, "wb") as log_file:
            # The server writes to a file, never to a pipe nobody drains (a full pipe would block it).
            process = subprocess.Popen(
                command, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent
            )
            try:
                url = None
                deadline = time.monotonic() + 180
                while url is None and time.monotonic() < deadline and process.poll() is None:
                    for line in log_path.read_text(errors="replace").splitlines():
                        if "http://" in line:
                            url = line[line.index("http://") :].split()[0]
                            break
                    else:
                        time.sleep(0.2)
                if url is None:
                    tail = log_path.read_text(errors="replace")[-3000:]
                    raise SystemExit(f"avatar serve did not print its URL (exit {process.poll()}):\n{tail}")
                if not url.startswith("http://127.0.0.1:"):
                    raise SystemExit(f"the server listens on {url}, not on 127.0.0.1")
                yield process, url, log_path
            finally:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    try:
                        process.wait(15)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait(5)


# -- one cycle --------------------------------------------------------------------------------------


async def first_frame(client: Client, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not client.received.video_times:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def cycle(url: str, kind: str, args: argparse.Namespace, outcomes: Counter[str]) -> None:
    client = Client(url)
    try:
        async with asyncio.timeout(args.cycle_timeout_s):
            await client.__aenter__()
            welcome = await client.hello()
            if welcome.get("type") != "welcome":
                outcomes[f"{kind}:no-welcome:{welcome.get('code')}"] += 1
                return
            if kind == "nooffer":
                outcomes[kind] += 1
                return
            if kind == "bad":
                await client.send({"type": "no-such-message"})
                reply = await client.recv(timeout=10)
                closed = await client.closed(timeout=10)
                outcomes[f"bad:{reply.get('code')}:{'closed' if closed else 'open'}"] += 1
                return
            answer = await client.offer()
            if answer.get("type") != "answer":
                outcomes[f"{kind}:no-answer:{answer.get('code')}"] += 1
                return
            got = await first_frame(client, args.frame_timeout_s)
            outcomes["frame" if got else "no-frame"] += 1
            if args.hold_s > 0:
                await asyncio.sleep(args.hold_s)
            if kind == "bye":
                await client.send({"type": "bye"})
                closed = await client.closed(timeout=10)
                outcomes["bye:closed" if closed else "bye:open"] += 1
            elif kind == "drop":
                assert client.ws is not None
                client.ws.transport.abort()
                outcomes[kind] += 1
            else:
                outcomes[kind] += 1
    except TimeoutError:
        outcomes[f"{kind}:timeout"] += 1
    except Exception as exc:  # noqa: BLE001 - counted and printed, the soak goes on
        outcomes[f"{kind}:{type(exc).__name__}"] += 1
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 10)


# -- the run ----------------------------------------------------------------------------------------


def slope_per_100(samples: list[Sample]) -> float | None:
    """Least-squares slope of RSS over cycles, in MB per 100 cycles."""
    if len(samples) < 2:
        return None
    xs = [s.cycle for s in samples]
    ys = [s.rss_mb for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return 100.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


async def settle_and_sample(pid: int, done: int, t0: float, settle_s: float) -> Sample:
    await asyncio.sleep(settle_s)
    return proc_sample(pid, done, t0)


async def run(args: argparse.Namespace) -> dict[str, object]:
    outcomes: Counter[str] = Counter()
    samples: list[Sample] = []
    with spawned_server(args) as (process, url, log_path):
        pid = process.pid
        t0 = time.monotonic()
        print(f"server pid {pid} at {url} (log {log_path})", flush=True)
        print(f"{'cycle':>6} {'rss_mb':>8} {'threads':>7} {'fds':>5} {'elapsed_s':>9}  outcomes", flush=True)

        def show(s: Sample) -> None:
            top = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
            print(f"{s.cycle:>6} {s.rss_mb:>8.1f} {s.threads:>7} {s.fds:>5} {s.elapsed_s:>9.1f}  {top}", flush=True)

        samples.append(await settle_and_sample(pid, 0, t0, args.settle_s))
        show(samples[-1])
        done = 0
        while done < args.cycles:
            if time.monotonic() - t0 > args.max_s:
                print(f"stopping early: --max-s {args.max_s} reached", flush=True)
                break
            if process.poll() is not None:
                print(f"the server exited with {process.returncode}", flush=True)
                break
            batch = min(args.concurrency, args.cycles - done)
            kinds = [args.kinds[(done + i) % len(args.kinds)] for i in range(batch)]
            await asyncio.gather(*(cycle(url, kind, args, outcomes) for kind in kinds))
            done += batch
            if done % args.sample_every < batch or done == args.cycles:
                samples.append(await settle_and_sample(pid, done, t0, args.settle_s))
                show(samples[-1])
        if process.poll() is None:
            # A last, longer settle: what is still there now is retained, not in flight.
            samples.append(await settle_and_sample(pid, done, t0, max(args.settle_s, 5.0)))
            print("after a longer settle:", flush=True)
            show(samples[-1])
    warm = max(1, round(args.warmup * done))
    after = [s for s in samples if s.cycle >= warm] or samples[-1:]
    slope = slope_per_100(after)
    first, warmed, last = samples[0], after[0], samples[-1]
    result: dict[str, object] = {
        "cycles": done,
        "concurrency": args.concurrency,
        "kinds": args.kinds,
        "warmup_cycles": warm,
        "rss_slope_mb_per_100": None if slope is None else round(slope, 3),
        "rss_start_mb": round(first.rss_mb, 1),
        "rss_after_warmup_mb": round(warmed.rss_mb, 1),
        "rss_end_mb": round(last.rss_mb, 1),
        "threads_start": first.threads,
        "threads_after_warmup": warmed.threads,
        "threads_max": max(s.threads for s in samples),
        "threads_end": last.threads,
        "fds_start": first.fds,
        "fds_after_warmup": warmed.fds,
        "fds_max": max(s.fds for s in samples),
        "fds_end": last.fds,
        "seconds": round(last.elapsed_s, 1),
        "outcomes": dict(sorted(outcomes.items())),
    }
    print()
    print(f"cycles {done} (concurrency {args.concurrency}), warm-up {warm} cycles, {last.elapsed_s:.0f} s")
    print(f"RSS {first.rss_mb:.1f} MB at start, {warmed.rss_mb:.1f} MB after warm-up (cycle {warmed.cycle}), "
          f"{last.rss_mb:.1f} MB at the end")
    print("RSS slope after warm-up: " + ("n/a" if slope is None else f"{slope:.3f} MB per 100 cycles"))
    print(f"threads {first.threads} at start, {warmed.threads} after warm-up, {last.threads} at the end "
          f"(max {result['threads_max']})")
    print(f"fds {first.fds} at start, {warmed.fds} after warm-up, {last.fds} at the end (max {result['fds_max']})")
    print(json.dumps(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=1, help="cycles run at a time")
    parser.add_argument("--sample-every", type=int, default=50, help="cycles between samples")
    parser.add_argument("--settle-s", type=float, default=2.0, help="quiet time before each sample")
    parser.add_argument("--warmup", type=float, default=0.1, help="fraction of the cycles left out of the slope")
    parser.add_argument("--frame-timeout-s", type=float, default=10.0, help="wait for the first video frame")
    parser.add_argument("--hold-s", type=float, default=0.0,
                        help="keep each session this long after its first frame (long-lived objects, as in real use)")
    parser.add_argument("--cycle-timeout-s", type=float, default=40.0)
    parser.add_argument("--max-s", type=float, default=4 * 3600.0, help="stop after this long in all")
    parser.add_argument("--kinds", default=",".join(KINDS), help="the endings the cycles take in turn")
    parser.add_argument("--size", type=int, default=256, help="video width and height")
    parser.add_argument("--malloc-arena-max", type=int, default=0, help="MALLOC_ARENA_MAX for the server (0: unset)")
    parser.add_argument("--log-level", default="WARNING", help="the server's --log-level")
    parser.add_argument("--server-log", help="keep the server's output in this file")
    args = parser.parse_args()
    if args.cycles < 1 or args.concurrency < 1 or args.sample_every < 1:
        parser.error("--cycles, --concurrency and --sample-every must be at least 1")
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not args.kinds or any(k not in KINDS for k in args.kinds):
        parser.error(f"--kinds takes a comma-separated list of {', '.join(KINDS)}")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
