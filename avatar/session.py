"""One live session: a peer's voice in, the talking portrait (and the voice, in sync) out.

Chain: received audio track -> `AudioNormalizer` (16 kHz mono int16) -> `AudioWindower` (one
window per video frame) -> `InferenceEngine` (batched with the other sessions) -> `FrameStore` ->
`AvatarVideoTrack`; the same received audio, as 48 kHz mono, -> `DelayedAudioTrack`.

How the video clock and the arriving voice line up
--------------------------------------------------
Input time `u` counts the received voice from its first sample. Window k of the windower stands at
`u = k / fps` and needs the audio up to `k / fps + lookahead_s`. One `MediaTimeline` maps input time
to clock time, `t = u + offset_s`, and both tracks read it: the video frame of window k goes out at
`k / fps + offset_s` (the video grid is phased onto those times) and the voice of input time `u` is
played at `u + offset_s - voice_lead_s`: a frame's mouth reads into its lookahead and so moves
ahead of the sound it shows, and the voice is played that much earlier to meet it
(`windows.voice_lead_s`). Lips and voice are therefore in sync by construction; what remains to
choose is the delay `delay_s` between the arrival of audio and the playing out of its frames:

    delay_s = lookahead_s          (window k cannot be cut before its lookahead has arrived)
            + generation_budget_s  (queueing and one batched step on the engine)
            + margin_s             (the wait of a window for the 20 ms packet that completes it,
                                    computed from fps and lookahead, plus 10 ms of jitter)

With the defaults (25 fps, 40 ms lookahead: windows end on packet boundaries) that is
40 + 25 + 10 = 75 ms. It is the smallest delay at which every frame is ready on time; a larger one
only adds latency, a smaller one makes the video repeat frames (the voice plays `voice_lead_s`
sooner). The generation budget starts at `generation_budget_s` (a
constructor argument, default 25 ms) and grows when frames complete after their time (twice within
the last 50 frames, by the lateness seen, at least half a frame, at most to two engine steps (p95)
plus a frame, and never past 500 ms: more cannot help a generator slower than real time, whose
frames then repeat): the session then re-anchors with the larger delay. Windows still queued on
the engine when their time has passed are withdrawn, so a slow engine spends its steps on frames
that can still be shown. After 5 s without a late frame a raised budget comes down to what the
engine's recent steps need (1.5 x their p95), and the timeline is trimmed in the next silence.
The first session on an engine first runs three steps of a throwaway stream, so the generator's
slow first steps do not set anyone's delay.

The offset is set when the first audio arrives (`offset_s = now - u_end + delay_s`, so the packet
that just ended at `u_end` plays `delay_s` from now). Each packet's headroom (how long before its
playing time it arrives) is checked: under `lookahead + budget / 2` (a network stall, a late
packet) the timeline re-anchors at once, a short audio gap and a repeated frame; when every packet
of the last second had more than the delay (the first packet was late, a burst after a stall) and
the voice is quiet, the timeline is trimmed earlier by the excess, skipping silence, so latency
settles at the delay after the latest packet. Both are counted in `stats()` (reanchors, trims).

The 16 kHz resampler holds back a few samples; the windower gets that many leading zeros once, so
window ends fall on the same packet boundaries as the 48 kHz voice (else each window would wait
one packet more).

What the video shows
--------------------
- No audio yet: the generator's idle frame (the portrait at rest), at full frame rate.
- Audio flowing: frame k is the generator's frame for window k. When that frame is not ready at its
  time (generation late, or audio late), the newest earlier frame is repeated: never a stall.
- Audio stops arriving for `gap_s` (a muted or dead client), or the input track ends: the session
  feeds silence into the windower at real-time pace, so the generator keeps producing frames: the
  mouth closes, blinks and idle motion go on. When voice arrives again it simply continues the
  input timeline after that silence.

`ended` is set when the input track ends (and on `aclose()`).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
from collections.abc import Callable
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from avatar.audio import AudioNormalizer
from avatar.clock import Clock, SessionClock
from avatar.config import SAMPLE_RATE_HZ, AppConfig
from avatar.disclosure.payload import session_number
from avatar.engine import EngineClosed, EngineHandle, EngineOverloaded, InferenceEngine
from avatar.errors import SpeechError
from avatar.generators.base import FrameGenerator, GeneratedFrame, GeneratorStream
from avatar.portrait import Portrait
from avatar.speech import decode_clip, synthesize
from avatar.speech_queue import SpeechItem, SpeechMark, SpeechQueue
from avatar.tracks import AUDIO_RATE_HZ, AvatarVideoTrack, DelayedAudioTrack, FrameStore, MediaTimeline
from avatar.windows import AudioWindow, AudioWindower, frame_sample_index

logger = logging.getLogger(__name__)

_RATIO = AUDIO_RATE_HZ // SAMPLE_RATE_HZ  # 48 kHz samples per 16 kHz sample
_FILL_CHUNK_S = 0.02
_MAX_BUDGET_S = 0.5  # a generator slower than this per frame cannot be live anyway
_TRIM_WINDOW_S = 1.0  # headroom is judged over this much recent audio
_LOWER_AFTER_S = 5.0  # this long without a late frame lowers a raised generation budget
_JITTER_MARGIN_S = 0.01


def packet_phase_s(config: AppConfig, packet_s: float = 0.02) -> float:
    """The longest a window waits, after its last sample, for the 20 ms packet that completes it."""
    fps, lookahead = config.video.fps, config.windows.lookahead_samples
    packet = round(packet_s * SAMPLE_RATE_HZ)
    ends = frame_sample_index(np.arange(fps), fps) + lookahead  # the pattern repeats every second
    return int((-ends % packet).max()) / SAMPLE_RATE_HZ


class AvatarSession:
    """Wires one peer's audio through the chain; `start()`, `attach_audio()`, `aclose()`."""

    def __init__(
        self,
        config: AppConfig,
        engine: InferenceEngine,
        generator: FrameGenerator,
        portrait: Portrait,
        *,
        session_id: str,
        return_audio: bool = True,
        clock: Clock | None = None,
        seed: int | None = None,
        generation_budget_s: float = 0.025,
        margin_s: float | None = None,
        gap_s: float = 0.25,
        on_frame_ready: Callable[[float], None] | None = None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.generator = generator
        self.portrait = portrait
        self.session_id = session_id
        self.clock: Clock = clock or SessionClock()
        self.seed = config.generator.seed + (seed if seed is not None else abs(hash(session_id)) % 100_000)
        self.log = logging.LoggerAdapter(logger, {"session": session_id})
        self.session_number = session_number(session_id)  # what the watermark of its frames carries
        self.fps = config.video.fps
        self.lookahead_s = config.windows.lookahead_s
        self.generation_budget_s = generation_budget_s
        self.margin_s = margin_s if margin_s is not None else packet_phase_s(config) + _JITTER_MARGIN_S
        self.gap_s = gap_s
        self.on_frame_ready = on_frame_ready  # (seconds from the window's last audio to its frame): metrics
        self.speech = SpeechQueue(config.tts.max_queued)
        self.on_speech: Callable[[SpeechMark], None] | None = None  # speaking / spoken, as they are heard
        self._marks = collections.deque[SpeechMark]()  # taken into the timeline, not yet played out
        self._item_count = 0
        self._synthesis = asyncio.Lock()
        self._normalizer = AudioNormalizer()  # the chain's 16 kHz
        self._normalizer48 = AudioNormalizer(AUDIO_RATE_HZ)  # the voice to send back
        self._windower = AudioWindower(config.windows, config.vad, self.fps)

        self.timeline = MediaTimeline(self.fps)
        self.store = FrameStore(portrait.rgb)
        self._video = AvatarVideoTrack(self.store, self.timeline, self.fps, clock=self.clock)
        self._audio = (
            DelayedAudioTrack(self.timeline, clock=self.clock, lead_s=config.windows.voice_lead_used_s)
            if return_audio
            else None
        )
        self.ended = asyncio.Event()
        self._started = asyncio.Event()
        self._closed = False
        self._stream: GeneratorStream | None = None
        self._handle: EngineHandle | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._futures: dict[asyncio.Future[GeneratedFrame], int] = {}  # -> window index

        # Input timeline and counters.
        self._pos48 = 0  # input samples (48 kHz) received or filled so far
        self._last_arrival_s: float | None = None
        self._input_ended = False
        self._speaking = False
        self._headroom_s: float | None = None  # smoothed (u_end + offset - arrival)
        self._headrooms = collections.deque[tuple[float, float]]()  # (arrival, headroom), last second
        self._anchored_at = 0.0
        self._primed = False
        self._reanchor_wanted = False
        self._late_history = collections.deque[bool](maxlen=50)
        self._late_grace_until = 0.0
        self._last_late_s = 0.0
        self._initial_budget_s = generation_budget_s
        self._counters = collections.Counter[str]()

    # -- properties ------------------------------------------------------------------------------

    @property
    def video_track(self) -> AvatarVideoTrack:
        return self._video

    @property
    def audio_track(self) -> DelayedAudioTrack | None:
        return self._audio

    @property
    def delay_s(self) -> float:
        """Arrival of the voice -> its playing out (and its mouth shapes going out)."""
        return self.lookahead_s + self.generation_budget_s + self.margin_s

    @property
    def closed(self) -> bool:
        return self._closed

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Make the generator stream, register with the engine, start both tracks' clock; once."""
        if self._started.is_set() or self._closed:
            return
        await self.engine.warm_up(self.portrait, self.config.windows)
        self._stream = await self.engine.new_stream(self.portrait, self.seed, self.session_number)
        # The one record tying a watermark found in a video (`avatar verify`) to this session's id.
        self.log.info("watermark session number %08x", self.session_number)
        idle = await self.engine.call(self.generator.idle_frame, self._stream)
        if self._closed:  # closed while we were waiting on the engine
            return
        self.store.set_idle(idle)
        self._handle = self.engine.open(self._stream)
        t0 = self.clock.now_s()
        self._video.start(t0)
        if self._audio is not None:
            self._audio.start(t0)
        self._pump = asyncio.get_running_loop().create_task(self._run_pump(), name=f"session-{self.session_id}-pump")
        self._started.set()
        self.log.info(
            "started (%d fps, delay %.0f ms, the voice %.0f ms)",
            self.fps, self.delay_s * 1000, (self.delay_s - self.config.windows.voice_lead_used_s) * 1000,
        )  # fmt: skip

    def attach_audio(self, track: MediaStreamTrack) -> None:
        """Read `track` until it ends, into the chain; one input track per session."""
        if self._closed:
            raise RuntimeError("session is closed")
        if self._consumer is not None:
            raise RuntimeError("an audio track is already attached to this session")
        self._consumer = asyncio.get_running_loop().create_task(
            self._consume(track), name=f"session-{self.session_id}-audio-in"
        )

    async def aclose(self) -> None:
        """Cancel and await every task, close the engine handle, stop the tracks; idempotent."""
        if self._closed:
            return
        self._closed = True
        tasks = [t for t in (self._consumer, self._pump) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._consumer = self._pump = None
        for future in list(self._futures):
            future.cancel()
        self._futures.clear()
        if self._handle is not None:
            self.engine.close(self._handle)
            self._handle = None
        self._video.stop()
        if self._audio is not None:
            self._audio.stop()
            self._audio.clear()
        self.store.clear()
        self._stream = None
        self.ended.set()
        self.log.info("closed after %d frames", self._video.counters.frames)

    # -- audio in --------------------------------------------------------------------------------

    async def _consume(self, track: MediaStreamTrack) -> None:
        await self._started.wait()
        try:
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    break
                if not isinstance(frame, av.AudioFrame):
                    continue
                try:
                    self._on_audio(frame)
                except Exception:  # one bad frame must not end the session
                    self._counters["bad_frames"] += 1
                    if self._counters["bad_frames"] <= 3:
                        self.log.exception("dropping an audio frame that does not fit the chain")
        finally:
            self._input_ended = True
            self.ended.set()
        self.log.info("input audio ended")

    def _on_audio(self, frame: av.AudioFrame) -> None:
        now = self.clock.now_s()
        samples48 = self._normalizer48.push_frame(frame)
        pcm16 = self._normalizer.push_frame(frame)
        if not self._primed and pcm16.size:
            # The 16 kHz resampler holds back a few samples (its filter delay), so the windower
            # would see every window end just after the packet that completes it and wait a whole
            # packet more. Leading zeros of that length keep both timelines on the same samples.
            self._primed = True
            deficit = round((self._pos48 + samples48.size) / _RATIO) - pcm16.size
            if 0 < deficit < SAMPLE_RATE_HZ // 100:
                pcm16 = np.concatenate([np.zeros(deficit, np.int16), pcm16])
        if self.speech.ready:  # the portrait speaks: its speech takes the microphone's place (ducked)
            taken = self.speech.take(samples48.size, pcm16.size, self._pos48)
            if taken is not None:
                samples48, pcm16, marks = taken
                self._marks.extend(marks)
        if samples48.size:
            u_end = (self._pos48 + samples48.size) / AUDIO_RATE_HZ
            self._place(now, u_end)
            if self._audio is not None:
                self._audio.write(self._pos48, samples48)
            self._pos48 += samples48.size
        self._last_arrival_s = now
        self._counters["audio_frames"] += 1
        self._feed_windows(pcm16)

    def _place(self, now: float, u_end: float) -> None:
        """Anchor the timeline at the first packet; re-anchor when packets come late; trim in silence.

        Headroom is how long before its playing time a packet arrives (`u_end + offset - now`); the
        delay is its target. A packet with less than `lookahead + budget / 2` re-anchors at once
        (frames would be late). When every packet of the last second had more than the delay plus
        5 ms (the first packet came late, or the network got faster) and the voice is quiet, the
        timeline moves earlier by the excess, skipping silence: latency does not stay high.
        """
        offset = self.timeline.offset_s
        if offset is not None and not self._reanchor_wanted:
            headroom = u_end + offset - now
            self._headroom_s = headroom if self._headroom_s is None else 0.9 * self._headroom_s + 0.1 * headroom
            self._headrooms.append((now, headroom))
            while self._headrooms and self._headrooms[0][0] < now - _TRIM_WINDOW_S:
                self._headrooms.popleft()
            if headroom >= self.lookahead_s + self.generation_budget_s / 2:
                excess = min(h for _, h in self._headrooms) - self.delay_s
                if excess > 0.005 and now - self._anchored_at >= _TRIM_WINDOW_S and not self._speaking:
                    self._counters["trims"] += 1
                    self._anchor(now, offset - excess)
                return
            self._counters["reanchors"] += 1
            self.log.info("late audio: headroom %.0f ms, delay %.0f ms", headroom * 1000, self.delay_s * 1000)
        elif offset is not None:
            self._counters["reanchors"] += 1
        self._reanchor_wanted = False
        self._anchor(now, now - u_end + self.delay_s)

    def _anchor(self, now: float, offset: float) -> None:
        self.timeline.anchor(offset)
        self._anchored_at = now
        self._headrooms.clear()
        self._headroom_s = None

    def _feed_windows(self, pcm16: np.ndarray) -> None:
        if pcm16.size == 0:
            return
        for window in self._windower.push(pcm16):
            self._submit(window)

    def _submit(self, window: AudioWindow) -> None:
        if self._handle is None:
            return
        due = self.timeline.frame_time(window.frame_index)
        if due is not None and due < self.clock.now_s():
            self._counters["skipped"] += 1  # its time has passed (a gap filled late): never shown
            return
        try:
            future = self._handle.submit_nowait(window)
        except EngineOverloaded:
            self._counters["dropped"] += 1
            return
        except EngineClosed:
            return
        self._futures[future] = window.frame_index
        future.add_done_callback(functools.partial(self._on_generated, window, self.clock.now_s()))

    def _on_generated(self, window: AudioWindow, submitted_s: float, future: asyncio.Future[GeneratedFrame]) -> None:
        self._futures.pop(future, None)
        if future.cancelled() or self._closed:
            return
        error = future.exception()
        if error is not None:
            self._counters["generator_errors"] += 1
            if self._counters["generator_errors"] <= 3:
                self.log.error("frame %d failed: %s", window.frame_index, error)
            return
        self.store.put(window.frame_index, future.result())
        self._speaking = window.speaking
        self._counters["generated"] += 1
        now = self.clock.now_s()
        if self.on_frame_ready is not None:
            self.on_frame_ready(now - submitted_s)
        due = self.timeline.frame_time(window.frame_index)
        late_by = now - due if due is not None else 0.0
        if late_by > 0:
            self._counters["late"] += 1
            self._on_late(late_by)
        else:
            self._late_history.append(False)

    def _on_late(self, late_by: float) -> None:
        """A frame came (or would come) after its time: twice in 50 frames raises the budget."""
        now = self.clock.now_s()
        self._last_late_s = now
        if now < self._late_grace_until:  # the last raise has not taken effect yet
            return
        self._late_history.append(True)
        if sum(self._late_history) < 2:
            return
        # Waiting behind one running step, then one's own: more budget than that cannot help (a
        # generator slower than real time needs throughput, and then frames repeat).
        ceiling = min(_MAX_BUDGET_S, max(0.05, 2 * self.engine.step_ms_p95() / 1000 + 1 / self.fps))
        if self.generation_budget_s < ceiling:
            step = max(late_by, 0.5 / self.fps)
            self.generation_budget_s = min(ceiling, self.generation_budget_s + step)
            self._late_history.clear()
            self._reanchor_wanted = True
            # Frames already under way were scheduled with the old delay: judge the new one by
            # frames submitted after the re-anchor.
            self._late_grace_until = now + self.delay_s + 0.1
            self.log.info("frames late: generation budget now %.0f ms", self.generation_budget_s * 1000)

    # -- rest frames when the voice stops --------------------------------------------------------

    async def _run_pump(self) -> None:
        """Each frame period: when no voice arrives (gap or ended input), feed silence."""
        period = 1.0 / self.fps
        next_t = self.clock.now_s()
        while True:
            next_t += period
            await self.clock.sleep_until(next_t)
            now = self.clock.now_s()
            next_t = max(next_t, now - period)  # after a stall, do not spin to catch up
            self._expire(now)
            self._maybe_lower_budget(now)
            self._emit_due(now)
            if self._last_arrival_s is not None and not self._input_ended and now - self._last_arrival_s < self.gap_s:
                continue  # the microphone's packets advance the timeline
            if self.timeline.offset_s is None and not self.speech.ready:
                continue  # no voice and no speech yet: the idle frame is shown
            self._fill_until(now)

    def _expire(self, now: float) -> None:
        """Withdraw windows still waiting on the engine whose time has passed.

        An engine slower than real time would otherwise work through a queue of frames that can
        only be late, and the video would lag further and further; withdrawn, the engine spends
        its steps on frames that can still be shown (the generator sees fewer, newer windows).
        """
        if self._handle is None:
            return
        overdue = 0.0
        for future, index in list(self._futures.items()):
            due = self.timeline.frame_time(index)
            if due is not None and due < now and self._handle.withdraw(future):
                self._futures.pop(future, None)
                self._counters["expired"] += 1
                overdue = max(overdue, now - due)
        if overdue > 0:
            self._on_late(overdue)

    def _maybe_lower_budget(self, now: float) -> None:
        """After `_LOWER_AFTER_S` without a late frame, bring the budget down to what the engine's
        recent steps need (1.5 x p95 + 5 ms, not under the initial budget); the headroom check then
        trims the timeline in the next silence. A budget set too low rises again on late frames."""
        if self.generation_budget_s <= self._initial_budget_s or now - self._last_late_s < _LOWER_AFTER_S:
            return
        target = max(self._initial_budget_s, 1.5 * self.engine.step_ms_p95() / 1000 + 0.005)
        self._last_late_s = now  # look again only after another quiet stretch
        if target < self.generation_budget_s - 0.005:
            self.generation_budget_s = target
            self._counters["budget_lowered"] += 1
            self.log.info("no late frames: generation budget now %.0f ms", target * 1000)

    def _fill_until(self, now: float) -> None:
        """Advance the input timeline, in 20 ms steps, as far as packets arriving now would: with
        speech items while there are any, else with silence. Speech with no timeline yet (a
        presenter session, or before the microphone's first packet) anchors it as a packet would."""
        chunk48 = round(_FILL_CHUNK_S * AUDIO_RATE_HZ)
        if self.timeline.offset_s is None:
            self._place(now, (self._pos48 + chunk48) / AUDIO_RATE_HZ)
        offset = self.timeline.offset_s
        assert offset is not None
        u_target = now + self.delay_s - offset
        while (self._pos48 + chunk48) / AUDIO_RATE_HZ <= u_target + 1e-9:
            taken = self.speech.take(chunk48, chunk48 // _RATIO, self._pos48) if self.speech.ready else None
            if taken is None:
                pcm16 = np.zeros(chunk48 // _RATIO, dtype=np.int16)
                self._counters["filled_frames"] += 1
            else:
                samples48, pcm16, marks = taken
                self._marks.extend(marks)
                if self._audio is not None:
                    self._audio.write(self._pos48, samples48)
                self._counters["speech_frames"] += 1
            self._pos48 += chunk48
            self._feed_windows(pcm16)

    # -- speech items ----------------------------------------------------------------------------

    async def say(self, text: str, voice: str | None = None, item_id: str | None = None) -> SpeechItem:
        """Queue `text`, spoken by the `[tts]` synthesiser; returns once its audio is made and
        queued (SpeechError, and the item is dropped, when it cannot be)."""
        item = self._enqueue(item_id, text)
        try:
            async with self._synthesis:  # one synthesiser at a time per session: they play in order anyway
                item.clip = await synthesize(text, voice, self.config.tts)
        except BaseException:
            self.speech.discard(item)
            raise
        return item

    async def play(self, data: bytes, item_id: str | None = None) -> SpeechItem:
        """Queue an audio clip (any format av decodes); like `say`."""
        item = self._enqueue(item_id, None)
        try:
            item.clip = await asyncio.to_thread(decode_clip, data, self.config.tts.max_clip_s)
        except BaseException:
            self.speech.discard(item)
            raise
        return item

    def clear_speech(self) -> int:
        """Barge-in: stop the playing item (its voice stops with the next packet) and drop the
        queued ones; each gets its `spoken` mark, interrupted. Returns how many were cut."""
        played = self._played_sample48(self.clock.now_s())
        cut: dict[int, SpeechItem] = {}
        for mark in list(self._marks):  # taken into the timeline but not yet heard
            cut.setdefault(id(mark.item), mark.item)
        self._marks.clear()
        for mark in self.speech.clear(self._pos48):
            cut.setdefault(id(mark.item), mark.item)
        if self._audio is not None and played is not None:
            self._audio.truncate(played)
        for item in cut.values():
            at = played if played is not None else self._pos48
            self._emit(SpeechMark("spoken", item, at, interrupted=True))
        return len(cut)

    def _enqueue(self, item_id: str | None, text: str | None) -> SpeechItem:
        if self._closed:
            raise SpeechError("the session has ended")
        self._item_count += 1
        item = SpeechItem(item_id or f"speech-{self._item_count}", text)
        self.speech.add(item)
        return item

    def _played_sample48(self, now: float) -> int | None:
        """The input sample (48 kHz) being played out now, None before the timeline exists."""
        offset = self.timeline.offset_s
        if offset is None:
            return None
        return round((now - offset + self.config.windows.voice_lead_used_s) * AUDIO_RATE_HZ)

    def _emit_due(self, now: float) -> None:
        played = self._played_sample48(now)
        while self._marks and played is not None and self._marks[0].sample48 <= played:
            self._emit(self._marks.popleft())

    def _emit(self, mark: SpeechMark) -> None:
        self._counters[mark.kind] += 1
        if self.on_speech is not None:
            try:
                self.on_speech(mark)
            except Exception:
                self.log.exception("the speech event handler failed")

    # -- stats -----------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Delivered fps, frames sent, speaking, latency estimate and the counters behind them."""
        video = self._video.counters
        headroom = self._headroom_s if self._headroom_s is not None else self.delay_s
        return {
            "session": self.session_id,
            "fps": round(self._video.measured_fps(), 2),
            "frames": video.frames,
            "speaking": bool(self._speaking),
            # Voice arriving here -> its mouth shapes (and the voice) leaving: the timeline headroom.
            "latency_ms": round(headroom * 1000, 1),
            "delay_ms": round(self.delay_s * 1000, 1),
            "new_frames": video.new,
            "repeated_frames": video.repeats,
            "idle_frames": video.idle,
            "stalls": video.stalls,
            "late_frames": self._counters["late"],
            "dropped_windows": self._counters["dropped"],
            "skipped_windows": self._counters["skipped"],
            "expired_windows": self._counters["expired"],
            "reanchors": self._counters["reanchors"],
            "trims": self._counters["trims"],
            "budget_lowered": self._counters["budget_lowered"],
            "audio_frames_in": self._counters["audio_frames"],
            "filled_frames": self._counters["filled_frames"],
            "speech_frames": self._counters["speech_frames"],
            "speech_queued": len(self.speech),
            "pending_windows": len(self._futures),  # submitted to the engine, frame not back yet
            "input_ended": self._input_ended,
        }
