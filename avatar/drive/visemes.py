"""Visemes: the mouth shapes a phoneme asks for, and per-frame labels from phoneme spans.

Classes, in this order (the index is the label a model learns):

    0 rest       silence and pauses ("_", "_:", "_!", ...), the mouth at rest
    1 open       open and central vowels: a, a#, A:, aa, aI, aU, V, @, 3:, ...
    2 spread     front vowels, lips spread: e, E, eI, i, I, i:, e@, i@, ...
    3 round      rounded vowels and w: o, O, O:, 0, u, U, u:, oU, OI, U@, w
    4 closed     lips closed: m, b, p
    5 lip_teeth  lower lip on the upper teeth: f, v
    6 other      the other consonants: t d n l s z k g h r j T D S Z tS dZ N x ?, ...

Each phoneme also has a jaw opening target in 0..1 (0 closed, 1 as wide as speech goes): open
vowels open most, rounded and front vowels less, closed and lip-teeth consonants hardly at all.

Mnemonics are espeak-ng's ascii names for its English voices as they come in the phoneme events.
Stress marks (' , % =) are dropped; a name that is not in the table is tried without its trailing
modifiers (length ":", ";", "#", "-", digits: "a#" -> "a", "i@3" -> "i@", "t2" -> "t"); what is
still unknown counts as "other" with a debug line (once per name).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from avatar.drive.phonemes import PhonemeSpan

log = logging.getLogger(__name__)

VISEMES: tuple[str, ...] = ("rest", "open", "spread", "round", "closed", "lip_teeth", "other")
REST, OPEN, SPREAD, ROUND, CLOSED, LIP_TEETH, OTHER = range(len(VISEMES))

# mnemonic -> (class, jaw target)
_TABLE: dict[str, tuple[int, float]] = {
    # rest
    "_": (REST, 0.0),
    # open / central vowels
    "a": (OPEN, 0.9), "a#": (OPEN, 0.7), "a2": (OPEN, 0.6), "aa": (OPEN, 0.9), "A": (OPEN, 1.0),
    "A:": (OPEN, 1.0), "A@": (OPEN, 0.9), "A#": (OPEN, 0.9), "aI": (OPEN, 0.85), "aI@": (OPEN, 0.85),
    "aI3": (OPEN, 0.85), "aU": (OPEN, 0.85), "aU@": (OPEN, 0.85), "V": (OPEN, 0.7), "@": (OPEN, 0.45),
    "@2": (OPEN, 0.4), "@5": (OPEN, 0.4), "@L": (OPEN, 0.4), "3": (OPEN, 0.45), "3:": (OPEN, 0.5),
    "a@": (OPEN, 0.85), "VR": (OPEN, 0.5), "3:r": (OPEN, 0.5), "A:r": (OPEN, 0.9),
    # spread / front vowels
    "e": (SPREAD, 0.5), "E": (SPREAD, 0.6), "E2": (SPREAD, 0.55), "E3": (SPREAD, 0.55), "e@": (SPREAD, 0.6),
    "eI": (SPREAD, 0.5), "i": (SPREAD, 0.25), "i:": (SPREAD, 0.25), "I": (SPREAD, 0.35), "I2": (SPREAD, 0.3),
    "I#": (SPREAD, 0.3), "i@": (SPREAD, 0.35), "i@3": (SPREAD, 0.35), "IR": (SPREAD, 0.35), "y": (SPREAD, 0.25),
    # round vowels and w
    "o": (ROUND, 0.5), "o@": (ROUND, 0.55), "O": (ROUND, 0.65), "O:": (ROUND, 0.6), "O@": (ROUND, 0.6),
    "0": (ROUND, 0.7), "OI": (ROUND, 0.6), "oU": (ROUND, 0.5), "oU#": (ROUND, 0.5), "u": (ROUND, 0.3),
    "u:": (ROUND, 0.3), "U": (ROUND, 0.35), "U@": (ROUND, 0.4), "u@": (ROUND, 0.4), "w": (ROUND, 0.2),
    "W": (ROUND, 0.2),
    # closed lips
    "m": (CLOSED, 0.0), "b": (CLOSED, 0.0), "p": (CLOSED, 0.0), "m-": (CLOSED, 0.0),
    # lip on teeth
    "f": (LIP_TEETH, 0.1), "v": (LIP_TEETH, 0.1),
    # other consonants
    "t": (OTHER, 0.2), "d": (OTHER, 0.2), "n": (OTHER, 0.2), "l": (OTHER, 0.25), "s": (OTHER, 0.1),
    "z": (OTHER, 0.1), "k": (OTHER, 0.3), "g": (OTHER, 0.3), "h": (OTHER, 0.4), "r": (OTHER, 0.25),
    "j": (OTHER, 0.2), "T": (OTHER, 0.15), "D": (OTHER, 0.15), "S": (OTHER, 0.15), "Z": (OTHER, 0.15),
    "tS": (OTHER, 0.15), "dZ": (OTHER, 0.15), "N": (OTHER, 0.3), "x": (OTHER, 0.3), "?": (OTHER, 0.2),
    "l/": (OTHER, 0.25), "r/": (OTHER, 0.25), "n-": (OTHER, 0.2), "l-": (OTHER, 0.25), "d#": (OTHER, 0.2),
    "t#": (OTHER, 0.2), "z#": (OTHER, 0.1), "t2": (OTHER, 0.2), "d2": (OTHER, 0.2), "hw": (ROUND, 0.2),
}

_STRESS = "'\",%="
_MODIFIERS = ":;#-/[0123456789"
_UNKNOWN_LOGGED: set[str] = set()


def _lookup(mnemonic: str) -> tuple[int, float]:
    name = "".join(ch for ch in mnemonic.strip() if ch not in _STRESS)
    if not name or name.startswith("_"):
        return _TABLE["_"]
    if name in _TABLE:
        return _TABLE[name]
    base = name
    while base and base[-1] in _MODIFIERS and base != "0":
        base = base[:-1]
        if base in _TABLE:
            return _TABLE[base]
    if mnemonic not in _UNKNOWN_LOGGED:
        _UNKNOWN_LOGGED.add(mnemonic)
        log.debug("unknown espeak phoneme %r: counted as %s", mnemonic, VISEMES[OTHER])
    return OTHER, 0.2


def viseme_class(mnemonic: str) -> int:
    """The viseme class index (into VISEMES) of an espeak mnemonic."""
    return _lookup(mnemonic)[0]


def viseme_name(mnemonic: str) -> str:
    """The viseme class name of an espeak mnemonic ("open", "closed", ...)."""
    return VISEMES[_lookup(mnemonic)[0]]


def jaw_target(mnemonic: str) -> float:
    """The jaw opening (0..1) the phoneme asks for."""
    return _lookup(mnemonic)[1]


def frame_labels(
    spans: Sequence[PhonemeSpan], fps: float | None = None, n_frames: int = 0, *, hop_s: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame (class indices int64 (n_frames,), jaw targets float32 (n_frames,)).

    Give either `fps` or `hop_s`. Frame k covers [k * hop, (k + 1) * hop) and takes the phoneme at
    its centre, (k + 0.5) * hop; frames outside every span are rest with the jaw closed.
    """
    if (fps is None) == (hop_s is None):
        raise ValueError("give exactly one of fps and hop_s")
    if hop_s is not None:
        hop = float(hop_s)
    else:
        assert fps is not None
        hop = 1.0 / float(fps)
    if hop <= 0:
        raise ValueError(f"the frame hop must be positive, got {hop}")
    classes = np.full(n_frames, REST, dtype=np.int64)
    jaw = np.zeros(n_frames, dtype=np.float32)
    centres = (np.arange(n_frames) + 0.5) * hop
    for span in spans:
        lo, hi = np.searchsorted(centres, [span.start_s, span.end_s], side="left")
        if hi > lo:
            cls, target = _lookup(span.phoneme)
            classes[lo:hi] = cls
            jaw[lo:hi] = target
    return classes, jaw
