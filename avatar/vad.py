"""Voice activity: webrtcvad's per-frame decision, smoothed into a SILENT/SPEAKING state.

The model call (`is_speech_raw`) and the state machine (`update`) are kept apart; `process` does
both. SILENT turns SPEAKING once speech has lasted `start_s` (consecutive speech frames); SPEAKING
turns SILENT once silence has lasted `hangover_s`, so short pauses inside and between words keep the
mouth moving. Frames are int16 mono at 16 kHz of exactly `frame_ms`. No asyncio: about 5 us a frame.

webrtcvad calls the first 70-180 ms of any non-zero input speech while it learns the noise floor
(even one-bit dither, in modes 0 and 1), so `process` ignores its decisions for MODEL_WARMUP_S at
the start of a stream. It also calls loud broadband noise speech in every mode (white noise at
about -20 dBFS RMS); mode 3 rejects it at about -30 dBFS, where mode 0 still accepts it.
"""

from __future__ import annotations

import enum
import math

import numpy as np
import webrtcvad

from avatar.config import SAMPLE_RATE_HZ, VadConfig
from avatar.errors import AudioError

MODEL_WARMUP_S = 0.2
"""At the start of a stream, webrtcvad's decisions are ignored (taken as silence) for this long."""


class SpeechState(enum.Enum):
    SILENT = "silent"
    SPEAKING = "speaking"


def _frames_for(duration_s: float, frame_s: float) -> int:
    """How many whole frames cover `duration_s` (at least one)."""
    return max(1, math.ceil(duration_s / frame_s - 1e-9))


class VoiceActivityDetector:
    """webrtcvad on frames of exactly `frame_samples`, with start threshold and hangover."""

    def __init__(self, config: VadConfig) -> None:
        self.config = config
        self.frame_samples = config.frame_ms * SAMPLE_RATE_HZ // 1000
        frame_s = config.frame_ms / 1000
        self.start_frames = _frames_for(config.start_s, frame_s)
        self.hangover_frames = _frames_for(config.hangover_s, frame_s)
        self.warmup_frames = _frames_for(MODEL_WARMUP_S, frame_s)
        self.last_raw = False  # the model's decision on the last frame given to process()
        self._model_frames = 0  # frames the model has seen
        self._vad = webrtcvad.Vad(config.aggressiveness)
        self._state = SpeechState.SILENT
        self._run = 0  # consecutive frames disagreeing with the current state

    @property
    def state(self) -> SpeechState:
        return self._state

    def is_speech_raw(self, frame: np.ndarray) -> bool:
        """webrtcvad's own decision on one frame, without smoothing.

        The model adapts to the noise floor as frames go by: feed each frame to it once, through
        `process` (which keeps the result in `last_raw`) or here.
        """
        if not isinstance(frame, np.ndarray) or frame.dtype != np.int16 or frame.ndim != 1:
            raise AudioError("VAD frames must be 1-D int16 numpy arrays (mono, 16 kHz)")
        if frame.size != self.frame_samples:
            raise AudioError(
                f"VAD frame must hold exactly {self.frame_samples} samples "
                f"({self.config.frame_ms} ms at {SAMPLE_RATE_HZ} Hz), got {frame.size}"
            )
        self._model_frames += 1
        return bool(self._vad.is_speech(np.ascontiguousarray(frame).tobytes(), SAMPLE_RATE_HZ))

    def process(self, frame: np.ndarray) -> SpeechState:
        """Feed one frame to the model and the state machine; returns the state after it."""
        self.last_raw = self.is_speech_raw(frame)
        return self.update(self.last_raw and self._model_frames > self.warmup_frames)

    def update(self, speech: bool) -> SpeechState:
        """Advance the state machine by one frame whose raw decision is `speech`."""
        if (self._state is SpeechState.SPEAKING) == speech:
            self._run = 0
            return self._state
        self._run += 1
        needed = self.hangover_frames if self._state is SpeechState.SPEAKING else self.start_frames
        if self._run >= needed:
            self._state = SpeechState.SPEAKING if speech else SpeechState.SILENT
            self._run = 0
        return self._state
