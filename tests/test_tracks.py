from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from avatar.clock import FakeClock
from avatar.generators.base import GeneratedFrame
from avatar.tracks import AvatarVideoTrack, DelayedAudioTrack, FrameStore, MediaTimeline

FPS = 25
PERIOD = 1 / FPS


def solid(level: int) -> GeneratedFrame:
    return GeneratedFrame(np.full((16, 16, 3), level, dtype=np.uint8))


class Receiver:
    """Reads a track the way aiortc's sender does: recv() again as soon as a frame is out."""

    def __init__(self, track: AvatarVideoTrack | DelayedAudioTrack, clock: FakeClock) -> None:
        self.track = track
        self.clock = clock
        self.got: list[tuple[float, int, Any]] = []  # (clock time at return, pts, frame)
        self.paused = asyncio.Event()
        self.paused.set()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await self.paused.wait()
            try:
                frame = await self.track.recv()
            except MediaStreamError:
                return
            self.got.append((self.clock.now_s(), int(frame.pts or 0), frame))

    def levels(self) -> list[int]:
        return [int(f.to_ndarray(format="rgb24")[0, 0, 0]) for _, _, f in self.got]  # type: ignore[attr-defined]

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start_s=100.0)


@pytest.fixture
async def video(clock: FakeClock) -> AsyncIterator[tuple[AvatarVideoTrack, FrameStore, MediaTimeline, Receiver]]:
    timeline = MediaTimeline(FPS)
    store = FrameStore(np.full((16, 16, 3), 7, dtype=np.uint8))
    track = AvatarVideoTrack(store, timeline, FPS, clock=clock)
    track.start(clock.now_s())
    receiver = Receiver(track, clock)
    yield track, store, timeline, receiver
    track.stop()
    await receiver.close()


async def test_video_is_paced_by_frame_index_and_never_early(video, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    track, _, _, receiver = video
    await clock.advance(1.0 - 1e-9)
    times = [t for t, _, _ in receiver.got]
    pts = [p for _, p, _ in receiver.got]
    assert len(times) == 25
    assert np.allclose(np.diff(times), PERIOD)
    assert all(t >= 100.0 + i * PERIOD - 1e-9 for i, t in enumerate(times))  # never before its time
    assert pts == [i * 3600 for i in range(25)]
    assert receiver.levels() == [7] * 25  # no audio yet: the idle frame
    assert track.counters.idle == 25
    assert track.measured_fps() == pytest.approx(25.0)


async def test_video_re_anchors_after_a_stall_instead_of_bursting(video, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    track, _, _, receiver = video
    await clock.advance(0.2 - 1e-9)
    assert len(receiver.got) == 5
    receiver.paused.clear()  # the sender is stuck (a long encode, a blocked loop) ...
    await clock.advance(0.05)  # ... (one frame is already on its way)
    clock.jump(0.5)  # ... for half a second
    receiver.paused.set()
    await clock.advance(0.4)
    times = np.array([t for t, _, _ in receiver.got])
    pts = np.array([p for _, p, _ in receiver.got])
    after = times[times > 100.3]
    assert len(after) == pytest.approx(0.4 / PERIOD, abs=1.5)  # real rate, no catch-up burst
    assert np.all(np.diff(times) >= PERIOD - 1e-9)
    assert np.all(np.diff(pts) > 0)
    assert np.all(np.diff(pts)[-5:] == 3600)
    assert track.counters.stalls == 1


async def test_video_repeats_the_last_frame_when_the_generator_is_late(video, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    track, store, timeline, receiver = video
    timeline.anchor(100.0)  # window k goes out at 100 + k / 25
    for k in range(3):
        store.put(k, solid(10 + k))
    await clock.advance(5 * PERIOD - 1e-9)  # ticks for windows 0..4; 3 and 4 are late
    assert receiver.levels()[1:] == [11, 12, 12, 12]  # (the first frame went out before the anchor)
    store.put(3, solid(13))  # too late for its own tick: the next one shows the newest frame
    store.put(5, solid(15))
    store.put(6, solid(16))  # ahead of time: held back until its tick
    await clock.advance(PERIOD)
    assert receiver.levels()[-1] == 15
    await clock.advance(PERIOD)
    assert receiver.levels()[-1] == 16
    await clock.advance(PERIOD)
    assert receiver.levels()[-1] == 16  # late again: repeat, never stall
    assert track.counters.repeats == 3


async def test_video_follows_the_timeline_phase_without_shortening_a_frame(video, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    _, store, timeline, receiver = video
    await clock.advance(0.1 - 1e-9)  # ticks at 100.00, 100.04, 100.08
    timeline.anchor(100.013)  # the voice started: frames now go out at 100.013 + k / 25
    store.put(2, solid(50))
    await clock.advance(0.2)
    times = [round(t - 100.0, 4) for t, _, _ in receiver.got]
    # The frame of 0.12 was already waiting; the next one goes to the first grid time a full frame
    # after it, and every frame after that is on the new grid.
    assert times[:5] == [0.0, 0.04, 0.08, 0.12, 0.173]
    assert all(round((t - 0.013) / PERIOD, 6).is_integer() for t in times[4:])
    assert receiver.levels()[4] == 50  # window 4 is due at 100.173; the newest ready is 2


async def test_stopped_video_track_raises_media_stream_error(clock: FakeClock) -> None:
    track = AvatarVideoTrack(FrameStore(np.zeros((16, 16, 3), np.uint8)), MediaTimeline(FPS), FPS, clock=clock)
    track.start(clock.now_s())
    await track.recv()
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


async def test_audio_track_plays_the_voice_at_its_timeline_time(clock: FakeClock) -> None:
    timeline = MediaTimeline(FPS)
    track = DelayedAudioTrack(timeline, clock=clock)
    track.start(clock.now_s())
    receiver = Receiver(track, clock)
    await clock.advance(0.1 - 1e-9)
    assert len(receiver.got) == 5
    assert all(not f.to_ndarray().any() for _, _, f in receiver.got)  # type: ignore[attr-defined]
    # The voice arrives; input time u plays at u + 100.16 (a 60 ms delay after it "arrived").
    timeline.anchor(100.16)
    voice = (np.arange(48_000 // 5) % 1000 + 1).astype(np.int16)  # 200 ms of a ramp, never 0
    track.write(0, voice)
    await clock.advance(0.5)
    frames = receiver.got
    pts = [p for _, p, _ in frames]
    assert np.all(np.diff(pts) == 960)
    out = np.concatenate([f.to_ndarray().reshape(-1) for _, _, f in frames])  # type: ignore[attr-defined]
    start = round(0.16 * 48_000)
    assert not out[:start].any()
    assert np.array_equal(out[start : start + voice.size], voice)
    assert not out[start + voice.size :].any()  # nothing more arrived: silence, no stall
    assert len(frames) == 30
    assert track.silent_frames == 30 - 10
    track.stop()
    await receiver.close()


async def test_audio_track_leads_its_frames_by_lead_s(clock: FakeClock) -> None:
    timeline = MediaTimeline(FPS)
    timeline.anchor(100.16)
    track = DelayedAudioTrack(timeline, clock=clock, lead_s=0.02)
    track.start(clock.now_s())
    voice = (np.arange(48_000 // 5) % 1000 + 1).astype(np.int16)
    track.write(0, voice)
    receiver = Receiver(track, clock)
    await clock.advance(0.5 - 1e-9)
    out = np.concatenate([f.to_ndarray().reshape(-1) for _, _, f in receiver.got])  # type: ignore[attr-defined]
    start = round((0.16 - 0.02) * 48_000)  # input time 0 plays at 100.14, one packet before the frames' 100.16
    assert not out[:start].any() and np.array_equal(out[start : start + voice.size], voice)
    track.stop()
    await receiver.close()


async def test_audio_track_skips_after_a_stall_and_drops_what_it_skipped(clock: FakeClock) -> None:
    timeline = MediaTimeline(FPS)
    timeline.anchor(100.0)
    track = DelayedAudioTrack(timeline, clock=clock)
    track.start(clock.now_s())
    for k in range(50):  # one second, in 20 ms packets
        track.write(k * 960, np.ones(960, dtype=np.int16))
    receiver = Receiver(track, clock)
    await clock.advance(0.1 - 1e-9)
    receiver.paused.clear()
    await clock.advance(0.02)
    clock.jump(0.3)
    receiver.paused.set()
    await clock.advance(0.2)
    times = np.array([t for t, _, _ in receiver.got])
    assert np.all(np.diff(times) >= 0.02 - 1e-9)
    assert track.counters.stalls == 1
    assert track.buffered_s < 0.6  # what was skipped is gone
    track.stop()
    await receiver.close()
