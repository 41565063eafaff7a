"""Framing without invented borders, over every portrait the tests have: the astronaut as shipped,
crops of it that put the face near each edge or fill the frame with it, a bust, a tiny image,
tilted ones, and scikit-image's small LFW faces; at 256 and 512, as aligned portraits and as
rendered frames of the warp animator with its head motion on. No frame may show streaks of
repeated edge pixels (tests/framing_check.py), and the framing moves from the configured one only
within its limits, to keep the frame inside the photo."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from avatar.config import AppConfig, PortraitConfig, VideoConfig, with_overrides
from avatar.errors import PortraitError
from avatar.generators.warp import WarpAnimator
from avatar.portrait import Portrait, load_portrait
from avatar.windows import iter_clip_windows
from tests.face_cases import astronaut_cases
from tests.framing_check import streak_runs

PORTRAIT = PortraitConfig()
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _lfw_cases() -> dict[str, np.ndarray]:
    faces = np.load(Path(data.__file__).parent / "lfw_subset.npy")  # (200, 25, 25) float 0..1
    out = {}
    for i in (0, 17, 60, 101, 150):  # a few of the 200, enlarged: tight, low-resolution headshots
        gray = np.asarray(np.clip(faces[i] * 255, 0, 255), np.uint8)
        out[f"lfw {i}"] = np.asarray(Image.fromarray(gray).convert("RGB").resize((200, 200), Image.Resampling.BICUBIC))
    return out


def _png(rgb: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(out, format="PNG")
    return out.getvalue()


CASES = {**astronaut_cases(), **_lfw_cases()}


def _framing_within_limits(p: Portrait, size: int) -> None:
    left, right = p.landmarks[36:42].mean(axis=0), p.landmarks[42:48].mean(axis=0)
    assert abs(left[1] - right[1]) < 0.5, "eyes are not level"
    extent = float(np.ptp(p.landmarks[:, 0]))
    assert PORTRAIT.face_width_fraction * size - 1 <= extent <= 0.62 * size + 1
    centre = (p.landmarks[:, 0].max() + p.landmarks[:, 0].min()) / 2
    assert abs(centre - size / 2) <= 0.1 * size + 1
    eyes = (left[1] + right[1]) / 2 / size
    assert PORTRAIT.eye_line_fraction - 0.081 <= eyes <= PORTRAIT.eye_line_fraction + 0.101


@pytest.fixture(scope="module")
def loaded() -> dict[tuple[str, int], Portrait]:
    out: dict[tuple[str, int], Portrait] = {}
    for size in (256, 512):
        for name, rgb in CASES.items():
            try:
                out[(name, size)] = load_portrait(_png(rgb), PORTRAIT, VideoConfig(width_px=size, height_px=size))
            except PortraitError:
                continue  # dlib finds no face in some of the tiny LFW crops: refused, not framed
    return out


def test_every_portrait_is_framed_without_streaks(loaded: dict[tuple[str, int], Portrait]) -> None:
    astronauts = [name for name in astronaut_cases()]
    assert all((name, size) in loaded for name in astronauts for size in (256, 512)), sorted(loaded)
    assert sum(1 for name, _ in loaded if name.startswith("lfw")) >= 4, "too few LFW faces found to judge"
    for (name, size), p in loaded.items():
        assert p.rgb.shape == (size, size, 3)
        runs = streak_runs(p.rgb)
        assert max(runs.values()) < 3, (name, size, runs)
        _framing_within_limits(p, size)


def test_a_tight_crop_fills_more_of_the_frame_instead_of_inventing_a_border(
    loaded: dict[tuple[str, int], Portrait],
) -> None:
    shipped, tight = loaded[("as shipped", 512)], loaded[("tight head", 512)]
    assert np.ptp(shipped.landmarks[:, 0]) == pytest.approx(PORTRAIT.face_width_fraction * 512, abs=1)
    assert np.ptp(tight.landmarks[:, 0]) > 1.15 * np.ptp(shipped.landmarks[:, 0])  # zoomed in to stay inside
    corner = tight.rgb[:8, :8].reshape(-1, 3).astype(int)
    assert corner.sum(axis=1).min() > 60, "the outside of the photo is filled black"


@pytest.mark.slow
def test_rendered_frames_with_head_motion_show_no_streaks(
    loaded: dict[tuple[str, int], Portrait], config: AppConfig, speech: np.ndarray
) -> None:
    for size in (256, 512):
        cfg = with_overrides(config, video={"width_px": size, "height_px": size}, warp={"head_motion": 1.0})
        anim = WarpAnimator(cfg.warp, cfg.video, torch.device("cpu"))
        windows = list(iter_clip_windows(np.asarray(speech, np.int16), cfg.windows, cfg.vad, cfg.video.fps))
        chosen = windows[:: max(1, len(windows) // 12)][:12] if size == 512 else windows[::4]
        names = [n for n, s in loaded if s == size and (size == 256 or not n.startswith("lfw"))]
        for name in names:
            stream = anim.new_stream(loaded[(name, size)], seed=5)
            for window in chosen:
                frame = anim.step([stream], [window])[0].rgb
                runs = streak_runs(frame)
                assert max(runs.values()) < 3, (name, size, window.frame_index, runs)
