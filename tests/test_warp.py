"""The landmark-warp animator, on real speech made by espeak-ng (conftest) and the built-in portrait."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from avatar.audio import load_audio_file
from avatar.config import AppConfig, WarpConfig, with_overrides
from avatar.generators.warp import WarpAnimator, WarpStream
from avatar.lipsync import audio_envelope
from avatar.portrait import Portrait, load_builtin_portrait
from avatar.windows import AudioWindow, AudioWindower, iter_clip_windows

SIZE = 256
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def cfg(config: AppConfig) -> AppConfig:
    return with_overrides(config, video={"width_px": SIZE, "height_px": SIZE})


@pytest.fixture(scope="module")
def portrait(cfg: AppConfig) -> Portrait:
    return load_builtin_portrait("astronaut", cfg.portrait, cfg.video)


@pytest.fixture(scope="module")
def small(config: AppConfig) -> tuple[AppConfig, Portrait]:
    """128 x 128: for tests that read only the drive values, where pixels are just cost."""
    cfg = with_overrides(config, video={"width_px": 128, "height_px": 128})
    return cfg, load_builtin_portrait("astronaut", cfg.portrait, cfg.video)




def windows_for(cfg: AppConfig, samples: np.ndarray) -> list[AudioWindow]:
    return list(iter_clip_windows(np.asarray(samples, dtype=np.int16), cfg.windows, cfg.vad, cfg.video.fps))


def animator(cfg: AppConfig, **warp: Any) -> WarpAnimator:
    return WarpAnimator(dataclasses.replace(cfg.warp, **warp), cfg.video, torch.device("cpu"))


def render(anim: WarpAnimator, stream: WarpStream, windows: list[AudioWindow]) -> tuple[np.ndarray, list[dict]]:
    frames, drives = [], []
    for window in windows:
        out = anim.step([stream], [window])[0]
        frames.append(out.rgb)
        drives.append(dict(out.drive))
    return np.stack(frames), drives


def box(points: np.ndarray, margin: float, size: int) -> tuple[slice, slice]:
    x0, y0 = points.min(axis=0) - margin
    x1, y1 = points.max(axis=0) + margin
    return slice(max(0, int(y0)), min(size, int(y1) + 1)), slice(max(0, int(x0)), min(size, int(x1) + 1))


def mouth_box(portrait: Portrait) -> tuple[slice, slice]:
    lm = portrait.landmarks
    mw = float(np.linalg.norm(lm[54] - lm[48]))
    ys, xs = box(lm[48:68], 0.2 * mw, SIZE)
    return slice(ys.start, min(SIZE, ys.stop + int(0.3 * mw))), xs


def test_config_and_idle_frame(cfg: AppConfig, portrait: Portrait) -> None:
    anim = animator(cfg)
    stream = anim.new_stream(portrait, seed=0)
    assert stream.frame_index == 0
    idle = anim.idle_frame(stream)
    assert idle.shape == (SIZE, SIZE, 3) and idle.dtype == np.uint8
    assert np.abs(idle.astype(int) - portrait.rgb.astype(int)).max() <= 1
    assert anim.step([], []) == []


def test_same_seed_same_frames(cfg: AppConfig, portrait: Portrait, speech: np.ndarray) -> None:
    windows = windows_for(cfg, speech)[:40]
    anim = animator(cfg)
    a, _ = render(anim, anim.new_stream(portrait, seed=7), windows)
    b, _ = render(anim, anim.new_stream(portrait, seed=7), windows)
    assert np.array_equal(a, b)


def test_different_seeds_move_differently(cfg: AppConfig, portrait: Portrait) -> None:
    windows = windows_for(cfg, np.zeros(16000 * 2, dtype=np.int16))
    anim = animator(cfg)
    a, da = render(anim, anim.new_stream(portrait, seed=1), windows)
    b, db = render(anim, anim.new_stream(portrait, seed=2), windows)
    assert not np.array_equal(a, b)
    yaw_a = np.array([d["head_yaw"] for d in da])
    yaw_b = np.array([d["head_yaw"] for d in db])
    assert np.abs(yaw_a - yaw_b).max() > 0.2
    # Idle motion in silence is there but small.
    assert 0.05 < np.abs(yaw_a).max() < 3.0


def test_batch_equals_single_steps(cfg: AppConfig, portrait: Portrait, speech: np.ndarray) -> None:
    # A second portrait: the same photo moved by a few pixels, so its rig and pixels differ.
    shifted = Portrait(
        name="shifted",
        rgb=np.ascontiguousarray(np.roll(portrait.rgb, (6, -9), axis=(0, 1))),
        landmarks=portrait.landmarks + np.array([-9.0, 6.0], dtype=np.float32),
        face_box=portrait.face_box,
    )
    windows = windows_for(cfg, speech)[10:40]
    quiet = windows_for(cfg, (speech // 10).astype(np.int16))[10:40]
    anim = animator(cfg)
    specs = [(portrait, 1, windows), (portrait, 2, quiet), (shifted, 3, windows)]
    batch_streams = [anim.new_stream(p, seed) for p, seed, _ in specs]
    batched: list[list[np.ndarray]] = [[] for _ in specs]
    for k in range(len(windows)):
        outs = anim.step(batch_streams, [w[k] for _, _, w in specs])
        for i, out in enumerate(outs):
            batched[i].append(out.rgb)
    for i, (p, seed, w) in enumerate(specs):
        single, _ = render(anim, anim.new_stream(p, seed), w)
        diff = np.abs(np.stack(batched[i]).astype(int) - single.astype(int))
        assert diff.max() <= 1, f"stream {i}: batched and single frames differ by {diff.max()}"


def test_causal(cfg: AppConfig, portrait: Portrait, speech: np.ndarray) -> None:
    k = 40
    windower = AudioWindower(cfg.windows, cfg.vad, cfg.video.fps)
    cut = windower.frame_sample_index(k) + cfg.windows.lookahead_samples
    altered = speech.copy()
    altered[cut:] = np.random.default_rng(0).integers(-20000, 20000, size=altered.size - cut, dtype=np.int16)
    anim = animator(cfg)
    a, _ = render(anim, anim.new_stream(portrait, seed=3), windows_for(cfg, speech)[: k + 1])
    b, _ = render(anim, anim.new_stream(portrait, seed=3), windows_for(cfg, altered)[: k + 1])
    assert np.array_equal(a, b)


def test_mouth_moves_in_speech_and_rests_in_silence(cfg: AppConfig, portrait: Portrait, speech: np.ndarray) -> None:
    windows = windows_for(cfg, speech)
    anim = animator(cfg, head_motion=0.0, breathing=0.0)
    stream = anim.new_stream(portrait, seed=0)
    idle = anim.idle_frame(stream).astype(np.float64)
    frames, drives = render(anim, stream, windows)
    ys, xs = mouth_box(portrait)
    change = np.abs(frames[:, ys, xs].astype(np.float64) - idle[ys, xs]).mean(axis=(1, 2, 3))
    fps = cfg.video.fps
    lead = change[: int(0.4 * fps)]  # the 0.5 s of silence before the sentence
    tail = change[-3:]  # the end of the 0.5 s of silence after it
    assert lead.max() < 0.5 and tail.max() < 1.0, (lead.max(), tail.max())
    assert np.percentile(change, 90) > 8.0, np.percentile(change, 90)
    # Mouth opening from pixels: dark pixels in the mouth box, correlated with the jaw drive.
    luma = frames[:, ys, xs].astype(np.float64).mean(axis=-1)
    idle_luma = idle[ys, xs].mean(axis=-1)
    dark = ((luma < 70) & (idle_luma >= 70)).sum(axis=(1, 2))
    jaw = np.array([d["jaw"] for d in drives])
    assert np.corrcoef(dark, jaw)[0, 1] > 0.8


def test_jaw_follows_speech_envelope(small: tuple[AppConfig, Portrait], speech: np.ndarray) -> None:
    cfg, portrait = small
    windows = windows_for(cfg, speech)
    anim = animator(cfg)
    _, drives = render(anim, anim.new_stream(portrait, seed=0), windows)
    jaw = np.array([d["jaw"] for d in drives])
    env = audio_envelope(speech, len(jaw), cfg.video.fps, window_s=0.04)
    assert np.corrcoef(jaw, env)[0, 1] > 0.6
    assert jaw[:10].max() == 0.0  # silence before the sentence: closed
    assert jaw.max() > 0.8
    for name in ("jaw", "width", "rounding", "blink", "head_pitch", "head_yaw", "head_roll"):
        assert name in drives[0]


@pytest.mark.parametrize("shapes", ["visemes", "spectral"])
def test_quiet_and_clipped_speech_still_animate(
    small: tuple[AppConfig, Portrait], speech: np.ndarray, clipped_speech_wav: Path, shapes: str
) -> None:
    cfg, portrait = small
    anim = animator(cfg, mouth_shapes=shapes)
    jaws = {}
    for name, audio in (
        ("normal", speech),
        ("quiet", (speech.astype(np.float64) * 0.1).astype(np.int16)),  # -20 dB
        ("clipped", load_audio_file(clipped_speech_wav)),
    ):
        _, drives = render(anim, anim.new_stream(portrait, seed=0), windows_for(cfg, audio))
        jaws[name] = np.array([d["jaw"] for d in drives])
    env = audio_envelope(speech, len(jaws["normal"]), cfg.video.fps, window_s=0.04)
    speaking = env > 0.01
    for name in ("quiet", "clipped"):
        jaw = jaws[name][: len(env)]
        assert jaw[speaking].mean() > 0.6 * jaws["normal"][speaking].mean(), name
        assert np.corrcoef(jaw, env)[0, 1] > 0.5, name
    # Clipped audio must not hold the mouth wide open: it still closes between syllables.
    assert (jaws["clipped"][speaking] < 0.4).mean() > 0.1


def test_silence_keeps_mouth_shut_and_blinks_at_human_rate(small: tuple[AppConfig, Portrait]) -> None:
    seconds = 20
    cfg, portrait = small
    windows = windows_for(cfg, np.zeros(16000 * seconds, dtype=np.int16))
    anim = animator(cfg)
    stream = anim.new_stream(portrait, seed=5)
    blinks = []
    for window in windows:
        out = anim.step([stream], [window])[0]
        assert out.drive["jaw"] == 0.0
        blinks.append(out.drive["blink"])
    closed = np.array(blinks) > 0.5
    count = int((closed[1:] & ~closed[:-1]).sum() + closed[0])
    assert 0.15 * seconds <= count <= 0.6 * seconds, count


def test_background_still_and_face_close_to_portrait(cfg: AppConfig, portrait: Portrait, speech: np.ndarray) -> None:
    windows = windows_for(cfg, speech)
    anim = animator(cfg, head_motion=1.5)  # livelier than default, to be sure
    frames, _ = render(anim, anim.new_stream(portrait, seed=11), windows)
    rest = portrait.rgb.astype(int)
    c = 20
    for ys, xs in ((slice(0, c), slice(0, c)), (slice(0, c), slice(-c, None))):  # top corners: background
        assert np.abs(frames[:, ys, xs].astype(int) - rest[ys, xs]).max() <= 1
    for ys, xs in ((slice(-c, None), slice(0, c)), (slice(-c, None), slice(-c, None))):  # shoulders breathe
        assert np.abs(frames[:, ys, xs].astype(int) - rest[ys, xs]).mean() < 1.0
    # Outside mouth and eyes the frames stay close to the portrait.
    lm = portrait.landmarks
    masked_rest = portrait.rgb.copy()
    boxes = [mouth_box(portrait), box(lm[36:42], 0.02 * SIZE, SIZE), box(lm[42:48], 0.02 * SIZE, SIZE)]
    for ys, xs in boxes:
        masked_rest[ys, xs] = 0
    worst = 1.0
    for frame in frames[::3]:
        masked = frame.copy()
        for ys, xs in boxes:
            masked[ys, xs] = 0
        worst = min(worst, structural_similarity(masked, masked_rest, channel_axis=2, data_range=255))
    assert worst > 0.8, worst


@pytest.mark.parametrize("size", [512])
def test_other_output_size(config: AppConfig, size: int, speech: np.ndarray) -> None:
    cfg = with_overrides(config, video={"width_px": size, "height_px": size})
    p = load_builtin_portrait("astronaut", cfg.portrait, cfg.video)
    anim = WarpAnimator(WarpConfig(), cfg.video, torch.device("cpu"))
    stream = anim.new_stream(p, seed=0)
    windows = windows_for(cfg, speech)[30:40]
    out = anim.step([stream] * 1, windows[:1])
    assert out[0].rgb.shape == (size, size, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(cfg: AppConfig, portrait: Portrait, speech: np.ndarray) -> None:
    windows = windows_for(cfg, speech)[:30]
    cpu = WarpAnimator(cfg.warp, cfg.video, torch.device("cpu"))
    gpu = WarpAnimator(cfg.warp, cfg.video, torch.device("cuda"))
    a, _ = render(cpu, cpu.new_stream(portrait, 4), windows)
    b, _ = render(gpu, gpu.new_stream(portrait, 4), windows)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


@pytest.mark.parametrize("shapes", ["visemes", "spectral"])
def test_vowel_shapes(small: tuple[AppConfig, Portrait], audio_dir: Path, shapes: str) -> None:
    """Rounded vowels narrow the lips, spread ones widen them, open ones open the jaw, m presses:
    with the learned shapes (the default) and with the band-energy rules."""
    from avatar.speech import synthesize_speech

    cfg, portrait = small
    anim = animator(cfg, mouth_shapes=shapes)
    stats = {}
    for name, text in (("oo", "Who knew? Ooh, you too."), ("ee", "See? Eee, we agree."), ("ah", "Ah, father, ah.")):
        audio = load_audio_file(synthesize_speech(text, audio_dir / f"shape_{name}.wav"))
        _, drives = render(anim, anim.new_stream(portrait, seed=0), windows_for(cfg, audio))
        active = [d for d in drives if d["jaw"] > 0.1]
        stats[name] = {k: float(np.mean([d[k] for d in active])) for k in ("jaw", "width", "rounding")}
    assert stats["oo"]["rounding"] > 0.3 > stats["ee"]["rounding"], stats
    assert stats["ee"]["width"] > 0.3 > stats["oo"]["width"], stats
    assert stats["ah"]["jaw"] > stats["oo"]["jaw"] and stats["ah"]["jaw"] > stats["ee"]["jaw"], stats
    audio = load_audio_file(synthesize_speech("Mmm, mama, mmm.", audio_dir / "shape_mm.wav"))
    _, drives = render(anim, anim.new_stream(portrait, seed=0), windows_for(cfg, audio))
    assert max(d["press"] for d in drives) > 0.5


def test_non_square_output_and_resized_portrait(config: AppConfig, portrait: Portrait, speech: np.ndarray) -> None:
    cfg = with_overrides(config, video={"width_px": 192, "height_px": 128})
    anim = WarpAnimator(cfg.warp, cfg.video, torch.device("cpu"))
    stream = anim.new_stream(portrait, seed=0)  # a 256 x 256 portrait: resized to the output
    frames, drives = render(anim, stream, windows_for(cfg, speech)[20:35])
    assert frames.shape[1:] == (128, 192, 3)
    assert max(d["jaw"] for d in drives) > 0.3
