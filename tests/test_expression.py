"""Expression from the voice (avatar/drive/expression.py): the pitch tracker hears the pitch, the brows
rise on accented words and not elsewhere, a monotone and silence keep the face calm, the strength
scales it, batching equals one stream at a time, the future past the lookahead is not heard, and the
warp animator carries it without folding the picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from avatar.audio import load_audio_file
from avatar.config import SAMPLE_RATE_HZ, AppConfig, with_overrides
from avatar.drive.expression import ExpressionDriver, ExpressionState, track_pitch
from avatar.errors import ConfigError
from avatar.generators.warp import WarpAnimator
from avatar.generators.warp_drive import MouthDriver, MouthDriveState
from avatar.portrait import load_builtin_portrait
from avatar.windows import iter_clip_windows
from bench.expression import accented_speech, monotone, run, speak
from tests.warp_maps import area_ratio

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py
SENTENCE = "we never said that she took the red car to the city on monday"


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    work = tmp_path_factory.mktemp("expression")
    accented, accent = accented_speech(work, AppConfig().video.fps)
    return {
        "accented": accented,
        "accent": accent,
        "monotone": monotone(SENTENCE, work / "mono.wav"),
        "plain": speak(SENTENCE, work / "plain.wav"),
    }


@pytest.mark.parametrize("f0_hz", [80.0, 120.0, 210.0, 340.0])
def test_the_pitch_tracker_hears_the_pitch(f0_hz: float) -> None:
    t = np.arange(1100) / SAMPLE_RATE_HZ
    voice = np.sin(2 * np.pi * f0_hz * t) + 0.5 * np.sin(4 * np.pi * f0_hz * t) + 0.3 * np.sin(6 * np.pi * f0_hz * t)
    f0, depth = track_pitch(voice[None])
    assert abs(f0[0] - f0_hz) < 0.01 * f0_hz and depth[0] < 0.05
    noise = np.random.default_rng(1).standard_normal((1, 1100))
    assert track_pitch(noise)[1][0] > 0.5  # noise is not voiced


def test_the_brows_rise_on_accented_words(clips: dict[str, np.ndarray]) -> None:
    brows = run(clips["accented"], AppConfig())["brows"]
    accent = clips["accent"][: len(brows)]
    brows = brows[: len(accent)]
    on, off = brows[accent > 0].mean(), brows[accent == 0].mean()
    assert on > 0.3 and on > 4.0 * off, (on, off)
    assert np.corrcoef(brows[1:], accent[:-1])[0, 1] > 0.6  # a frame behind the voice at most


def test_a_monotone_and_silence_keep_the_face_calm(clips: dict[str, np.ndarray]) -> None:
    cfg = AppConfig()
    accented = run(clips["accented"], cfg)
    monotone = run(clips["monotone"], cfg)
    silence = run(np.zeros(2 * SAMPLE_RATE_HZ, np.int16), cfg)
    for name in ("brows", "widen", "nod", "smile"):
        assert np.all(silence[name] == 0.0), name
        assert np.sqrt(np.mean(monotone[name] ** 2)) < 0.06, (name, np.sqrt(np.mean(monotone[name] ** 2)))
    assert np.sqrt(np.mean(accented["brows"] ** 2)) > 4.0 * np.sqrt(np.mean(monotone["brows"] ** 2)) + 0.05


def test_a_lively_voice_smiles_slightly(clips: dict[str, np.ndarray]) -> None:
    # The accented words span a wide pitch range; the plain sentence and the monotone do not.
    smiles = {name: run(clips[name], AppConfig())["smile"] for name in ("accented", "plain", "monotone")}
    assert 0.2 < smiles["accented"].max() < 0.6, smiles["accented"].max()
    assert np.abs(smiles["plain"]).max() < 0.1 and np.all(smiles["monotone"] == 0.0)


def test_a_real_recording_moves_the_brows() -> None:
    path = Path("/usr/share/sounds/alsa/Front_Center.wav")
    if not path.is_file():
        pytest.skip("alsa-utils' recordings are not installed")
    r = run(load_audio_file(path), AppConfig())
    assert r["brows"].max() > 0.3 and r["brows"][:3].max() == 0.0


def test_strength_scales_and_zero_turns_it_off(clips: dict[str, np.ndarray]) -> None:
    with pytest.raises(ConfigError, match="warp.expression"):
        with_overrides(AppConfig(), warp={"expression": 3.0})
    full = run(clips["accented"], AppConfig())
    half = run(clips["accented"], with_overrides(AppConfig(), warp={"expression": 0.5}))
    off = run(clips["accented"], with_overrides(AppConfig(), warp={"expression": 0.0}))
    for name in ("brows", "widen", "nod", "smile"):
        np.testing.assert_allclose(half[name], 0.5 * full[name], atol=1e-9)
        assert np.all(off[name] == 0.0)


def test_batched_equals_one_by_one_and_is_causal(clips: dict[str, np.ndarray]) -> None:
    a = clips["accented"].astype(np.float32) / 32768.0
    b = clips["plain"].astype(np.float32) / 32768.0
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    past, ahead, hop = 4000, 640, 640
    frames = (n - ahead) // hop

    def windows(x: np.ndarray, k: int) -> np.ndarray:
        end = k * hop + ahead
        w = np.zeros(past + ahead, np.float32)
        seg = x[max(0, end - past - ahead) : end]
        w[len(w) - len(seg) :] = seg
        return w

    driver = ExpressionDriver(25)
    mouth = MouthDriver(25, attack_s=0.03, release_s=0.12)  # loudness and level, as the animator pairs them

    def step(states: list[tuple[ExpressionState, MouthDriveState]], w: np.ndarray, speaking: np.ndarray) -> list:
        drives = mouth.step([m for _, m in states], w, past, speaking)
        loud, level = np.array([d.loudness_db for d in drives]), np.array([d.level_db for d in drives])
        return driver.step([e for e, _ in states], w, past, speaking, loud, level)

    def fresh() -> tuple[ExpressionState, MouthDriveState]:
        return ExpressionState(), MouthDriveState()

    together = [fresh(), fresh()]
    alone = [fresh(), fresh()]
    future = fresh()
    changed = a.copy()
    cut = (frames // 2) * hop + ahead
    changed[cut:] = np.random.default_rng(2).uniform(-0.5, 0.5, n - cut)
    for k in range(frames):
        speaking = np.array([True, True])
        both = step(together, np.stack([windows(a, k), windows(b, k)]), speaking)
        one = [step([alone[i]], windows(x, k)[None], speaking[:1])[0] for i, x in enumerate((a, b))]
        assert both == one
        other = step([future], windows(changed, k)[None], speaking[:1])[0]
        if k < frames // 2:
            assert other == one[0], k  # audio after this window's end is not heard


def test_the_animator_moves_brows_and_head_without_folding(clips: dict[str, np.ndarray]) -> None:
    # No idle motion: only the voice's expression moves the brows' pixels.
    cfg = with_overrides(
        AppConfig(), video={"width_px": 256, "height_px": 256}, warp={"head_motion": 0.0, "breathing": 0.0}
    )
    portrait = load_builtin_portrait("astronaut", cfg.portrait, cfg.video)
    anim = WarpAnimator(cfg.warp, cfg.video, torch.device("cpu"))
    stream = anim.new_stream(portrait, seed=1)
    outputs = [anim.step([stream], [w])[0] for w in iter_clip_windows(clips["accented"], cfg.windows, cfg.vad, 25)]
    brows = np.array([o.drive["brows"] for o in outputs])
    assert brows.max() > 0.5
    raised = outputs[int(np.argmax(brows))].rgb.astype(np.float64)
    rest = outputs[0].rgb.astype(np.float64)
    lm = portrait.landmarks
    y0, y1 = int(lm[17:27, 1].min()) - 12, int(lm[17:27, 1].max()) + 4
    x0, x1 = int(lm[17, 0]), int(lm[26, 0])
    assert np.abs(raised[y0:y1, x0:x1] - rest[y0:y1, x0:x1]).mean() > 2.0  # the brows moved the pixels
    for drive in ({"brows": 1.0, "widen": 1.0}, {"smile": 1.0, "width": 1.0}, {"smile": -1.0, "jaw": 1.0}):
        source = anim.backward_map(stream, drive, (2.4, 2.0, 1.0))
        assert area_ratio(source).min() > 0.0, drive
