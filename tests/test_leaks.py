"""Connect / offer / close cycles leave nothing behind in the server (issue 7).

An in-process SignalingServer (256x256, ICE on 127.0.0.1) serves 20 cycles of real clients (websockets
+ an aiortc peer, tests/ws_client.py) that end in every way a client can: bye, a dropped TCP
connection, a plain close, a close before any offer, a refused message. The clients run in a
subprocess, so every RTCPeerConnection in this process is one of the server's. After three warm-up
cycles (the engine's worker thread, the default executor's threads, first-use caches) the threads
and open fds are noted, the cycles run with the cycle collector off, and once the server has settled:

- what reference counting alone freed is counted (a closed session that sits in a reference cycle
  waits for a full collection, which a busy server runs rarely: its memory, codec contexts and
  buffers pile up meanwhile, issue 7's growth);
- then, after gc.collect(), nothing of a session may be left at all (sessions, peers, connections,
  the generator's per-session streams), and threads and fds are back where they were.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiortc import RTCPeerConnection

from avatar.config import AppConfig, with_overrides
from avatar.generators.warp import WarpStream
from avatar.session import AvatarSession
from signaling.peer import Peer
from signaling.server import SignalingServer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
WARM_UP_CYCLES = 3
CYCLES = 20
WATCHED: dict[str, type] = {
    "AvatarSession": AvatarSession,
    "Peer": Peer,
    "RTCPeerConnection": RTCPeerConnection,
    "WarpStream": WarpStream,
}

# The client side, run in a subprocess: `python -c CLIENTS URL N`.
CLIENTS = """
import asyncio, contextlib, sys, time
sys.path.insert(0, sys.argv[3])
from tests.ws_client import Client

async def cycle(url, kind):
    client = Client(url)
    try:
        async with asyncio.timeout(30):
            await client.__aenter__()
            assert (await client.hello())["type"] == "welcome"
            if kind == "nooffer":
                return
            if kind == "bad":
                await client.send({"type": "no-such-message"})
                assert (await client.recv())["type"] == "error"
                await client.closed()
                return
            assert (await client.offer())["type"] == "answer"
            deadline = time.monotonic() + 10
            while not client.received.video_times and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert client.received.video_times, "no video frame arrived"
            if kind == "bye":
                await client.send({"type": "bye"})
                await client.closed()
            elif kind == "drop":
                client.ws.transport.abort()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 10)

async def main(url, n):
    kinds = ["bye", "drop", "close", "nooffer", "bad"]
    for i in range(n):
        await cycle(url, kinds[i % len(kinds)])

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def leak_config() -> AppConfig:
    return with_overrides(
        AppConfig(),
        server={"host": "127.0.0.1", "port": 0, "max_sessions": 4, "drain_timeout_s": 2.0},
        webrtc={"host_addresses": ["127.0.0.1"]},
        video={"width_px": 256, "height_px": 256, "fps": 25},
    )


@dataclass
class Soak:
    threads_start: list[str] = field(default_factory=list)
    threads_end: list[str] = field(default_factory=list)
    os_threads_start: int = 0
    os_threads_end: int = 0
    fds_start: int = 0
    fds_end: int = 0
    freed_by_refcount: dict[str, int] = field(default_factory=dict)  # alive, cycle collector off
    after_collect: dict[str, int] = field(default_factory=dict)  # alive after gc.collect()
    created: int = 0  # AvatarSessions made during the measured cycles


def alive() -> dict[str, int]:
    """Objects of the watched classes in this process, by exact type (isinstance() on every object
    would also touch lazy module attributes such as torch's deprecated ones)."""
    names = {kind: name for name, kind in WATCHED.items()}
    counts = Counter(names[type(obj)] for obj in gc.get_objects() if type(obj) in names)
    return {name: counts[name] for name in WATCHED}


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def run_clients(url: str, n: int) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENTS, url, str(n), str(REPO), cwd=REPO, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), 40 + 10 * n)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, stderr.decode(errors="replace")[-3000:]


async def settle(srv: SignalingServer) -> None:
    """Until no client or session is left, then a moment for aiortc's own teardown."""
    deadline = time.monotonic() + 15
    while (srv.clients or srv.active_sessions) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert srv.clients == 0 and srv.active_sessions == 0, (srv.clients, srv.active_sessions)
    await asyncio.sleep(1.5)


async def soak() -> Soak:
    result = Soak()
    made = 0
    original_init = AvatarSession.__init__

    srv = SignalingServer(leak_config())
    await srv.start()
    try:
        await run_clients(srv.url, WARM_UP_CYCLES)
        await settle(srv)
        gc.collect()
        result.threads_start = sorted(t.name for t in threading.enumerate())
        result.os_threads_start, result.fds_start = os_threads(), open_fds()

        def counting_init(self: AvatarSession, *args: object, **kwargs: object) -> None:
            nonlocal made
            made += 1
            original_init(self, *args, **kwargs)  # type: ignore[arg-type]

        AvatarSession.__init__ = counting_init  # type: ignore[method-assign]
        gc.disable()
        try:
            await run_clients(srv.url, CYCLES)
            await settle(srv)
            result.freed_by_refcount = alive()
        finally:
            gc.enable()
            AvatarSession.__init__ = original_init  # type: ignore[method-assign]
        gc.collect()
        result.after_collect = alive()
        result.threads_end = sorted(t.name for t in threading.enumerate())
        result.os_threads_end, result.fds_end = os_threads(), open_fds()
    finally:
        await srv.aclose()
    result.created = made
    return result


@pytest.fixture(scope="module")
def soaked() -> Soak:
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc")
    return asyncio.run(soak())


def test_the_cycles_made_sessions(soaked: Soak) -> None:
    assert soaked.created == CYCLES * 3 // 5  # bye, drop and close cycles offered


def test_nothing_of_a_session_is_left_after_a_collection(soaked: Soak) -> None:
    assert soaked.after_collect == dict.fromkeys(WATCHED, 0)


def test_sessions_and_peers_are_freed_by_reference_counting(soaked: Soak) -> None:
    left = soaked.freed_by_refcount
    assert (left["AvatarSession"], left["Peer"], left["WarpStream"]) == (0, 0, 0), left


def test_peer_connections_are_freed_by_reference_counting(soaked: Soak) -> None:
    assert soaked.freed_by_refcount["RTCPeerConnection"] == 0, soaked.freed_by_refcount


def test_threads_and_fds_come_back(soaked: Soak) -> None:
    def named(threads: list[str]) -> list[str]:  # the default executor's pool may grow up to its cap
        return [name for name in threads if not name.startswith("asyncio_")]

    pool_growth = len(soaked.threads_end) - len(named(soaked.threads_end)) - (
        len(soaked.threads_start) - len(named(soaked.threads_start))
    )
    assert named(soaked.threads_end) == named(soaked.threads_start)
    assert soaked.os_threads_end - soaked.os_threads_start <= max(0, pool_growth)
    assert soaked.fds_end <= soaked.fds_start
