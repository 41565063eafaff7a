"""The voice timeline of a paced output: queued voice in; for each video frame slot, its audio
window and the voice that goes out with it.

A pipeline stage that animates the portrait from a voice it also passes on (a voice agent's TTS
audio) gets that voice in bursts, faster than real time, in any format, and must send frames at
a steady rate with the voice beside them. This is the bookkeeping between the two; it is pure (no
clock, no tasks): its caller decides when each slot is due.

Slots are the output's frame indices n = 0, 1, 2, ... An epoch maps them onto an input timeline of
its own: slot n is frame j = n - first_slot of the epoch's `AudioWindower`, standing at epoch time
j / fps. Queued voice is laid onto the timeline only as far as the slots asked for need it
(`window(n)`, `take(n)`); when none is queued, silence is laid instead, so the timeline keeps pace
with the slots and voice that comes later starts where it then ends.

Sync, the rule of the live service (avatar.session): slot n goes out with the voice of epoch time
[j / fps + voice_lead_s, (j + 1) / fps + voice_lead_s). A frame's mouth reads `lookahead_s` into
its window and so moves ahead of the sound it shows; the voice is played `voice_lead_s` earlier to
meet it. The voice is cut at those times in its own sample rate and channels (mono 16 kHz is made
only for the windows), so what goes out is what came in, sample for sample.

Voice that follows silence starts once `prebuffer_s` of it is queued (or it has waited that long on
the timeline), so a TTS that streams its first chunks just in time does not leave gaps in them.

Markers (anything else queued between voice chunks) keep their place: a marker goes out with the
slot whose voice finishes the voice queued before it.

`interrupt(n)` drops everything queued or laid that has not gone out, except items queued as
uninterruptible (queued again, in order), and starts a new epoch at slot n with a fresh windower,
so no later window holds any of the dropped voice.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from avatar.audio import AudioNormalizer
from avatar.config import SAMPLE_RATE_HZ, VadConfig, WindowConfig
from avatar.errors import AudioError
from avatar.windows import CLIP_CHUNK_S, AudioWindow, AudioWindower

T = TypeVar("T")


@dataclass(frozen=True)
class VoicePiece(Generic[T]):
    """Voice going out with one slot: consecutive samples of one queued chunk."""

    samples: np.ndarray  # (n, channels) int16, as queued
    sample_rate_hz: int
    tag: T  # what the chunk was queued with


@dataclass(frozen=True)
class Marker(Generic[T]):
    """A queued marker, going out in its place."""

    item: T


@dataclass
class _Queued(Generic[T]):
    samples: np.ndarray | None  # (n, channels) int16; None for a marker
    sample_rate_hz: int
    tag: T
    interruptible: bool


@dataclass
class _Run:
    """Voice laid back to back in one format, from `start` (an epoch 16 kHz sample) on."""

    start: int
    sample_rate_hz: int
    channels: int
    normalizer: AudioNormalizer
    samples: int = 0  # laid so far, at sample_rate_hz


@dataclass
class _Laid(Generic[T]):
    queued: _Queued[T]
    run: _Run | None  # None for a marker
    offset: int = 0  # index of its first sample in its run
    sent: int = 0  # samples gone out


class VoiceTimeline(Generic[T]):
    """Queued voice -> one window per slot and the voice of each slot; see the module docstring.

    `window(n)` is asked once per slot, in order; `take(n)` likewise. Either lays voice (or silence)
    as far as that slot needs, so memory holds what is queued plus about one window.
    """

    def __init__(self, window: WindowConfig, vad: VadConfig, fps: int, *, prebuffer_s: float = 0.0) -> None:
        if fps <= 0:
            raise AudioError(f"fps must be positive, got {fps}")
        if prebuffer_s < 0:
            raise AudioError(f"prebuffer_s must not be negative, got {prebuffer_s}")
        self.prebuffer_s = prebuffer_s
        self._prebuffer = round(prebuffer_s * SAMPLE_RATE_HZ)  # 16 kHz samples
        self._waited = 0  # silence laid while voice waited to start (16 kHz samples)
        self.window_config = window
        self.vad_config = vad
        self.fps = fps
        self._lead = round(window.voice_lead_s * SAMPLE_RATE_HZ)  # 16 kHz samples
        self._queue: collections.deque[_Queued[T]] = collections.deque()
        self._laid: collections.deque[_Laid[T]] = collections.deque()
        self.epoch = 0
        self.first_slot = 0
        self._windower = AudioWindower(window, vad, fps)
        self._windows: collections.deque[AudioWindow] = collections.deque()
        self._run: _Run | None = None

    # ---- input ----------------------------------------------------------------------------------

    def push_voice(self, samples: np.ndarray, sample_rate_hz: int, tag: T, *, interruptible: bool = True) -> None:
        """Queue voice: int16 samples of shape (n,) or (n, channels) at any rate."""
        samples = np.asarray(samples)
        if samples.ndim == 1:
            samples = samples[:, None]
        if samples.dtype != np.int16 or samples.ndim != 2 or samples.shape[1] < 1:
            raise AudioError(f"voice must be int16 of shape (n,) or (n, channels), got {samples.dtype} {samples.shape}")
        if sample_rate_hz <= 0:
            raise AudioError(f"sample rate must be positive, got {sample_rate_hz}")
        if samples.shape[0]:
            self._queue.append(_Queued(samples, sample_rate_hz, tag, interruptible))

    def push_marker(self, item: T, *, interruptible: bool = True) -> None:
        """Queue a marker; it goes out after the voice queued before it."""
        self._queue.append(_Queued(None, 0, item, interruptible))

    @property
    def idle(self) -> bool:
        """Nothing queued or laid is waiting to go out (a marker may then go out at once)."""
        return not self._queue and not self._laid

    @property
    def pending_voice_s(self) -> float:
        """Seconds of voice queued or laid that have not gone out."""
        total = 0.0
        for laid in self._laid:
            if laid.queued.samples is not None:
                total += (laid.queued.samples.shape[0] - laid.sent) / laid.queued.sample_rate_hz
        for queued in self._queue:
            if queued.samples is not None:
                total += queued.samples.shape[0] / queued.sample_rate_hz
        return total

    # ---- output ---------------------------------------------------------------------------------

    def window(self, slot: int) -> AudioWindow:
        """The audio window of `slot` (this epoch's slots, each once, in order)."""
        j = slot - self.first_slot
        if j < 0 or j < self._windower.next_frame_index - len(self._windows):
            raise AudioError(f"slot {slot} comes before this epoch's next window")
        self._lay_until(self._windower.frame_sample_index(j) + self.window_config.lookahead_samples)
        while self._windows[0].frame_index < j:  # slots the caller skipped
            self._windows.popleft()
        return self._windows.popleft()

    def take(self, slot: int) -> list[VoicePiece[T] | Marker[T]]:
        """What goes out with `slot`, in order: its voice (pieces of consecutive chunks; one piece
        per chunk) and the markers whose voice before them is then all out."""
        j = slot - self.first_slot
        # End of the slot's voice, in units of 1 / (fps * 16 kHz) s: exact for every fps.
        end = (j + 1) * SAMPLE_RATE_HZ + self._lead * self.fps
        self._lay_until(-(-end // self.fps))
        out: list[VoicePiece[T] | Marker[T]] = []
        while self._laid:
            laid = self._laid[0]
            samples = laid.queued.samples
            if laid.run is None or samples is None:
                out.append(Marker(laid.queued.tag))
                self._laid.popleft()
                continue
            hi = min(samples.shape[0], self._run_index(laid.run, end) - laid.offset)
            if hi > laid.sent:
                piece = samples[laid.sent : hi]
                last = out[-1] if out else None
                if isinstance(last, VoicePiece) and last.tag is laid.queued.tag:
                    piece = np.concatenate([last.samples, piece])
                    out[-1] = VoicePiece(piece, laid.queued.sample_rate_hz, laid.queued.tag)
                else:
                    out.append(VoicePiece(piece, laid.queued.sample_rate_hz, laid.queued.tag))
                laid.sent = hi
            if laid.sent < samples.shape[0]:
                break
            self._laid.popleft()
        return out

    def interrupt(self, first_slot: int) -> float:
        """Drop what has not gone out (uninterruptible items stay queued, in order) and start a new
        epoch at `first_slot`; returns the seconds of voice dropped."""
        dropped = 0.0
        kept: collections.deque[_Queued[T]] = collections.deque()
        for laid in self._laid:
            q = laid.queued
            if q.samples is None:
                if not q.interruptible:
                    kept.append(q)
            elif laid.sent < q.samples.shape[0]:
                rest = q.samples[laid.sent :]
                if q.interruptible:
                    dropped += rest.shape[0] / q.sample_rate_hz
                else:
                    kept.append(_Queued(rest, q.sample_rate_hz, q.tag, False))
        for q in self._queue:
            if not q.interruptible:
                kept.append(q)
            elif q.samples is not None:
                dropped += q.samples.shape[0] / q.sample_rate_hz
        self._laid.clear()
        self._queue = kept
        self.epoch += 1
        self.first_slot = first_slot
        self._windower = AudioWindower(self.window_config, self.vad_config, self.fps)
        self._windows.clear()
        self._run = None
        self._waited = 0
        return dropped

    def drain(self) -> list[VoicePiece[T] | Marker[T]]:
        """Everything not yet out, in order, at once (for a caller that stops animating)."""
        out: list[VoicePiece[T] | Marker[T]] = []
        items = [(laid.queued, laid.sent) for laid in self._laid] + [(q, 0) for q in self._queue]
        for queued, sent in items:
            if queued.samples is None:
                out.append(Marker(queued.tag))
            elif sent < queued.samples.shape[0]:
                out.append(VoicePiece(queued.samples[sent:], queued.sample_rate_hz, queued.tag))
        self._laid.clear()
        self._queue.clear()
        return out

    # ---- laying voice onto the timeline ---------------------------------------------------------

    def _run_index(self, run: _Run, end: int) -> int:
        """The index in `run` of the sample at epoch time end / (fps * 16 kHz) s, rounded, >= 0."""
        num = (end - run.start * self.fps) * run.sample_rate_hz
        den = self.fps * SAMPLE_RATE_HZ
        return max(0, (2 * num + den) // (2 * den))

    def _lay_until(self, target: int) -> None:
        """Lay queued voice, 20 ms at a time (else silence, once none is queued) until the windower
        holds `target` samples of this epoch; markers right behind the voice laid follow it."""
        while self._windower.samples_received < target:
            if self._queue and self._queue[0].samples is None:
                self._lay_head()
            elif self._queue and (self._run is not None or self._may_start()):
                self._lay_head()
            else:
                self._end_run()  # its flushed tail may reach the target already
                missing = max(0, target - self._windower.samples_received)
                if self._queue:
                    self._waited += missing
                self._feed(np.zeros(missing, dtype=np.int16))
        while self._queue and self._queue[0].samples is None:
            self._lay_head()

    def _may_start(self) -> bool:
        """Voice after silence starts once `prebuffer_s` of it is queued or it has waited as long."""
        if self._waited >= self._prebuffer:
            return True
        queued = 0.0
        for q in self._queue:
            if q.samples is not None:
                queued += q.samples.shape[0] / q.sample_rate_hz
                if queued >= self.prebuffer_s:
                    return True
        return False

    def _lay_head(self) -> None:
        head = self._queue[0]
        if head.samples is None:
            self._laid.append(_Laid(head, None))
            self._queue.popleft()
            return
        rate, channels = head.sample_rate_hz, head.samples.shape[1]
        run = self._run
        if run is None or run.sample_rate_hz != rate or run.channels != channels:
            self._end_run()
            run = self._run = _Run(self._windower.samples_received, rate, channels, AudioNormalizer())
            self._waited = 0
        count = min(head.samples.shape[0], max(1, round(CLIP_CHUNK_S * rate)))
        part = head.samples[:count]
        if count == head.samples.shape[0]:
            self._queue.popleft()
        else:
            head.samples = head.samples[count:]
        self._laid.append(_Laid(_Queued(part, rate, head.tag, head.interruptible), run, offset=run.samples))
        run.samples += count
        self._feed(run.normalizer.push_array(part, rate))

    def _end_run(self) -> None:
        if self._run is not None:
            self._feed(self._run.normalizer.flush())
            self._run = None

    def _feed(self, pcm16: np.ndarray) -> None:
        if pcm16.size:
            self._windows.extend(self._windower.push(pcm16))
