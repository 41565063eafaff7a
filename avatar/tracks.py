"""The two outgoing media tracks of a session, paced by one session clock, and what joins them.

`MediaTimeline` is the one mapping both tracks read: input audio time `u` (seconds of received
voice since its first sample) is played out at clock time `u + offset_s`. The session sets the
offset when the voice starts and moves it only when it re-anchors (see session.py).

`AvatarVideoTrack` sends frame after frame on a grid of clock times `phase + m / fps`, where the
phase follows the timeline so that the frame made for audio window k (audio time k / fps) goes out at
exactly `k / fps + offset_s`. `recv()` sleeps until the next grid time and never sends early; the
pts is that time in 1/90000 from the session start, so it grows by exactly 90000 / fps per frame.
When `recv()` is called later than half a frame after its time (a stalled event loop, a slow
encoder), the track re-anchors: the missed grid times are dropped and the next frame goes out at the
next grid time after now, instead of catching up with a burst of frames (a recv up to half a frame
late is served at once and the grid kept). When the timeline re-phases, the next
frame waits for the next grid time at least one frame after the previous one (one longer interval,
never a shorter one). Each frame is the newest generated frame not ahead of its time; when the
generator is late the last frame is repeated, and before any frame exists the idle frame is sent.

`DelayedAudioTrack` sends 20 ms frames of 48 kHz mono s16 on the grid `t0 + n * 20 ms`; frame n
carries the received voice of input time `t - offset_s + lead_s` (the voice leads its frames by
`lead_s`, whose mouths read that far ahead), read from a small buffer, and silence
wherever nothing has arrived (before the voice, in gaps, after it). Its pts is `n * 960` in 1/48000;
it re-anchors after a stall like the video track. Both tracks start together from one `t0`.
"""

from __future__ import annotations

import collections
import fractions
import math
from dataclasses import dataclass

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from avatar.clock import Clock, SessionClock
from avatar.generators.base import GeneratedFrame

VIDEO_CLOCK_RATE = 90_000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)
AUDIO_RATE_HZ = 48_000
AUDIO_PTIME_S = 0.02
AUDIO_FRAME_SAMPLES = 960
AUDIO_TIME_BASE = fractions.Fraction(1, AUDIO_RATE_HZ)
_EPS = 1e-6


class MediaTimeline:
    """Input audio time -> output clock time: `t = u + offset_s` (None until the voice starts)."""

    def __init__(self, fps: int) -> None:
        self.fps = fps
        self.offset_s: float | None = None

    def anchor(self, offset_s: float) -> None:
        self.offset_s = offset_s

    def window_index_at(self, t_s: float) -> int | None:
        """Index of the audio window whose frame is due at clock time `t_s`."""
        if self.offset_s is None:
            return None
        return math.floor((t_s - self.offset_s) * self.fps + _EPS)

    def frame_time(self, index: int) -> float | None:
        """Clock time at which the frame of window `index` goes out."""
        if self.offset_s is None:
            return None
        return index / self.fps + self.offset_s

    def input_sample_at(self, t_s: float, rate_hz: int) -> int | None:
        """Index of the input sample (at `rate_hz`) played at clock time `t_s`."""
        if self.offset_s is None:
            return None
        return round((t_s - self.offset_s) * rate_hz)


class FrameStore:
    """Generated frames by window index; picks the newest one not ahead of a target index."""

    def __init__(self, idle_rgb: np.ndarray, max_frames: int = 64) -> None:
        self.idle_rgb = idle_rgb
        self.max_frames = max_frames
        self._frames: dict[int, GeneratedFrame] = {}
        self.last_index: int | None = None
        self.last_frame: GeneratedFrame | None = None

    def set_idle(self, rgb: np.ndarray) -> None:
        self.idle_rgb = rgb

    def put(self, index: int, frame: GeneratedFrame) -> None:
        if self.last_index is not None and index <= self.last_index:
            return  # its time has passed: a newer frame is already on screen
        self._frames[index] = frame
        if len(self._frames) > self.max_frames:
            del self._frames[min(self._frames)]

    def select(self, target: int | None) -> tuple[np.ndarray, str]:
        """The frame to show for `target`: ('new' | 'repeat' | 'idle'), newest-not-ahead first."""
        if target is not None and self._frames:
            ready = [i for i in self._frames if i <= target]
            if ready:
                index = max(ready)
                frame = self._frames[index]
                for i in ready:
                    del self._frames[i]
                self.last_index, self.last_frame = index, frame
                return frame.rgb, "new"
        if self.last_frame is not None:
            return self.last_frame.rgb, "repeat"
        return self.idle_rgb, "idle"

    def clear(self) -> None:
        self._frames.clear()
        self.last_frame = None
        self.last_index = None


@dataclass
class TrackCounters:
    frames: int = 0
    new: int = 0
    repeats: int = 0
    idle: int = 0
    stalls: int = 0


class _Pacer:
    """Grid pacing shared by both tracks: next time, stall re-anchoring, delivered-rate window."""

    def __init__(self, period_s: float, clock: Clock) -> None:
        self.period_s = period_s
        self.clock = clock
        self.t0: float | None = None
        self.phase_s: float | None = None
        self.last_t: float | None = None
        self.next_t: float | None = None
        self.stalls = 0
        self._sent = collections.deque[float](maxlen=256)

    def start(self, t0: float) -> None:
        if self.t0 is None:
            self.t0 = t0
            self.phase_s = t0
            self.next_t = t0

    def grid_at_or_after(self, x: float) -> float:
        assert self.phase_s is not None
        m = math.ceil((x - self.phase_s) / self.period_s - _EPS)
        return self.phase_s + m * self.period_s

    def set_phase(self, phase_s: float) -> None:
        """Move the grid; the next tick is the first grid time a full period after the last one."""
        self.phase_s = phase_s
        if self.last_t is not None:
            self.next_t = self.grid_at_or_after(self.last_t + self.period_s)
        elif self.next_t is not None:
            self.next_t = self.grid_at_or_after(self.next_t)

    async def wait_next(self) -> float:
        """Sleep until the next tick and return its time (re-anchored after a stall)."""
        if self.t0 is None:
            self.start(self.clock.now_s())
        assert self.next_t is not None
        t = self.next_t
        now = self.clock.now_s()
        if now - t > self.period_s / 2:
            # Stalled: drop the missed ticks and wait for the next grid time; no catching up.
            if self.last_t is not None:  # (the first tick of a track is not a stall)
                self.stalls += 1
            t = self.grid_at_or_after(now)
        if now < t:
            await self.clock.sleep_until(t)
        self.last_t = t
        self.next_t = t + self.period_s
        self._sent.append(t)
        return t

    def measured_rate(self, window_s: float = 2.0) -> float:
        """Ticks per second over the last `window_s` seconds of clock time."""
        if len(self._sent) < 2:
            return 0.0
        last = self._sent[-1]
        recent = [t for t in self._sent if t >= last - window_s]
        if len(recent) < 2 or recent[-1] <= recent[0]:
            return 0.0
        return (len(recent) - 1) / (recent[-1] - recent[0])


class AvatarVideoTrack(MediaStreamTrack):
    """Paced video of the animated portrait; see the module docstring."""

    kind = "video"

    def __init__(self, store: FrameStore, timeline: MediaTimeline, fps: int, *, clock: Clock | None = None) -> None:
        super().__init__()
        self.store = store
        self.timeline = timeline
        self.fps = fps
        self.clock: Clock = clock or SessionClock()
        self._pacer = _Pacer(1.0 / fps, self.clock)
        self.counters = TrackCounters()
        self._phase_offset: float | None = None

    def start(self, t0: float) -> None:
        """Set the session start (the first frame's time and pts 0); idempotent."""
        self._pacer.start(t0)

    def _follow_timeline(self) -> None:
        offset = self.timeline.offset_s
        if offset is not None and offset != self._phase_offset:
            self._phase_offset = offset
            self._pacer.set_phase(offset)

    async def recv(self) -> av.VideoFrame:
        t, rgb = await self.next_rgb()
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        assert self._pacer.t0 is not None
        frame.pts = round((t - self._pacer.t0) * VIDEO_CLOCK_RATE)
        frame.time_base = VIDEO_TIME_BASE
        return frame

    async def next_rgb(self) -> tuple[float, np.ndarray]:
        """The next frame as (its clock time, RGB uint8 (h, w, 3)), paced like `recv()`: for sinks
        that take pixels, not av frames (the virtual camera). Raises MediaStreamError once stopped."""
        if self.readyState != "live":
            raise MediaStreamError
        self._follow_timeline()
        t = await self._pacer.wait_next()
        if self.readyState != "live":
            raise MediaStreamError
        self._follow_timeline()  # the voice may have started while we slept
        rgb, kind = self.store.select(self.timeline.window_index_at(t))
        self.counters.frames += 1
        self.counters.stalls = self._pacer.stalls
        if kind == "new":
            self.counters.new += 1
        elif kind == "repeat":
            self.counters.repeats += 1
        else:
            self.counters.idle += 1
        return t, rgb

    def measured_fps(self, window_s: float = 2.0) -> float:
        return self._pacer.measured_rate(window_s)


class DelayedAudioTrack(MediaStreamTrack):
    """The received voice, delayed onto the timeline; silence where nothing has arrived."""

    kind = "audio"

    def __init__(
        self, timeline: MediaTimeline, *, clock: Clock | None = None, max_buffer_s: float = 3.0, lead_s: float = 0.0
    ) -> None:
        super().__init__()
        self.timeline = timeline
        self.lead_s = lead_s  # plays input time u at u + offset_s - lead_s (config.WindowConfig.voice_lead_s)
        self.clock: Clock = clock or SessionClock()
        self.max_buffer_samples = round(max_buffer_s * AUDIO_RATE_HZ)
        self._pacer = _Pacer(AUDIO_PTIME_S, self.clock)
        self._chunks = collections.deque[tuple[int, np.ndarray]]()  # (first input sample, int16 mono)
        self._buffered = 0
        self.counters = TrackCounters()
        self.silent_frames = 0

    def start(self, t0: float) -> None:
        self._pacer.start(t0)

    def write(self, start_sample: int, samples: np.ndarray) -> None:
        """Add received voice: 48 kHz mono int16 whose first sample is input sample `start_sample`."""
        if samples.size == 0:
            return
        self._chunks.append((start_sample, np.asarray(samples, dtype=np.int16).reshape(-1)))
        self._buffered += samples.size
        while self._buffered > self.max_buffer_samples and self._chunks:
            _, old = self._chunks.popleft()
            self._buffered -= old.size

    def clear(self) -> None:
        self._chunks.clear()
        self._buffered = 0

    def truncate(self, from_sample: int) -> None:
        """Forget the voice from input sample `from_sample` on (speech cut short: it stops now)."""
        kept = collections.deque[tuple[int, np.ndarray]]()
        for start, chunk in self._chunks:
            if start < from_sample:
                kept.append((start, chunk[: from_sample - start]))
        self._chunks = kept
        self._buffered = sum(chunk.size for _, chunk in kept)

    @property
    def buffered_s(self) -> float:
        return self._buffered / AUDIO_RATE_HZ

    def _read(self, first: int, count: int) -> np.ndarray:
        out = np.zeros(count, dtype=np.int16)
        end = first + count
        while self._chunks and self._chunks[0][0] + self._chunks[0][1].size <= first:
            _, old = self._chunks.popleft()  # played (or skipped) already
            self._buffered -= old.size
        for start, chunk in self._chunks:
            if start >= end:
                break
            lo, hi = max(first, start), min(end, start + chunk.size)
            if lo < hi:
                out[lo - first : hi - first] = chunk[lo - start : hi - start]
        return out

    async def recv(self) -> av.AudioFrame:
        t, samples = await self.next_samples()
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE_HZ
        assert self._pacer.t0 is not None
        frame.pts = round((t - self._pacer.t0) * AUDIO_RATE_HZ)
        frame.time_base = AUDIO_TIME_BASE
        return frame

    async def next_samples(self) -> tuple[float, np.ndarray]:
        """The next 20 ms as (its clock time, 48 kHz mono int16 (960,)), paced like `recv()`: for
        sinks that take samples (a sound output device). Raises MediaStreamError once stopped."""
        if self.readyState != "live":
            raise MediaStreamError
        t = await self._pacer.wait_next()
        if self.readyState != "live":
            raise MediaStreamError
        first = self.timeline.input_sample_at(t + self.lead_s, AUDIO_RATE_HZ)
        if first is None:
            samples = np.zeros(AUDIO_FRAME_SAMPLES, dtype=np.int16)
        else:
            samples = self._read(first, AUDIO_FRAME_SAMPLES)
        if not samples.any():
            self.silent_frames += 1
        self.counters.frames += 1
        self.counters.stalls = self._pacer.stalls
        return t, samples
