from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence

import pytest
import torch
from media_doubles import LOUD_LEVEL, REST_LEVEL, LoudnessGenerator, LoudnessStream, flat_portrait, window

from avatar.config import VideoConfig
from avatar.engine import EngineClosed, EngineOverloaded, InferenceEngine
from avatar.windows import AudioWindow

VIDEO = VideoConfig(fps=25, width_px=64, height_px=64)


@pytest.fixture
async def engine() -> AsyncIterator[InferenceEngine]:
    engine = InferenceEngine(LoudnessGenerator(step_s=0.02), VIDEO, max_pending_per_stream=4)
    await engine.start()
    yield engine
    await engine.aclose()


def engine_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("avatar-engine")]


async def test_frames_come_back_from_the_worker_thread(engine: InferenceEngine) -> None:
    generator = engine.generator
    assert isinstance(generator, LoudnessGenerator)
    handle = engine.open(await engine.new_stream(flat_portrait(), seed=1))
    quiet = await handle.submit(window(0))
    loud = await handle.submit(window(1, level=0.5))
    assert quiet.rgb.shape == (64, 64, 3)
    assert int(quiet.rgb[0, 0, 0]) == REST_LEVEL
    assert int(loud.rgb[0, 0, 0]) == LOUD_LEVEL
    assert generator.threads and all(name.startswith("avatar-engine") for name in generator.threads)
    assert threading.current_thread().name not in generator.threads


async def test_due_frames_of_two_sessions_come_out_of_one_step(engine: InferenceEngine) -> None:
    generator = engine.generator
    assert isinstance(generator, LoudnessGenerator)
    a = engine.open(await engine.new_stream(flat_portrait(), seed=1))
    b = engine.open(await engine.new_stream(flat_portrait(), seed=2))
    fa, fb = a.submit_nowait(window(0)), b.submit_nowait(window(0))
    await asyncio.gather(fa, fb)
    assert generator.batches[-1] == [(1, 0), (2, 0)]
    assert engine.stats()["last_batch"] == 2

    # While a step runs, what arrives waits and goes out together in the next one.
    c = engine.open(await engine.new_stream(flat_portrait(), seed=3))
    first = a.submit_nowait(window(1))
    await asyncio.sleep(0.005)  # the worker has taken `first` and is stepping
    later = [b.submit_nowait(window(1)), c.submit_nowait(window(0))]
    await asyncio.gather(first, *later)
    assert generator.batches[-2:] == [[(1, 1)], [(2, 1), (3, 0)]]


async def test_one_stream_is_never_stepped_twice_in_a_batch(engine: InferenceEngine) -> None:
    generator = engine.generator
    assert isinstance(generator, LoudnessGenerator)
    handle = engine.open(await engine.new_stream(flat_portrait(), seed=7))
    futures = [handle.submit_nowait(window(k)) for k in range(3)]
    frames = await asyncio.gather(*futures)
    assert [int(f.drive["index"]) for f in frames] == [0, 1, 2]
    assert generator.batches[-3:] == [[(7, 0)], [(7, 1)], [(7, 2)]]
    assert handle.steps == 3


async def test_work_past_the_cap_is_refused(engine: InferenceEngine) -> None:
    handle = engine.open(await engine.new_stream(flat_portrait(), seed=1))
    futures = [handle.submit_nowait(window(k)) for k in range(4)]
    with pytest.raises(EngineOverloaded):
        handle.submit_nowait(window(4))
    assert engine.stats()["rejected"] == 1
    assert engine.stats()["queue_depth"] >= 3
    await asyncio.gather(*futures)
    assert engine.stats()["queue_depth"] == 0
    await handle.submit(window(5))  # room again


async def test_closing_a_handle_cancels_its_waiting_windows(engine: InferenceEngine) -> None:
    handle = engine.open(await engine.new_stream(flat_portrait(), seed=1))
    futures = [handle.submit_nowait(window(k)) for k in range(3)]
    await asyncio.sleep(0.005)
    engine.close(handle)
    engine.close(handle)  # idempotent
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert any(isinstance(r, asyncio.CancelledError) for r in results)
    assert engine.handles == 0
    with pytest.raises(EngineClosed):
        handle.submit_nowait(window(9))


class FailingGenerator(LoudnessGenerator):
    def _generate(
        self, streams: Sequence[LoudnessStream], windows: Sequence[AudioWindow]
    ) -> tuple[torch.Tensor, list[dict[str, float]]]:
        if any(w.frame_index == 1 for w in windows):
            raise RuntimeError("boom")
        return super()._generate(streams, windows)


async def test_a_failing_step_fails_its_batch_and_the_engine_goes_on() -> None:
    engine = InferenceEngine(FailingGenerator(), VIDEO)
    await engine.start()
    try:
        handle = engine.open(await engine.new_stream(flat_portrait(), seed=1))
        await handle.submit(window(0))
        with pytest.raises(RuntimeError, match="boom"):
            await handle.submit(window(1))
        await handle.submit(window(2))
        assert engine.stats()["errors"] == 1
    finally:
        await engine.aclose()


async def test_aclose_is_idempotent_and_leaves_no_thread() -> None:
    before = len(engine_threads())
    engine = InferenceEngine(LoudnessGenerator(step_s=0.05), VIDEO)
    await engine.start()
    await engine.start()  # idempotent
    handle = engine.open(await engine.new_stream(flat_portrait(), seed=1))
    pending = handle.submit_nowait(window(0))
    await asyncio.sleep(0.01)  # a step is running on the thread
    await engine.aclose()
    await engine.aclose()
    assert pending.cancelled()
    assert len(engine_threads()) == before
    assert engine.handles == 0
    with pytest.raises(EngineClosed):
        engine.open(object())  # type: ignore[arg-type]
    stats = engine.stats()
    assert {"streams", "queue_depth", "last_batch", "last_step_ms", "step_ms_p95"} <= set(stats)
