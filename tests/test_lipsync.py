"""The lip-sync measures find a known lag, and the envelope follows loudness."""

from __future__ import annotations

import numpy as np

from avatar.lipsync import audio_envelope, count_blinks, lip_sync


def test_lip_sync_finds_the_lag() -> None:
    rng = np.random.default_rng(0)
    envelope = np.convolve(rng.random(300), np.ones(5) / 5, mode="same")
    late_mouth = np.concatenate([np.zeros(2), envelope[:-2]])  # the mouth 2 frames after the sound
    corr0, best_lag, best = lip_sync(late_mouth, envelope)
    assert best_lag == 2 and best > 0.99 and corr0 < best
    assert lip_sync(envelope, envelope)[1] == 0


def test_envelope_follows_loudness() -> None:
    fps = 25
    audio = np.zeros(16_000 * 2, np.int16)
    audio[16_000:] = (8000 * np.sin(np.arange(16_000) * 0.3)).astype(np.int16)  # loud second half
    env = audio_envelope(audio, 2 * fps, fps)
    assert env.shape == (50,)
    assert env[:24].max() == 0.0 and env[26:].min() > 0.15


def test_blinks_are_counted() -> None:
    darkness = np.full(100, 0.5)
    darkness[[10, 11, 50, 80, 81, 82]] = 0.2
    assert count_blinks(darkness) == 3
