"""Speech with phoneme timings, from libespeak-ng through ctypes.

`synthesize_with_phonemes` speaks a sentence with the espeak-ng library (not the command line)
with phoneme events enabled, and returns the samples at the library's rate (22050 Hz) with one
`PhonemeSpan` per phoneme: its espeak mnemonic (the English voice's ascii names, "a", "aI", "m",
"_:" for a pause...) and where it starts and ends in the audio, in seconds.

The structures follow espeak-ng's speak_lib.h (API revision 12, the same since revision 7 for the
event layout):

    typedef struct {
        espeak_EVENT_TYPE type;            // int
        unsigned int unique_identifier;
        int text_position;
        int length;
        int audio_position;                // ms within the generated speech
        int sample;
        void* user_data;
        union { int number; const char *name; char string[8]; } id;   // string: phoneme name
    } espeak_EVENT;
    typedef int (t_espeak_callback)(short*, int, espeak_EVENT*);

The library keeps global state and is not thread safe: every call holds one module lock, and it
is initialised once per process (AUDIO_OUTPUT_SYNCHRONOUS, so espeak_Synth returns when done).
An event's audio_position is where its phoneme starts; a phoneme ends where the next one starts,
and the last one at the end of the audio.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

_LIBRARY_FALLBACK = "libespeak-ng.so.1"

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_END = 5
_EVENT_MSG_TERMINATED = 6
_EVENT_PHONEME = 7
_PARAM_RATE = 1
_PARAM_PITCH = 3
_EE_OK = 0


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class PhonemeSpan:
    """One phoneme: its espeak mnemonic and where it lies in the audio, in seconds."""

    phoneme: str
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


class _Espeak:
    """The loaded library, initialised once; use only under `_LOCK`."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("espeak-ng") or _LIBRARY_FALLBACK
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            raise RuntimeError(
                f"libespeak-ng is not installed ({name}: {exc}); run scripts/setup.sh or "
                "`apt-get install espeak-ng`"
            ) from exc
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.argtypes = []
        lib.espeak_Synchronize.restype = ctypes.c_int
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None,
                                     _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({rate}): is espeak-ng-data installed?")
        self.lib = lib
        self.sample_rate_hz = int(rate)
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, str]] = []  # (type, audio_position ms, phoneme)
        self._callback = _CALLBACK(self._on_synth)  # keep a reference: the library holds the pointer
        lib.espeak_SetSynthCallback(self._callback)

    def _on_synth(self, wav, numsamples, events) -> int:
        if wav and numsamples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).astype(np.int16, copy=True))
        if events:
            i = 0
            while events[i].type != _EVENT_LIST_TERMINATED:
                event = events[i]
                phoneme = event.id.string.decode("utf-8", "replace") if event.type == _EVENT_PHONEME else ""
                self._events.append((int(event.type), int(event.audio_position), phoneme))
                i += 1
        return 0

    def synthesize(self, text: str, voice: str, rate_wpm: int, pitch: int) -> tuple[np.ndarray, list]:
        if self.lib.espeak_SetVoiceByName(voice.encode("utf-8")) != _EE_OK:
            raise RuntimeError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(_PARAM_RATE, int(rate_wpm), 0)
        self.lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0)
        self._chunks, self._events = [], []
        data = text.encode("utf-8") + b"\0"
        buf = ctypes.create_string_buffer(data, len(data))
        err = self.lib.espeak_Synth(buf, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != _EE_OK:
            raise RuntimeError(f"espeak_Synth failed ({err}) for {text[:40]!r}")
        self.lib.espeak_Synchronize()
        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        events, self._chunks, self._events = self._events, [], []
        return samples, events


_LOCK = threading.Lock()
_ENGINE: _Espeak | None = None


def _engine() -> _Espeak:
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Espeak()
    return _ENGINE


def library_sample_rate_hz() -> int:
    """The rate of the library's samples (22050 Hz for espeak-ng's own voices)."""
    with _LOCK:
        return _engine().sample_rate_hz


def synthesize_with_phonemes(
    text: str, voice: str = "en", rate_wpm: int = 175, pitch: int = 50
) -> tuple[np.ndarray, int, list[PhonemeSpan]]:
    """Speak `text`: (int16 samples at the library's rate, that rate in Hz, phoneme spans in order).

    `voice` is what `espeak-ng -v` takes, variants included ("en-us", "en+f3"); `rate_wpm` the
    speed in words per minute (80-450), `pitch` the base pitch (0-100, 50 normal). The spans tile
    whole audio (the silence before the first phoneme is a "_" span); none ends after the audio.
    """
    with _LOCK:
        engine = _engine()
        samples, events = engine.synthesize(text, voice, rate_wpm, pitch)
        rate = engine.sample_rate_hz
    duration_s = samples.size / rate
    starts = [(pos / 1000.0, name) for kind, pos, name in events if kind == _EVENT_PHONEME and name]
    spans: list[PhonemeSpan] = []
    if starts and starts[0][0] > 0:  # the library's lead-in silence
        spans.append(PhonemeSpan("_", 0.0, min(starts[0][0], duration_s)))
    for i, (start, name) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else duration_s
        start, end = min(start, duration_s), min(max(end, start), duration_s)
        if end > start:
            spans.append(PhonemeSpan(name, start, end))
    return samples, rate, spans
