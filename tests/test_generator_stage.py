"""Every frame a generator hands out passes through its frame stage (the disclosure stage), once per
step for the whole batch, on the generator's device, with each stream's session number in batch
order; idle frames too. And the tgan paste, moved onto the device, makes the frames it made before.

The stage here is a double (`MarkingStage`), so these tests check the plumbing of base.py, not the
mark or the watermark (tests of avatar.disclosure do that).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from media_doubles import REST_LEVEL, LoudnessGenerator, flat_portrait, window

from avatar.config import AppConfig, PortraitConfig, VideoConfig, WindowConfig, with_overrides
from avatar.disclosure.payload import session_number
from avatar.engine import InferenceEngine
from avatar.errors import GeneratorError
from avatar.generators.base import FrameStage
from avatar.generators.tgan import TganGenerator, TganModel, TganStream
from avatar.generators.warp import WarpAnimator
from avatar.portrait import Portrait, load_builtin_portrait
from avatar.session import AvatarSession
from avatar.train.dataset import cut_windows
from avatar.windows import AudioWindow
from tests.talking_faces import TINY

SIZE = 128


class MarkingStage:
    """Adds session_number / 255 to the red value of pixel (0, 0) of each frame, in place, and
    records every call: (batch shape, device, dtype, value range, session numbers)."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], torch.device, torch.dtype, float, float, list[int]]] = []

    def apply(self, frames: torch.Tensor, session_numbers: Sequence[int]) -> torch.Tensor:
        numbers = list(session_numbers)
        self.calls.append(
            (tuple(frames.shape), frames.device, frames.dtype, float(frames.min()), float(frames.max()), numbers)
        )
        frames[:, 0, 0, 0] += torch.tensor(numbers, dtype=frames.dtype, device=frames.device) / 255.0
        return frames


def test_the_double_is_a_frame_stage() -> None:
    stage: FrameStage = MarkingStage()  # what mypy checks in avatar/: the stage only needs apply()
    assert stage.apply(torch.zeros(1, 3, 2, 2), [3])[0, 0, 0, 0] == pytest.approx(3 / 255)


@pytest.fixture(scope="module")
def cfg() -> AppConfig:
    return with_overrides(AppConfig(), video={"width_px": SIZE, "height_px": SIZE})


@pytest.fixture(scope="module")
def portrait(cfg: AppConfig) -> Portrait:
    return load_builtin_portrait("astronaut", cfg.portrait, cfg.video)


def speech_windows(cfg: AppConfig, speech: np.ndarray, frames: int, start: int = 25) -> list[AudioWindow]:
    cut = cut_windows(speech, np.arange(start, start + frames), cfg.video.fps, cfg.windows)
    return [
        AudioWindow(start + i, cut[i], cfg.windows.past_samples, True, cfg.video.fps) for i in range(frames)
    ]


def warp_pair(cfg: AppConfig) -> tuple[WarpAnimator, WarpAnimator, MarkingStage]:
    stage = MarkingStage()
    return WarpAnimator(cfg.warp, cfg.video), WarpAnimator(cfg.warp, cfg.video, disclosure=stage), stage


def test_session_numbers_reach_the_stage_per_stream_in_batch_order(
    cfg: AppConfig, portrait: Portrait, speech: np.ndarray
) -> None:
    plain, marked, stage = warp_pair(cfg)
    numbers = [5, 0, 42]
    plain_streams = [plain.new_stream(portrait, seed) for seed in (1, 2, 3)]
    marked_streams = [
        marked.new_stream(portrait, seed, session_number=n) for seed, n in zip((1, 2, 3), numbers, strict=True)
    ]
    assert [s.session_number for s in plain_streams] == [0, 0, 0]
    assert [s.session_number for s in marked_streams] == numbers
    windows = speech_windows(cfg, speech, 4)
    for k, wnd in enumerate(windows):
        a = plain.step(plain_streams, [wnd] * 3)
        b = marked.step(marked_streams, [wnd] * 3)
        assert len(stage.calls) == k + 1  # one stage call per step, for the whole batch
        shape, device, dtype, low, high, got = stage.calls[-1]
        assert shape == (3, 3, SIZE, SIZE) and device == marked.device and dtype == torch.float32
        assert 0.0 <= low and high <= 1.0  # floats 0..1, before any uint8 conversion
        assert got == numbers
        for n, fa, fb in zip(numbers, a, b, strict=True):
            assert fb.rgb.shape == (SIZE, SIZE, 3) and fb.rgb.dtype == np.uint8
            assert int(fa.rgb[0, 0, 0]) + n <= 255  # the mark below is not clipped
            assert int(fb.rgb[0, 0, 0]) == int(fa.rgb[0, 0, 0]) + n  # each frame got its own stream's number
            rest = np.ones((SIZE, SIZE, 3), bool)
            rest[0, 0, 0] = False
            assert np.array_equal(fa.rgb[rest], fb.rgb[rest])  # nothing else differs
            assert fa.drive == fb.drive

    # Another order of the same streams: the numbers follow the streams.
    marked.step(marked_streams[::-1], [windows[0]] * 3)
    assert stage.calls[-1][-1] == numbers[::-1]


def test_idle_frames_pass_through_the_stage(cfg: AppConfig, portrait: Portrait) -> None:
    plain, marked, stage = warp_pair(cfg)
    stream = marked.new_stream(portrait, seed=0, session_number=9)
    idle = marked.idle_frame(stream)
    assert len(stage.calls) == 1
    assert stage.calls[0][0] == (1, 3, SIZE, SIZE) and stage.calls[0][-1] == [9]
    unmarked = plain.idle_frame(plain.new_stream(portrait, seed=0))
    assert np.array_equal(unmarked, portrait.rgb)  # stage None: the portrait itself, as before
    assert int(idle[0, 0, 0]) == int(portrait.rgb[0, 0, 0]) + 9
    # The stage marks a copy: the stream's portrait is untouched, a second idle frame is the same.
    assert np.array_equal(marked.idle_frame(stream), idle)
    assert float(stream.image[0, 0, 0]) * 255 == pytest.approx(float(portrait.rgb[0, 0, 0]), abs=1e-3)


def test_an_empty_batch_calls_no_stage(cfg: AppConfig) -> None:
    _, marked, stage = warp_pair(cfg)
    assert marked.step([], []) == []
    assert stage.calls == []


def test_session_numbers_are_32_bit(cfg: AppConfig, portrait: Portrait) -> None:
    plain, _, _ = warp_pair(cfg)
    for bad in (-1, 1 << 32):
        with pytest.raises(GeneratorError, match="32-bit"):
            plain.new_stream(portrait, seed=0, session_number=bad)
    assert plain.new_stream(portrait, seed=0, session_number=(1 << 32) - 1).session_number == (1 << 32) - 1


def test_idle_frame_refuses_a_stream_of_another_generator(cfg: AppConfig, portrait: Portrait) -> None:
    plain, _, _ = warp_pair(cfg)
    with pytest.raises(GeneratorError, match="another generator"):
        plain.idle_frame(LoudnessGenerator().new_stream(portrait, seed=0))


# ---- the engine and the session pass the number on --------------------------------------------


async def test_the_engine_and_the_session_give_the_stream_its_number(
    config: AppConfig, caplog: pytest.LogCaptureFixture
) -> None:
    stage = MarkingStage()
    video = VideoConfig(fps=25, width_px=64, height_px=64)
    small = dataclasses.replace(config, video=video)
    engine = InferenceEngine(LoudnessGenerator(64, 64, 25, disclosure=stage), video)
    await engine.start()
    try:
        stream = await engine.new_stream(flat_portrait(), seed=1, session_number=77)
        assert stream.session_number == 77
        frame = await engine.open(stream).submit(window(0))
        assert int(frame.rgb[0, 0, 0]) == REST_LEVEL + 77 and int(frame.rgb[1, 1, 0]) == REST_LEVEL
        assert stage.calls[-1][-1] == [77]

        session = AvatarSession(small, engine, engine.generator, flat_portrait(), session_id="abc-123")
        caplog.set_level(logging.INFO, logger="avatar.session")
        await session.start()
        try:
            expected = session_number("abc-123")
            assert session.session_number == expected
            assert session._stream is not None and session._stream.session_number == expected
            records = [r for r in caplog.records if r.getMessage() == f"watermark session number {expected:08x}"]
            assert len(records) == 1 and getattr(records[0], "session", None) == "abc-123"
            # The idle frame the session shows first went through the stage with the session's number.
            assert [expected] in [call[-1] for call in stage.calls]
        finally:
            await session.aclose()
    finally:
        await engine.aclose()


# ---- tgan: the paste on the device equals the old CPU paste -----------------------------------

TGAN_VIDEO = VideoConfig(width_px=256, height_px=256)
TGAN_WINDOWS = WindowConfig()


def old_cpu_paste(stream: TganStream, crop: torch.Tensor) -> np.ndarray:
    """The paste as it was before it moved onto the device (numpy copy of the portrait, 0..255)."""
    x, y, w, h = stream.box
    x0, y0, x1, y1 = stream.region
    out = np.array(stream.portrait.rgb, dtype=np.uint8, copy=True)
    if x1 <= x0 or y1 <= y0:
        return out
    face = F.interpolate(crop.unsqueeze(0).float(), size=(h, w), mode="bilinear", align_corners=False)[0]
    face = face[:, y0 - y : y1 - y, x0 - x : x1 - x].add(1.0).mul(127.5)
    background = torch.from_numpy(out).permute(2, 0, 1).float()[:, y0:y1, x0:x1]
    mask = stream.mask.cpu()
    blended = mask * face.cpu() + (1 - mask) * background
    out[y0:y1, x0:x1] = blended.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return out


def moved(portrait: Portrait, scale: float, shift: tuple[float, float]) -> Portrait:
    """The same picture with its landmarks scaled about their centre and shifted: another box."""
    lm = portrait.landmarks.astype(np.float64)
    centre = lm.mean(axis=0)
    landmarks = ((lm - centre) * scale + centre + np.array(shift)).astype(np.float32)
    return dataclasses.replace(portrait, name=f"{portrait.name}-moved", landmarks=landmarks)


def test_tgan_paste_on_the_device_equals_the_old_cpu_paste(speech: np.ndarray) -> None:
    torch.manual_seed(0)
    model = TganModel(TINY).eval()
    base = load_builtin_portrait("astronaut", PortraitConfig(), TGAN_VIDEO)
    portraits = [
        base,
        moved(base, 0.7, (0.0, 0.0)),  # a smaller box
        base,  # the same box as the first: resized together
        moved(base, 1.3, (-110.0, 60.0)),  # a larger box that leaves the picture at the left and bottom
        moved(base, 1.0, (-600.0, 0.0)),  # a box wholly outside: nothing to paste
    ]
    numbers = [11, 22, 33, 44, 55]
    stage = MarkingStage()
    generator = TganGenerator(model, TGAN_VIDEO, TGAN_WINDOWS, torch.device("cpu"), disclosure=stage)
    plain = TganGenerator(model, TGAN_VIDEO, TGAN_WINDOWS, torch.device("cpu"))
    streams = [
        generator.new_stream(p, seed=i, session_number=n)
        for i, (p, n) in enumerate(zip(portraits, numbers, strict=True))
    ]
    twins = [plain.new_stream(p, seed=i) for i, p in enumerate(portraits)]  # the same state: the same crops
    boxes = {s.box[2:] for s in streams}
    assert len(boxes) >= 3 and streams[3].box[0] < 0 and streams[4].region[0] == streams[4].region[2]
    for s, p in zip(twins, portraits, strict=True):
        assert np.array_equal(plain.idle_frame(s), p.rgb)  # the idle frame is the portrait, as before

    fps = TGAN_VIDEO.fps
    for k in range(3):
        cut = cut_windows(speech, np.array([30 + k]), fps, TGAN_WINDOWS)[0]
        windows = [AudioWindow(30 + k, cut, TGAN_WINDOWS.past_samples, True, fps) for _ in streams]
        frames = generator.step(streams, windows)
        assert stage.calls[-1][0] == (5, 3, 256, 256) and stage.calls[-1][-1] == numbers
        crops = plain.generate(twins, windows)
        for i, (frame, twin, crop) in enumerate(zip(frames, twins, crops, strict=True)):
            old = old_cpu_paste(twin, crop)
            new = frame.rgb.copy()
            assert int(new[0, 0, 0]) == min(255, int(old[0, 0, 0]) + numbers[i])
            new[0, 0, 0] = old[0, 0, 0]
            diff = np.abs(new.astype(np.int16) - old.astype(np.int16))
            assert diff.max() <= 1, (i, int(diff.max()))  # within rounding
            assert (diff == 0).mean() > 0.999  # and almost always the very same value
            assert frame.drive == {}
        # Unmarked, the device paste is the old paste within rounding too, and outside boxes exact.
        again = plain.paste(twins, crops)
        for twin, crop, pasted in zip(twins, crops, again, strict=True):
            rgb = pasted.mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
            old = old_cpu_paste(twin, crop)
            assert np.abs(rgb.astype(np.int16) - old.astype(np.int16)).max() <= 1
            x0, y0, x1, y1 = twin.region
            outside = np.ones(rgb.shape[:2], bool)
            outside[y0:y1, x0:x1] = False
            assert np.array_equal(rgb[outside], twin.portrait.rgb[outside])


def test_tgan_refuses_a_portrait_not_at_the_output_size() -> None:
    model = TganModel(TINY).eval()
    generator = TganGenerator(model, TGAN_VIDEO, TGAN_WINDOWS, torch.device("cpu"))
    small = load_builtin_portrait("astronaut", PortraitConfig(), VideoConfig(width_px=128, height_px=128))
    with pytest.raises(GeneratorError, match="output size"):
        generator.new_stream(small, seed=0)


# ---- load_generator builds the configured stage -------------------------------------------------


def test_load_generator_gives_the_generator_the_configured_stage(caplog: pytest.LogCaptureFixture) -> None:
    from avatar.disclosure.stage import DisclosureStage
    from avatar.generators import load_generator

    small = with_overrides(AppConfig(), video={"width_px": 128, "height_px": 128}, generator={"device": "cpu"})
    generator = load_generator(small)
    assert isinstance(generator.disclosure, DisclosureStage)
    assert generator.disclosure.summary == {"mark": True, "watermark": True}
    portrait = load_builtin_portrait("astronaut", small.portrait, small.video)
    idle = generator.idle_frame(generator.new_stream(portrait, 0, session_number=3))
    assert idle.shape == portrait.rgb.shape and not np.array_equal(idle, portrait.rgb)  # marked

    caplog.set_level(logging.WARNING, logger="avatar.disclosure.stage")
    off = load_generator(with_overrides(small, disclosure={"mark": False}))
    assert isinstance(off.disclosure, DisclosureStage)
    assert off.disclosure.summary == {"mark": False, "watermark": True}
    warnings = [r for r in caplog.records if "disclosure.mark is off" in r.getMessage()]
    assert len(warnings) == 1
