"""The inference engine: one per device and process, batching every session that is due.

Sessions open a handle on the engine with their generator stream and submit one audio window per
video frame. A single worker task gathers, at each tick, the oldest pending window of every open
handle and runs ONE `generator.step(streams, windows)` for all of them on a dedicated worker thread,
so the event loop never runs model code and one stream is never stepped twice in one batch (its
next window waits for the next tick, keeping each stream causal and in order).

The tick is "as soon as the previous step is done": an idle engine serves a lone window at once
(lowest latency), a busy one batches everything that arrived during the previous step (throughput
grows with load instead of the queue). Work is refused, not queued without bound: a handle may hold
`max_pending_per_stream` windows and the engine `max_pending` in all; past that `submit` raises
`EngineOverloaded` and the caller drops that frame (its video track repeats the last one).

Everything that touches the generator (new streams, idle frames, steps, releases) runs on the same thread,
so a generator never sees two calls at once.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from avatar.clock import Clock, SessionClock
from avatar.config import VideoConfig, WindowConfig
from avatar.errors import AvatarError
from avatar.generators.base import FrameGenerator, GeneratedFrame, GeneratorStream
from avatar.windows import AudioWindow

log = logging.getLogger(__name__)

T = TypeVar("T")


class EngineOverloaded(AvatarError):
    """The engine refuses a window: too much work is already waiting."""


class EngineClosed(AvatarError):
    """The engine (or the handle) is closed or was never started."""


@dataclass
class _Job:
    window: AudioWindow
    future: asyncio.Future[GeneratedFrame]


@dataclass
class EngineHandle:
    """One session's registration: its generator stream and its queue of windows."""

    engine: InferenceEngine
    stream: GeneratorStream
    handle_id: int
    jobs: collections.deque[_Job] = field(default_factory=collections.deque)
    closed: bool = False
    steps: int = 0

    def submit_nowait(self, window: AudioWindow) -> asyncio.Future[GeneratedFrame]:
        """Queue `window`; the future resolves with its frame. Raises EngineOverloaded/EngineClosed."""
        return self.engine._submit(self, window)

    async def submit(self, window: AudioWindow) -> GeneratedFrame:
        """Queue `window` and wait for its frame."""
        return await self.submit_nowait(window)

    def withdraw(self, future: asyncio.Future[GeneratedFrame]) -> bool:
        """Take back a window that no step has taken yet (its future is cancelled); else False."""
        for job in self.jobs:
            if job.future is future:
                self.jobs.remove(job)
                future.cancel()
                return True
        return False

    @property
    def pending(self) -> int:
        return len(self.jobs)


class InferenceEngine:
    """Per-device inference worker; see the module docstring."""

    def __init__(
        self,
        generator: FrameGenerator,
        video: VideoConfig,
        *,
        clock: Clock | None = None,
        max_pending_per_stream: int | None = None,
        max_pending: int = 256,
        on_step: Callable[[int, float], None] | None = None,
    ) -> None:
        self.generator = generator
        self.on_step = on_step  # (batch size, step seconds) after each step: for metrics
        self.video = video
        self.clock: Clock = clock or SessionClock()
        # Half a second of frames per stream: beyond that the session is hopelessly behind anyway.
        self.max_pending_per_stream = max_pending_per_stream or max(2, video.fps // 2)
        self.max_pending = max_pending
        self._handles: dict[int, EngineHandle] = {}
        self._next_id = 0
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._worker: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._closed = False
        self._warmed = False
        self._in_flight: asyncio.Future[Any] | None = None
        # Load figures for stats().
        self._steps = 0
        self._frames = 0
        self._step_ms = collections.deque[float](maxlen=200)
        self._batches = collections.deque[int](maxlen=200)
        self._rejected = 0
        self._errors = 0

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker thread and task (idempotent)."""
        if self._closed:
            raise EngineClosed("the engine is closed")
        if self._worker is not None:
            return
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="avatar-engine")
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="avatar-engine")

    async def aclose(self) -> None:
        """Stop the worker, fail what is pending, close every handle and the thread; idempotent."""
        if self._closed:
            return
        self._closed = True
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            try:
                await worker
            except asyncio.CancelledError:
                pass
        if self._in_flight is not None:  # a step still running on the thread: let it finish
            try:
                await asyncio.shield(self._in_flight)
            except BaseException:  # noqa: BLE001 - its outcome no longer matters
                pass
        for handle in list(self._handles.values()):
            self.close(handle)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # -- handles ---------------------------------------------------------------------------------

    def open(self, stream: GeneratorStream) -> EngineHandle:
        """Register a session's stream; close the handle with `close()` when the session ends."""
        if self._closed or self._worker is None:
            raise EngineClosed("the engine is not running")
        self._next_id += 1
        handle = EngineHandle(self, stream, self._next_id)
        self._handles[handle.handle_id] = handle
        return handle

    def close(self, handle: EngineHandle) -> None:
        """Unregister a handle, cancel its pending windows and let the generator forget its stream
        (on the worker thread, after any step still using it); idempotent."""
        if handle.closed:
            return
        handle.closed = True
        self._handles.pop(handle.handle_id, None)
        while handle.jobs:
            job = handle.jobs.popleft()
            if not job.future.done():
                job.future.cancel()
        if self._executor is not None:
            self._executor.submit(self._release_stream, handle.stream)

    def _release_stream(self, stream: GeneratorStream) -> None:
        try:
            self.generator.release_stream(stream)
        except Exception:  # a generator's cleanup failing must not reach anyone's session
            log.exception("generator failed to release a stream")

    @property
    def handles(self) -> int:
        return len(self._handles)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the worker thread (new streams, idle frames): never beside a step."""
        if self._closed or self._executor is None:
            raise EngineClosed("the engine is not running")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def new_stream(self, portrait: Any, seed: int, session_number: int = 0) -> GeneratorStream:
        """A generator stream for one session; `session_number` is what its frames' watermark carries."""
        make = functools.partial(self.generator.new_stream, session_number=session_number)
        return await self.call(make, portrait, seed)

    async def warm_up(self, portrait: Any, windows: WindowConfig, steps: int = 3) -> None:
        """Once per engine: a few steps of a throwaway stream on silence. A generator's first steps
        are slow (allocations, caches); spent here, they are not mistaken for its pace by the first
        session's delay or by the step statistics."""
        if self._warmed:
            return
        self._warmed = True
        await self.call(self._warm_up_steps, portrait, windows, steps)

    def _warm_up_steps(self, portrait: Any, windows: WindowConfig, steps: int) -> None:
        stream = self.generator.new_stream(portrait, 0)
        silence = np.zeros(windows.total_samples, dtype=np.float32)
        for k in range(steps):
            self.generator.step([stream], [AudioWindow(k, silence, windows.past_samples, False, self.video.fps)])
        self.generator.release_stream(stream)

    # -- work ------------------------------------------------------------------------------------

    def _submit(self, handle: EngineHandle, window: AudioWindow) -> asyncio.Future[GeneratedFrame]:
        if handle.closed or self._closed or self._worker is None:
            raise EngineClosed("the engine handle is closed")
        if len(handle.jobs) >= self.max_pending_per_stream or self.queue_depth >= self.max_pending:
            self._rejected += 1
            raise EngineOverloaded(
                f"engine overloaded: {len(handle.jobs)} windows pending for this stream, "
                f"{self.queue_depth} in all"
            )
        future: asyncio.Future[GeneratedFrame] = asyncio.get_running_loop().create_future()
        handle.jobs.append(_Job(window, future))
        self._wakeup.set()
        return future

    @property
    def queue_depth(self) -> int:
        return sum(len(h.jobs) for h in self._handles.values())

    def _take_batch(self) -> list[tuple[EngineHandle, _Job]]:
        batch = []
        for handle in self._handles.values():
            while handle.jobs and handle.jobs[0].future.done():  # cancelled by its submitter
                handle.jobs.popleft()
            if handle.jobs:
                batch.append((handle, handle.jobs.popleft()))
        return batch

    def _step(self, streams: list[GeneratorStream], windows: list[AudioWindow]) -> tuple[list[GeneratedFrame], float]:
        started = time.perf_counter()
        frames = self.generator.step(streams, windows)
        return frames, (time.perf_counter() - started) * 1000.0

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while batch := self._take_batch():
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[tuple[EngineHandle, _Job]]) -> None:
        """One step for `batch`; its own frame, so that nothing of it (streams, handles, frames)
        stays referenced by the worker while it waits for the next one: a session closed meanwhile
        is freed with its session."""
        assert self._executor is not None
        streams = [handle.stream for handle, _ in batch]
        windows = [job.window for _, job in batch]
        self._in_flight = asyncio.get_running_loop().run_in_executor(self._executor, self._step, streams, windows)
        try:
            frames, step_ms = await asyncio.shield(self._in_flight)
        except asyncio.CancelledError:  # aclose(): it waits for the step still on the thread
            for _, job in batch:
                job.future.cancel()
            raise
        except Exception as exc:  # the generator failed: fail this batch, keep serving
            self._in_flight = None
            self._errors += 1
            log.exception("generator step failed for a batch of %d", len(batch))
            for _, job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        self._in_flight = None
        if len(frames) != len(batch):
            error = AvatarError(f"generator returned {len(frames)} frames for {len(batch)} windows")
            for _, job in batch:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        self._steps += 1
        self._frames += len(batch)
        self._step_ms.append(step_ms)
        self._batches.append(len(batch))
        if self.on_step is not None:
            self.on_step(len(batch), step_ms / 1000.0)
        for (handle, job), frame in zip(batch, frames, strict=True):
            handle.steps += 1
            if not job.future.done():
                job.future.set_result(frame)

    # -- load ------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Load of the engine: open streams, queue depth, last batch size and step time, totals."""
        return {
            "streams": self.handles,
            "queue_depth": self.queue_depth,
            "last_batch": self._batches[-1] if self._batches else 0,
            "last_step_ms": round(self._step_ms[-1], 3) if self._step_ms else 0.0,
            "mean_batch": round(sum(self._batches) / len(self._batches), 3) if self._batches else 0.0,
            "step_ms_p50": round(self._step_ms_quantile(0.5), 3),
            "step_ms_p95": round(self.step_ms_p95(), 3),
            "steps": self._steps,
            "frames": self._frames,
            "rejected": self._rejected,
            "errors": self._errors,
        }

    def step_ms_p95(self) -> float:
        """The 95th percentile of the recent step times (ms); 0 before the first step."""
        return self._step_ms_quantile(0.95)

    def _step_ms_quantile(self, q: float) -> float:
        steps = sorted(self._step_ms)
        return float(steps[min(len(steps) - 1, int(len(steps) * q))]) if steps else 0.0
