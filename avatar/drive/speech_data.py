"""Training speech for an audio-to-viseme model, made by espeak-ng itself, reproducibly from a seed.

Each `Utterance` is one generated English sentence spoken by libespeak-ng (`phonemes.py`) with a
random installed English voice and variant (`en-us+f3`), rate (130-230 wpm) and pitch (30-70),
with 0-0.3 s of extra silence before and after, resampled to 16 kHz with the chain's resampler
(`avatar.audio.AudioNormalizer`, which keeps the timing: an impulse lands on the same instant),
then degraded the way real microphones and links do:

- room reverb (p 0.4): an exponentially decaying noise impulse response, RT60 0.2-0.6 s, after
  the direct sound (a direct path at t = 0, so the labels keep their timing);
- band limits (p 0.3): a telephone band (300-3400 Hz, 4th order Butterworth) or narrowband
  audio (through 8 kHz sampling: nothing above 4 kHz);
- noise (p 0.6): white or pink at 10-40 dB SNR against the speech;
- level: the peak set to -30..0 dBFS;
- an Opus round trip (p 0.3) at 16-32 kbit/s through PyAV's libopus at 48 kHz (Opus keeps the
  timing: the decoder drops the encoder's pre-skip).

Labels come from the phoneme spans at a 10 ms hop (`visemes.frame_labels`): frame k covers
[10 k, 10 k + 10) ms of the 16 kHz audio, and there are len(audio) // 160 of them.

Everything about utterance i of `make_dataset(n, seed)` comes from `utterance_seed(seed, i)`, and
`make_utterance(that seed)` makes it again, the same samples and labels. libespeak-ng alone would
not allow that: its wave generator keeps state from one call to the next, so the same sentence
spoken twice in one process differs a little (samples, and phoneme times by a millisecond). Each
sentence is therefore spoken by a fresh process forked from a forkserver that imported, but never
initialised, the library (one process per sentence, several at once in `make_dataset`).
"""

from __future__ import annotations

import functools
import io
import json
import multiprocessing
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from scipy import signal

from avatar.audio import AudioNormalizer
from avatar.drive.phonemes import PhonemeSpan, synthesize_with_phonemes
from avatar.drive.visemes import frame_labels

RATE_HZ = 16_000
HOP_S = 0.01
HOP_SAMPLES = 160
OPUS_RATE_HZ = 48_000

# Voice variants (espeak-ng-data/voices/!v), used where installed; "" is the voice's own.
_VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2",
             "klatt3", "croak", "grandma", "grandpa")
_FALLBACK_VOICES = ("en", "en-us")

# Word lists for the sentence generator; between them they have every viseme class many times
# (m b p: closed; f v: lip on teeth; w oo o: round; ee i e: spread; a ah i: open).
_NAMES = ("Mary", "Peter", "Bob", "Fiona", "Victor", "William", "Anna", "Oliver", "Sue", "Jim", "Harry",
          "Lucy", "George", "Emma", "Tom", "Zoe", "Frank", "Judy", "Kevin", "Rose")
_ADJECTIVES = ("big", "blue", "happy", "small", "old", "funny", "warm", "bright", "quiet", "heavy", "purple",
               "smooth", "wooden", "lovely", "very fine", "brave", "cheap", "empty", "thick", "yellow")
_NOUNS = ("book", "apple", "window", "boat", "moon", "fish", "violin", "cup", "garden", "house", "pony",
          "bottle", "flower", "map", "wolf", "shoe", "chair", "phone", "baby", "feather", "judge", "rope",
          "cheese", "mouth", "jam", "puppy", "wave", "valley", "oven", "zoo")
_VERBS = ("found", "bought", "moved", "saw", "pushed", "opened", "painted", "threw", "fixed", "wanted",
          "borrowed", "loved", "washed", "carried", "measured", "followed", "dropped", "kept", "viewed", "grabbed")
_PLACES = ("in the morning", "by the river", "on Monday", "at the market", "over the bridge", "near the old mill",
           "after lunch", "before the movie", "in February", "under the bed", "at home", "on the beach")
_INTERJECTIONS = ("Oh", "Wow", "Well", "Hmm", "Yes", "No", "Ah", "Ooh", "Hey", "Please")
_NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "twelve", "fifty")
_QUESTIONS = ("Why", "Where", "When", "How", "Who")


def make_sentence(rng: np.random.Generator) -> str:
    """A random English sentence (or two) from the module's word lists."""

    def pick(words: tuple[str, ...]) -> str:
        return str(words[rng.integers(len(words))])

    kind = int(rng.integers(6))
    if kind == 0:
        text = f"{pick(_NAMES)} {pick(_VERBS)} the {pick(_ADJECTIVES)} {pick(_NOUNS)} {pick(_PLACES)}."
    elif kind == 1:
        text = f"{pick(_QUESTIONS)} did {pick(_NAMES)} keep {pick(_NUMBERS)} {pick(_ADJECTIVES)} {pick(_NOUNS)}s?"
    elif kind == 2:
        text = f"{pick(_INTERJECTIONS)}, the {pick(_NOUNS)} is {pick(_ADJECTIVES)}!"
    elif kind == 3:
        text = (f"{pick(_NAMES)} and {pick(_NAMES)} {pick(_VERBS)} a {pick(_NOUNS)}, "
                f"then they {pick(_VERBS)} {pick(_NUMBERS)} more.")
    elif kind == 4:
        text = f"Please give me the {pick(_NOUNS)}. {pick(_INTERJECTIONS)}... thank you, {pick(_NAMES)}."
    else:
        text = f"My {pick(_ADJECTIVES)} {pick(_NOUNS)} {pick(_VERBS)} five {pick(_NOUNS)}s {pick(_PLACES)}."
    return text


@functools.cache
def english_voices() -> tuple[str, ...]:
    """espeak-ng's own English voices (`espeak-ng --voices=en`; MBROLA voices left out)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        return _FALLBACK_VOICES
    listing = subprocess.run([espeak, "--voices=en"], capture_output=True, text=True, timeout=10).stdout
    voices = []
    for line in listing.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 5 and not cols[4].startswith("mb/") and cols[1] != "variant":
            voices.append(cols[4].rsplit("/", 1)[-1].lower())  # gmw/en-US -> en-us, unique per voice
    return tuple(dict.fromkeys(voices)) or _FALLBACK_VOICES


@functools.cache
def voice_variants() -> tuple[str, ...]:
    """The variants of `_VARIANTS` that are installed ("" for none)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        return ("",)
    listing = subprocess.run([espeak, "--voices=variant"], capture_output=True, text=True, timeout=10).stdout
    installed = {line.split()[4].rsplit("/", 1)[-1] for line in listing.splitlines()[1:] if len(line.split()) >= 5}
    return tuple(v for v in _VARIANTS if v == "" or v in installed)


@dataclass
class Utterance:
    """16 kHz int16 speech and its per-10 ms labels (viseme class, jaw target), with how it was made."""

    audio: np.ndarray  # int16 (n,)
    classes: np.ndarray  # int64 (n // 160,)
    jaw: np.ndarray  # float32 (n // 160,)
    text: str
    seed: int
    voice: str
    rate_wpm: int
    pitch: int
    augment: dict = field(default_factory=dict)
    spans: list[PhonemeSpan] = field(default_factory=list)  # in the 16 kHz audio's time

    @property
    def duration_s(self) -> float:
        return self.audio.size / RATE_HZ


def utterance_seed(seed: int, index: int) -> int:
    """The seed of utterance `index` of the data set made from `seed`."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def resample(samples: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """int16 or float [-1, 1] samples -> int16 at `to_hz`, through the chain's resampler."""
    normalizer = AudioNormalizer(rate_hz=to_hz)
    out = np.concatenate([normalizer.push_array(samples, from_hz), normalizer.flush()])
    n = int(round(len(samples) * to_hz / from_hz))
    return _fit(out, n)


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    return x[:n] if x.size >= n else np.concatenate([x, np.zeros(n - x.size, x.dtype)])


# -- augmentation (float audio in [-1, 1] at 16 kHz) --------------------------------------------


def add_noise(x: np.ndarray, rng: np.random.Generator, snr_db: float, colour: str) -> np.ndarray:
    """White or pink (1/f power) noise at `snr_db` below the speech's mean power."""
    noise = rng.standard_normal(x.size)
    if colour == "pink":
        spectrum = np.fft.rfft(noise)
        f = np.arange(spectrum.size, dtype=float)
        f[0] = 1.0
        noise = np.fft.irfft(spectrum / np.sqrt(f), n=x.size)
    speech_power = float(np.mean(x**2)) + 1e-12
    noise *= np.sqrt(speech_power / (float(np.mean(noise**2)) + 1e-20) / 10 ** (snr_db / 10))
    return x + noise


def add_reverb(x: np.ndarray, rng: np.random.Generator, rt60_s: float) -> np.ndarray:
    """Convolve with a direct path plus exponentially decaying noise (60 dB down at `rt60_s`)."""
    n = int(rt60_s * RATE_HZ)
    t = np.arange(n) / RATE_HZ
    ir = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60_s)
    ir[:int(0.002 * RATE_HZ)] = 0.0  # first reflections after 2 ms
    ir *= 0.5 / (np.sqrt(np.sum(ir**2)) + 1e-12)  # reverberant energy 6 dB under the direct sound
    ir[0] = 1.0
    wet = signal.fftconvolve(x, ir)[: x.size]
    peak = np.max(np.abs(wet)) + 1e-12
    return wet * (np.max(np.abs(x)) / peak)


def band_limit(x: np.ndarray, kind: str) -> np.ndarray:
    """"telephone": 300-3400 Hz band pass; "narrowband": through 8 kHz sampling (below 4 kHz)."""
    if kind == "telephone":
        sos = signal.butter(4, [300, 3400], btype="bandpass", fs=RATE_HZ, output="sos")
        return signal.sosfilt(sos, x)
    if kind == "narrowband":
        return _fit(signal.resample_poly(signal.resample_poly(x, 1, 2), 2, 1), x.size)
    raise ValueError(f"unknown band limit {kind!r}")


def set_level(x: np.ndarray, peak_dbfs: float) -> np.ndarray:
    """Scale so the peak is at `peak_dbfs`."""
    return x * (10 ** (peak_dbfs / 20) / (np.max(np.abs(x)) + 1e-12))


def opus_round_trip(samples16: np.ndarray, bitrate_bps: int) -> np.ndarray:
    """int16 16 kHz audio -> Opus (libopus, 48 kHz, in Ogg) -> int16 16 kHz, the same length."""
    x48 = resample(samples16, RATE_HZ, OPUS_RATE_HZ)
    buf = io.BytesIO()
    with av.open(buf, "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=OPUS_RATE_HZ, layout="mono")
        stream.bit_rate = int(bitrate_bps)
        frame = av.AudioFrame.from_ndarray(x48.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = OPUS_RATE_HZ
        frame.pts = 0
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    buf.seek(0)
    normalizer = AudioNormalizer(rate_hz=RATE_HZ)
    with av.open(buf, "r") as inp:
        parts = [normalizer.push_frame(frame) for frame in inp.decode(audio=0)]
    parts.append(normalizer.flush())
    return _fit(np.concatenate(parts).astype(np.int16), samples16.size)


def augment(samples16: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Degrade int16 16 kHz speech at random; (int16 audio of the same length, what was done)."""
    x = samples16.astype(np.float64) / 32768.0
    done: dict = {}
    if rng.random() < 0.4:
        done["rt60_s"] = round(float(rng.uniform(0.2, 0.6)), 3)
        x = add_reverb(x, rng, done["rt60_s"])
    if rng.random() < 0.3:
        done["band"] = "telephone" if rng.random() < 0.5 else "narrowband"
        x = band_limit(x, done["band"])
    if rng.random() < 0.6:
        done["noise"] = "pink" if rng.random() < 0.5 else "white"
        done["snr_db"] = round(float(rng.uniform(10, 40)), 2)
        x = add_noise(x, rng, done["snr_db"], done["noise"])
    done["peak_dbfs"] = round(float(rng.uniform(-30, 0)), 2)
    x = set_level(x, done["peak_dbfs"])
    out = np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)
    if rng.random() < 0.3:
        done["opus_bps"] = int(rng.integers(16, 33)) * 1000
        out = opus_round_trip(out, done["opus_bps"])
    return out, done


# -- utterances and data sets -----------------------------------------------------------------------


def _pool(processes: int):
    """Workers that speak one sentence each, from a library never used before (see the docstring)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["avatar.drive.speech_data"])  # imports only: the library stays unused
    return ctx.Pool(processes=processes, maxtasksperchild=1)


def _speak(args: tuple[str, str, int, int]) -> tuple[np.ndarray, int, list[PhonemeSpan]]:
    text, voice, rate_wpm, pitch = args
    return synthesize_with_phonemes(text, voice=voice, rate_wpm=rate_wpm, pitch=pitch)


def _plan(seed: int) -> tuple[np.random.Generator, tuple[str, str, int, int]]:
    rng = np.random.default_rng(seed)
    text = make_sentence(rng)
    voices, variants = english_voices(), voice_variants()
    voice = str(voices[rng.integers(len(voices))])
    variant = str(variants[rng.integers(len(variants))])
    voice_name = f"{voice}+{variant}" if variant else voice
    rate_wpm = int(rng.integers(130, 231))
    pitch = int(rng.integers(30, 71))
    return rng, (text, voice_name, rate_wpm, pitch)


def _finish(seed: int, rng: np.random.Generator, request: tuple[str, str, int, int], spoken: tuple,
            augmented: bool) -> Utterance:
    text, voice_name, rate_wpm, pitch = request
    lead_s = float(rng.uniform(0.0, 0.3))
    tail_s = float(rng.uniform(0.0, 0.3))

    raw, raw_rate, spans = spoken
    speech = resample(raw, raw_rate, RATE_HZ)
    lead, tail = int(lead_s * RATE_HZ), int(tail_s * RATE_HZ)
    audio = np.concatenate([np.zeros(lead, np.int16), speech, np.zeros(tail, np.int16)])
    shift = lead / RATE_HZ
    spans = [PhonemeSpan(s.phoneme, s.start_s + shift, s.end_s + shift) for s in spans]
    done: dict = {}
    if augmented:
        audio, done = augment(audio, rng)
    n_frames = audio.size // HOP_SAMPLES
    classes, jaw = frame_labels(spans, hop_s=HOP_S, n_frames=n_frames)
    return Utterance(audio, classes, jaw, text, int(seed), voice_name, rate_wpm, pitch, done, spans)


def make_utterance(seed: int, *, augmented: bool = True) -> Utterance:
    """One utterance, all of it from `seed`: sentence, voice, rate, pitch, padding, augmentation."""
    rng, request = _plan(seed)
    with _pool(1) as pool:
        spoken = pool.apply(_speak, (request,))
    return _finish(seed, rng, request, spoken, augmented)


def make_dataset(n_utterances: int, seed: int, *, augmented: bool = True,
                 processes: int | None = None) -> list[Utterance]:
    """`n_utterances` utterances; utterance i is `make_utterance(utterance_seed(seed, i))`."""
    seeds = [utterance_seed(seed, i) for i in range(n_utterances)]
    plans = [_plan(s) for s in seeds]
    with _pool(processes or min(4, os.cpu_count() or 1)) as pool:
        spoken = pool.map(_speak, [request for _, request in plans], chunksize=1)
    return [
        _finish(s, rng, request, out, augmented)
        for s, (rng, request), out in zip(seeds, plans, spoken, strict=True)
    ]


def save_dataset(utterances: list[Utterance], path: Path | str) -> Path:
    """Write utterances to one .npz: audio, classes and jaw concatenated, with offsets and metadata."""
    path = Path(path)
    audio_offsets = np.cumsum([0] + [u.audio.size for u in utterances]).astype(np.int64)
    frame_offsets = np.cumsum([0] + [u.classes.size for u in utterances]).astype(np.int64)
    meta = [
        {"text": u.text, "seed": u.seed, "voice": u.voice, "rate_wpm": u.rate_wpm, "pitch": u.pitch,
         "augment": u.augment, "spans": [[s.phoneme, s.start_s, s.end_s] for s in u.spans]}
        for u in utterances
    ]
    with path.open("wb") as fh:
        np.savez_compressed(
            fh,
            audio=np.concatenate([u.audio for u in utterances]) if utterances else np.zeros(0, np.int16),
            classes=np.concatenate([u.classes for u in utterances]) if utterances else np.zeros(0, np.int64),
            jaw=np.concatenate([u.jaw for u in utterances]) if utterances else np.zeros(0, np.float32),
            audio_offsets=audio_offsets,
            frame_offsets=frame_offsets,
            meta=np.array(json.dumps(meta)),
            rate_hz=np.array(RATE_HZ),
            hop_s=np.array(HOP_S),
        )
    return path


def load_dataset(path: Path | str) -> list[Utterance]:
    """Read what `save_dataset` wrote."""
    with np.load(Path(path), allow_pickle=False) as data:
        audio, classes, jaw = data["audio"], data["classes"], data["jaw"]
        a_off, f_off = data["audio_offsets"], data["frame_offsets"]
        meta = json.loads(str(data["meta"]))
    utterances = []
    for i, m in enumerate(meta):
        utterances.append(Utterance(
            audio[a_off[i]:a_off[i + 1]].copy(), classes[f_off[i]:f_off[i + 1]].copy(),
            jaw[f_off[i]:f_off[i + 1]].copy(), m["text"], int(m["seed"]), m["voice"], int(m["rate_wpm"]),
            int(m["pitch"]), m["augment"], [PhonemeSpan(p, float(s), float(e)) for p, s, e in m["spans"]],
        ))
    return utterances
