"""The speech items of one live session (`say`, `play`), in order, taken 20 ms at a time.

An item enters the queue when it is asked for, before its audio exists (a synthesiser may take a
while), so items keep the order they were asked in; the head waits until its clip is ready, and
one that fails is taken out. The session takes speech in step with its input timeline: `take`
gives the next samples of the playing item at 48 kHz (the voice sent back) and at 16 kHz (the
drive), and the marks (`speaking` when an item's first sample enters the timeline, `spoken` after
its last) at the input sample where they happen; the session reports each mark when that sample
is played out. `clear` ends the playing item and drops every queued one (barge-in).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np

from avatar.errors import SpeechError
from avatar.speech import SpeechClip


@dataclass(eq=False)
class SpeechItem:
    id: str
    text: str | None = None  # what a `say` says (the caption); None for a clip
    clip: SpeechClip | None = field(default=None, repr=False)  # None while it is being made


@dataclass(frozen=True)
class SpeechMark:
    kind: str  # "speaking" | "spoken"
    item: SpeechItem
    sample48: int  # the input sample (48 kHz) at which it happens
    interrupted: bool = False  # a `spoken` that `clear` cut short (or that never started)


class SpeechQueue:
    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._waiting = collections.deque[SpeechItem]()
        self._current: SpeechItem | None = None
        self._pos48 = 0
        self._pos16 = 0

    def __len__(self) -> int:
        return len(self._waiting) + (self._current is not None)

    @property
    def playing(self) -> SpeechItem | None:
        return self._current

    @property
    def ready(self) -> bool:
        """Is there speech to take now (an item playing, or a head whose audio is made)?"""
        return self._current is not None or (bool(self._waiting) and self._waiting[0].clip is not None)

    def add(self, item: SpeechItem) -> None:
        if len(self) >= self.max_items:
            raise SpeechError(f"{len(self)} speech items are already waiting (at most {self.max_items})")
        self._waiting.append(item)

    def discard(self, item: SpeechItem) -> None:
        """Take out an item whose audio could not be made."""
        if item in self._waiting:
            self._waiting.remove(item)

    def take(self, n48: int, n16: int, at48: int) -> tuple[np.ndarray, np.ndarray, list[SpeechMark]] | None:
        """The next `n48` / `n16` samples of speech (zeros after an item ends), and its marks; None
        when nothing plays now (the queue is empty, or its head is still being made)."""
        marks: list[SpeechMark] = []
        if self._current is None:
            if not self._waiting or self._waiting[0].clip is None:
                return None
            self._current = self._waiting.popleft()
            self._pos48 = self._pos16 = 0
            marks.append(SpeechMark("speaking", self._current, at48))
        clip = self._current.clip
        assert clip is not None
        s48 = np.zeros(n48, np.int16)
        s16 = np.zeros(n16, np.int16)
        part48 = clip.samples48[self._pos48 : self._pos48 + n48]
        part16 = clip.samples16[self._pos16 : self._pos16 + n16]
        s48[: part48.size] = part48
        s16[: part16.size] = part16
        self._pos48 += n48
        self._pos16 += n16
        if self._pos48 >= clip.samples48.size:
            marks.append(SpeechMark("spoken", self._current, at48 + part48.size))
            self._current = None
        return s48, s16, marks

    def clear(self, at48: int) -> list[SpeechMark]:
        """Stop the playing item and drop the queued ones: a `spoken` (interrupted) mark for each."""
        items = ([self._current] if self._current is not None else []) + list(self._waiting)
        self._current = None
        self._waiting.clear()
        return [SpeechMark("spoken", item, at48, interrupted=True) for item in items]
