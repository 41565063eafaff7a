"""High definition: 1024x1024 output works on the CPU, the painted mouth stays sharp at that size,
and a large photo is searched for its face on a reduced copy."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from avatar import portrait as portrait_module
from avatar.config import AppConfig, PortraitConfig, VideoConfig, with_overrides
from avatar.generators.warp import WarpAnimator
from avatar.portrait import load_portrait
from avatar.windows import iter_clip_windows

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _png(rgb: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.slow
def test_1024_output_with_a_sharp_painted_mouth(speech: np.ndarray) -> None:
    # An LFW face whose mouth is shut at rest: its teeth are painted (the astronaut shows her own).
    faces = np.load(Path(data.__file__).parent / "lfw_subset.npy")
    gray = np.asarray(np.clip(faces[0] * 255, 0, 255), np.uint8)
    photo = np.asarray(Image.fromarray(gray).convert("RGB").resize((200, 200), Image.Resampling.BICUBIC))
    cfg = with_overrides(AppConfig(), video={"width_px": 1024, "height_px": 1024}, warp={"head_motion": 0.0})
    portrait = load_portrait(_png(photo), cfg.portrait, cfg.video)
    anim = WarpAnimator(cfg.warp, cfg.video, torch.device("cpu"))
    stream = anim.new_stream(portrait, seed=1)
    assert not stream.real_teeth
    windows = list(iter_clip_windows(np.asarray(speech, np.int16), cfg.windows, cfg.vad, cfg.video.fps))[:40]
    frames = [anim.step([stream], [window])[0] for window in windows]
    widest = max(frames, key=lambda f: f.drive["jaw"])
    assert widest.rgb.shape == (1024, 1024, 3) and widest.drive["jaw"] > 0.6
    luma = widest.rgb.astype(np.float64).mean(axis=2)

    # Down the middle of the mouth: lip, then the bright teeth, then the dark cavity. The edge from
    # teeth to cavity rises in a few pixels (soft, not blurred: a 1024 frame must not look upscaled).
    lips = portrait.landmarks[48:68]
    x = int(round(0.5 * (lips[14, 0] + lips[18, 0])))  # between 62 and 66
    top, bottom = int(lips[:, 1].min()) - 10, int(lips[:, 1].max()) + 120
    column = luma[top:bottom, x - 1 : x + 2].mean(axis=1)
    teeth_row = int(np.argmax(column))
    teeth, cavity = column[teeth_row], column[teeth_row:].min()
    assert teeth - cavity > 100, (teeth, cavity)
    below = column[teeth_row:]
    high, low = cavity + 0.9 * (teeth - cavity), cavity + 0.1 * (teeth - cavity)
    edge_px = int(np.argmax(below < low)) - int(np.argmax(below < high))
    assert 0 < edge_px <= 4, (edge_px, below[:12].round())

    # Along the teeth (the brightest pixels of each column of the mouth): the gaps between them
    # show as dips a few pixels wide.
    span = slice(int(lips[12, 0]) + 6, int(lips[16, 0]) - 6)  # inner corners 60 .. 64
    band = luma[top:bottom, span].max(axis=0)
    dips = (band < np.maximum.accumulate(band) - 25) & (band < np.maximum.accumulate(band[::-1])[::-1] - 25)
    assert 2 <= int(np.diff(dips.astype(int)).clip(0).sum()) <= 12, band.round()


def test_a_large_photo_is_searched_on_a_reduced_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    big = np.asarray(Image.fromarray(data.astronaut()).resize((3000, 3000), Image.Resampling.BICUBIC))
    seen: list[tuple[int, int]] = []
    detector = portrait_module._detector()

    class Watching:
        def run(self, image: np.ndarray, upsample: int, threshold: float) -> object:
            seen.append(image.shape[:2])
            return detector.run(image, upsample, threshold)

    monkeypatch.setattr(portrait_module, "_detector", lambda: Watching())
    video = VideoConfig(width_px=1024, height_px=1024)
    result = load_portrait(_png(big), PortraitConfig(max_pixels=10_000_000), video)
    assert seen and max(max(shape) for shape in seen) <= 800, seen
    assert result.rgb.shape == (1024, 1024, 3)
    # The landmarks are found at full size: they match the small photo's, scaled.
    small = load_portrait(_png(data.astronaut()), PortraitConfig(), video)
    assert np.abs(result.landmarks - small.landmarks).max() < 12.0


@pytest.mark.slow
def test_cli_renders_1024_with_the_size_flag(tmp_path: Path) -> None:
    out = tmp_path / "hd.mp4"
    completed = subprocess.run(
        [sys.executable, "-m", "avatar", "render", "--say", "Hi.", "--size", "1024", "-o", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (1024, 1024)
        assert sum(1 for _ in container.decode(stream)) >= 10


def test_the_size_flag_is_checked(tmp_path: Path) -> None:
    out = tmp_path / "unused.mp4"
    completed = subprocess.run(
        [sys.executable, "-m", "avatar", "render", "--say", "Hi.", "--size", "1000", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode != 0
    assert "video.width_px" in completed.stderr and "multiple of 16" in completed.stderr, completed.stderr
