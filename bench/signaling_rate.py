"""Cost of the signaling surface of `avatar serve`: WebSocket hello round trips, page GETs, idle sockets.

Starts the server from a checkout (this one by default; `--repo DIR` runs another, e.g. an older
commit checked out with `git worktree`, to compare servers) on 127.0.0.1 with a free port, then:
- N sequential connections: open /ws, hello -> welcome, close; latency p50/p95 and rate;
- N sequential `GET /` on fresh TCP connections: latency p50/p95;
- K sockets opened and left idle: the server's RSS before and after, per socket.
Prints numbers; all traffic is to 127.0.0.1, bounded in count and time.

    .venv/bin/python bench/signaling_rate.py [--connections 300] [--idle 200] [--repo DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from websockets.asyncio.client import connect

REPO = Path(__file__).resolve().parent.parent


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _start_server(repo: Path, config: Path) -> tuple[subprocess.Popen[str], str]:
    python = repo / ".venv" / "bin" / "python"
    proc = subprocess.Popen(
        [str(python if python.exists() else sys.executable), "-m", "avatar", "serve", "--config", str(config)],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if "http://" in line:
            return proc, line[line.index("http://") :].split()[0]
    proc.kill()
    raise SystemExit("the server printed no URL")


async def _hello_round_trips(url: str, n: int) -> np.ndarray:
    ws_url = url.replace("http://", "ws://").rstrip("/") + "/ws"
    times = []
    for _ in range(n):
        started = time.perf_counter()
        async with connect(ws_url, proxy=None, compression=None) as ws:
            await ws.send(json.dumps({"type": "hello"}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert reply["type"] == "welcome", reply
        times.append(time.perf_counter() - started)
    return np.asarray(times) * 1000


async def _page_gets(url: str, n: int) -> np.ndarray:
    host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert data.startswith(b"HTTP/1.1 200"), data[:40]
        times.append(time.perf_counter() - started)
    return np.asarray(times) * 1000


async def _idle_sockets(url: str, pid: int, k: int) -> tuple[float, float, int]:
    ws_url = url.replace("http://", "ws://").rstrip("/") + "/ws"
    await asyncio.sleep(0.5)
    before = _rss_mb(pid)
    sockets = []
    for _ in range(k):
        try:
            sockets.append(await connect(ws_url, proxy=None, compression=None, open_timeout=5))
        except Exception:  # noqa: BLE001 - a server may refuse: count what stayed open
            break
    await asyncio.sleep(0.5)
    after = _rss_mb(pid)
    opened = len(sockets)
    for ws in sockets:
        await ws.close()
    return before, after, opened


def _summary(name: str, ms: np.ndarray) -> str:
    return (
        f"{name:<22} n={len(ms):4d}  p50 {np.percentile(ms, 50):6.2f} ms  p95 {np.percentile(ms, 95):6.2f} ms"
        f"  ({len(ms) / (ms.sum() / 1000):6.1f} per s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--idle", type=int, default=200)
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose `avatar serve` to measure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text(
            '[server]\nport = 0\nhost = "127.0.0.1"\n[webrtc]\nhost_addresses = ["127.0.0.1"]\n'
            "[video]\nwidth_px = 256\nheight_px = 256\n"
        )
        proc, url = _start_server(args.repo.resolve(), config)
        try:
            print(f"server {url} from {args.repo}  (pid {proc.pid}, RSS {_rss_mb(proc.pid):.0f} MB)")
            asyncio.run(_hello_round_trips(url, 20))  # warm up
            print(_summary("hello -> welcome", asyncio.run(_hello_round_trips(url, args.connections))))
            print(_summary("GET /", asyncio.run(_page_gets(url, args.connections))))
            before, after, opened = asyncio.run(_idle_sockets(url, proc.pid, args.idle))
            per = (after - before) * 1024 / max(opened, 1)
            print(f"{opened} idle sockets       RSS {before:.1f} -> {after:.1f} MB ({per:.1f} KB per socket)")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


if __name__ == "__main__":
    main()
