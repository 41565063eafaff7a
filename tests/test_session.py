from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from media_doubles import (
    LOUD_LEVEL,
    REST_LEVEL,
    ArrayAudioTrack,
    LoudnessGenerator,
    Recorder,
    connect_in_process,
    flat_portrait,
    tone_48k,
    wav_to_48k,
)

from avatar.clock import FakeClock
from avatar.config import AppConfig, VideoConfig
from avatar.engine import InferenceEngine
from avatar.session import AvatarSession
from signaling.ice import host_addresses

FPS = 25


@pytest.fixture
def small_config(config: AppConfig) -> AppConfig:
    return dataclasses.replace(config, video=VideoConfig(fps=FPS, width_px=64, height_px=64))


@pytest.fixture
async def engine(small_config: AppConfig) -> AsyncIterator[InferenceEngine]:
    engine = InferenceEngine(LoudnessGenerator(64, 64, FPS), small_config.video)
    await engine.start()
    yield engine
    await engine.aclose()


@pytest.fixture
def loopback() -> Iterator[None]:
    """ICE on 127.0.0.1 only (aioice skips loopback by default)."""
    with host_addresses(["127.0.0.1"]):
        yield


def make_session(config: AppConfig, engine: InferenceEngine, name: str, **kwargs: object) -> AvatarSession:
    return AvatarSession(config, engine, engine.generator, flat_portrait(), session_id=name, **kwargs)  # type: ignore[arg-type]


def level(frame: object) -> int:
    return int(np.median(frame.to_ndarray(format="rgb24")))  # type: ignore[attr-defined]


@pytest.mark.usefixtures("loopback")
async def test_speech_through_real_peers_moves_the_face_and_comes_back(
    small_config: AppConfig, engine: InferenceEngine, speech_wav: Path
) -> None:
    voice = wav_to_48k(speech_wav)  # 0.5 s silence, the sentence, 0.5 s silence
    source = ArrayAudioTrack(np.concatenate([voice, np.zeros(48_000, np.int16)]))
    session = make_session(small_config, engine, "peer-test")
    client, server = await connect_in_process(session, source)
    await session.start()
    video_in = audio_in = None
    try:
        tracks = {t.kind: t.receiver.track for t in client.getTransceivers()}
        video_in, audio_in = Recorder(tracks["video"]), Recorder(tracks["audio"])
        # A remote track does not end when the client's source does (only when the peer closes):
        # wait for the source to finish, then watch the face come to rest.
        deadline = time.monotonic() + 30
        while source.readyState == "live" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.8)
        stats = session.stats()
    finally:
        await session.aclose()
        await client.close()
        await server.aclose()
        for recorder in (video_in, audio_in):
            if recorder is not None:
                await recorder.aclose()

    assert video_in is not None and audio_in is not None
    times = np.array([t for t, _ in video_in.frames])
    pts = np.array([f.pts for _, f in video_in.frames])
    levels = np.array([level(f) for _, f in video_in.frames])
    # The configured frame rate, evenly spaced on the wire and in time.
    steady = times > times[0] + 1.0
    rate = (steady.sum() - 1) / (times[steady][-1] - times[steady][0])
    assert rate == pytest.approx(FPS, rel=0.08)
    spacing = np.diff(pts[steady])
    assert np.median(spacing) == 90_000 // FPS
    assert np.mean(spacing == 90_000 // FPS) > 0.9
    # Rest in the leading silence, moving with the speech, rest again after it.
    loud = levels > (REST_LEVEL + LOUD_LEVEL) / 2
    assert loud.sum() >= 15
    first_loud, last_loud = np.flatnonzero(loud)[[0, -1]]
    assert np.all(np.abs(levels[: first_loud - 1] - REST_LEVEL) < 12)  # (one frame may be rising)
    assert np.all(np.abs(levels[-10:] - REST_LEVEL) < 12)
    assert len(set((levels[first_loud:last_loud] // 20).tolist())) >= 3  # it moves, it is not a switch
    # The voice comes back on the audio track, in step with the face.
    returned = np.array([np.sqrt(np.mean(np.square(f.to_ndarray().astype(np.float64)))) for _, f in audio_in.frames])
    audio_times = np.array([t for t, _ in audio_in.frames])
    voiced = returned > 300
    assert voiced.sum() > 0.5 * (voice.size / 48_000 - 1.0) / 0.02
    first_voice = audio_times[np.flatnonzero(voiced)[0]]
    assert abs(times[first_loud] - first_voice) < 0.1
    assert stats["frames"] >= len(video_in.frames)
    assert stats["latency_ms"] < 200
    assert stats["reanchors"] <= 2


async def test_two_sessions_due_frames_come_out_of_one_step(small_config: AppConfig) -> None:
    # A step takes 30 ms: two sessions unbatched would need 60 ms per 40 ms frame period, so the
    # engine must batch their due frames to keep up (an idle engine serves a lone frame at once).
    generator = LoudnessGenerator(64, 64, FPS, step_s=0.03)
    engine = InferenceEngine(generator, small_config.video)
    await engine.start()
    sessions = [make_session(small_config, engine, f"batch-{i}") for i in range(2)]
    try:
        for i, session in enumerate(sessions):
            await session.start()
            session.attach_audio(ArrayAudioTrack(tone_48k(1.0, 0.1 * (i + 1))))
        await asyncio.gather(*(asyncio.wait_for(s.ended.wait(), 5) for s in sessions))
        stats = engine.stats()
        late = [s.stats()["late_frames"] for s in sessions]
    finally:
        for session in sessions:
            await session.aclose()
        await engine.aclose()
    seeds = {s.seed for s in sessions}
    pairs = [b for b in generator.batches if {seed for seed, _ in b} == seeds]
    assert len(pairs) >= 10  # due frames of both sessions stepped together
    assert stats["mean_batch"] > 1.5
    assert max(late) <= 10  # a few at the start, until the backlog turns into batches
    assert all(len({seed for seed, _ in b}) == len(b) for b in generator.batches)  # one frame per stream


async def test_idle_frame_before_any_audio_then_rest_after_the_voice_ends(
    small_config: AppConfig, engine: InferenceEngine
) -> None:
    session = make_session(small_config, engine, "rest")
    await session.start()
    track = session.video_track
    before = [level(await track.recv()) for _ in range(5)]
    assert before == [REST_LEVEL] * 5
    assert session.stats()["idle_frames"] == 5
    session.attach_audio(ArrayAudioTrack(tone_48k(0.6, 0.3)))
    seen = []
    while not session.ended.is_set():
        seen.append(level(await track.recv()))
    assert max(seen) > LOUD_LEVEL - 20
    after = [level(await track.recv()) for _ in range(int(0.6 * FPS))]
    assert after[-1] == REST_LEVEL  # silence was fed in: the face rests, frames keep coming
    stats = session.stats()
    assert stats["filled_frames"] > 0 and stats["input_ended"]
    assert not stats["speaking"]
    await session.aclose()


async def test_repeated_open_close_leaves_nothing_behind(small_config: AppConfig, engine: InferenceEngine) -> None:
    async def cycle(i: int) -> None:
        session = make_session(small_config, engine, f"cycle-{i}")
        await session.start()
        session.attach_audio(ArrayAudioTrack(tone_48k(1.0, 0.2), then_silence=True))
        for _ in range(2):
            await session.video_track.recv()
            assert session.audio_track is not None
            await session.audio_track.recv()
        await session.aclose()
        await session.aclose()  # idempotent
        assert session.ended.is_set()

    await cycle(0)  # warm-up: aiortc/av/asyncio pools start their threads once
    tasks_before = len(asyncio.all_tasks())
    threads_before = threading.active_count()
    started = time.monotonic()
    for i in range(1, 32):
        await cycle(i)
    await asyncio.sleep(0.05)
    assert len(asyncio.all_tasks()) == tasks_before
    assert threading.active_count() <= threads_before
    assert engine.handles == 0
    assert engine.stats()["queue_depth"] == 0
    assert time.monotonic() - started < 20


async def test_a_session_closed_before_it_started_is_clean(small_config: AppConfig, engine: InferenceEngine) -> None:
    session = make_session(small_config, engine, "never", return_audio=False)
    assert session.audio_track is None
    session.attach_audio(ArrayAudioTrack(tone_48k(0.2)))
    await session.aclose()
    await session.aclose()
    assert engine.handles == 0
    assert session.video_track.readyState == "ended"
    with pytest.raises(RuntimeError):
        session.attach_audio(ArrayAudioTrack(tone_48k(0.2)))


async def test_a_generator_slower_than_real_time_degrades_without_stalling(small_config: AppConfig) -> None:
    engine = InferenceEngine(LoudnessGenerator(64, 64, FPS, step_s=0.07), small_config.video)
    await engine.start()
    session = make_session(small_config, engine, "slow")
    try:
        await session.start()
        session.attach_audio(ArrayAudioTrack(tone_48k(2.0, 0.3)))
        started = time.monotonic()
        frames, depth = 0, 0
        while time.monotonic() - started < 1.6:
            await session.video_track.recv()
            frames += 1
            depth = max(depth, engine.stats()["queue_depth"])
        stats = session.stats()
    finally:
        await session.aclose()
        await engine.aclose()
    # The video keeps its rate (a frame or two go to re-phasing as the delay grows): repeats, no stall.
    assert frames == pytest.approx(1.6 * FPS, abs=5)
    assert stats["repeated_frames"] > 0
    assert stats["late_frames"] + stats["expired_windows"] > 0
    assert stats["delay_ms"] > 75  # the budget grew to what the generator needs
    assert depth <= engine.max_pending_per_stream


class QueueTrack(MediaStreamTrack):
    """An input track whose frames arrive when the test puts them (at the fake clock's time)."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.queue: asyncio.Queue[av.AudioFrame | None] = asyncio.Queue()
        self.index = 0

    def put_silence(self, count: int = 1) -> None:
        self.put_level(0, count)

    def put_level(self, value: int, count: int = 1) -> None:
        """`count` 20 ms packets of stereo 48 kHz, every sample `value`."""
        for _ in range(count):
            frame = av.AudioFrame.from_ndarray(np.full((1, 1920), value, np.int16), format="s16", layout="stereo")
            frame.sample_rate = 48_000
            frame.pts = self.index * 960
            self.index += 1
            self.queue.put_nowait(frame)

    async def recv(self) -> av.AudioFrame:
        frame = await self.queue.get()
        if frame is None:
            raise MediaStreamError
        return frame


async def test_timeline_anchors_re_anchors_late_audio_and_trims_excess_in_silence(
    small_config: AppConfig, engine: InferenceEngine
) -> None:
    clock = FakeClock(start_s=50.0)
    session = make_session(small_config, engine, "timeline", clock=clock)
    await session.start()
    track = QueueTrack()
    session.attach_audio(track)
    delay = session.delay_s
    assert delay == pytest.approx(0.04 + 0.025 + 0.01)  # lookahead + budget + (phase 0 + jitter)

    async def packet(after_s: float, count: int = 1) -> None:
        await clock.advance(after_s)
        track.put_silence(count)
        await asyncio.sleep(0.005)  # the consumer reads it (and the engine steps on its thread)

    await packet(0.02)  # the first packet (input 0..20 ms) arrives at 50.02
    assert session.timeline.offset_s == pytest.approx(50.02 - 0.02 + delay)
    for _ in range(20):  # steady packets: headroom stays at the delay, nothing moves
        await packet(0.02)
    assert session.stats()["reanchors"] == 0
    assert session.stats()["latency_ms"] == pytest.approx(delay * 1000, abs=1)

    offset = session.timeline.offset_s
    assert offset is not None
    await packet(0.06)  # 40 ms late: headroom 35 ms < lookahead + budget / 2
    assert session.stats()["reanchors"] == 1
    assert session.timeline.offset_s == pytest.approx(offset + 0.04)  # played 40 ms later from now on

    for _ in range(10):
        await packet(0.02)
    offset = session.timeline.offset_s
    assert offset is not None
    await packet(0.0, count=3)  # a burst with the previous packet: 20, 40 and 60 ms early ...
    for _ in range(60):  # ... and the next second of quiet packets keeps that 60 ms of excess
        await packet(0.02)
    stats = session.stats()
    assert stats["trims"] >= 1
    assert session.timeline.offset_s == pytest.approx(offset - 0.06, abs=0.002)  # back to the delay
    assert stats["latency_ms"] == pytest.approx(delay * 1000, abs=2)
    await session.aclose()
