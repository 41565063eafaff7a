"""The visible mark: where it goes, what it touches, how it reads, what it costs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avatar.config import AppConfig, with_overrides
from avatar.disclosure.mark import CORNERS, VisibleMark
from avatar.errors import ConfigError, GeneratorError
from tests.label_check import label_layers

CPU = torch.device("cpu")
DEVICES = [CPU] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def _frames(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _changed(before: torch.Tensor, after: torch.Tensor) -> np.ndarray:
    """(H, W) bool: pixels that differ in any channel of any frame."""
    return (before != after).any(dim=1).any(dim=0).cpu().numpy()


@pytest.mark.parametrize("device", DEVICES, ids=str)
@pytest.mark.parametrize("corner", CORNERS)
def test_only_the_configured_corner_changes(corner: str, device: torch.device) -> None:
    size = 256
    mark = VisibleMark("AI-generated", corner, size, size, device)
    frames = _frames(3, size, size).to(device)
    before = frames.clone()
    after = mark.apply(frames)
    changed = _changed(before, after)
    rows, cols = np.nonzero(changed)
    assert changed.sum() > 200, "the label must change some pixels"
    x, y, w, h = mark.box
    # Every changed pixel is inside the label's box, and the box hugs what changed.
    assert x <= cols.min() and cols.max() < x + w and y <= rows.min() and rows.max() < y + h
    assert cols.max() - cols.min() >= w - 3 and rows.max() - rows.min() >= h - 3
    # The box sits in the configured corner, a thin margin from both edges.
    margin = mark.margin_px
    assert 2 <= margin <= 0.05 * size
    assert (x == margin) if corner.endswith("left") else (x + w == size - margin)
    assert (y == margin) if corner.startswith("top") else (y + h == size - margin)
    # The whole label lies in that quarter of the frame.
    assert (x + w <= size // 2 + 40) if corner.endswith("left") else (x >= size // 2 - 40)
    assert (y + h <= size // 2) if corner.startswith("top") else (y >= size // 2)
    assert after.min() >= 0.0 and after.max() <= 1.0 + 1e-6


def test_every_frame_of_a_batch_is_marked_the_same() -> None:
    size = 128
    mark = VisibleMark("AI-generated", "bottom-right", size, size, CPU)
    same = _frames(1, size, size).repeat(5, 1, 1, 1)
    out = mark.apply(same.clone())
    for i in range(1, 5):
        assert torch.equal(out[i], out[0])
    # Different frames get the same label: over each, the same pixels change, by the same rule.
    frames = _frames(5, size, size, seed=3)
    before = frames.clone()
    after = mark.apply(frames)
    reference = mark.apply(before[2:3].clone())
    masks = [_changed(before[i : i + 1], after[i : i + 1]) for i in range(5)]
    colour, alpha = label_layers(mark)
    x, y, w, h = mark.box
    for i in range(5):
        expected = before[i, :, y : y + h, x : x + w].numpy() * (1.0 - alpha) + colour
        np.testing.assert_allclose(after[i, :, y : y + h, x : x + w].numpy(), expected, atol=1e-5)
        assert masks[i].sum() > 100
    torch.testing.assert_close(after[2:3], reference)


@pytest.mark.parametrize("background", [0.0, 0.5, 1.0])
def test_the_label_reads_white_on_dark(background: float) -> None:
    size = 256
    mark = VisibleMark("AI-generated", "top-right", size, size, CPU)
    frames = torch.full((1, 3, size, size), background)
    out = mark.apply(frames).numpy()[0].mean(axis=0)
    colour, alpha = label_layers(mark)
    x, y, w, h = mark.box
    box = out[y : y + h, x : x + w]
    text = colour.mean(axis=0) > 0.85  # nearly opaque white
    pill = (alpha > 0.5) & (colour.mean(axis=0) < 0.2)  # the dark pill around the text
    assert text.sum() > 60 and pill.sum() > 3 * text.sum()
    assert box[text].min() > 0.8, "the text is bright over any background"
    assert np.median(box[pill]) < 0.4, "the pill is dark over any background"
    assert np.percentile(box, 98) - np.percentile(box[alpha > 0.5], 30) > 0.5


@pytest.mark.parametrize(
    ("width", "height"), [(64, 64), (128, 128), (256, 256), (512, 512), (1024, 1024), (2048, 2048), (1920, 1088)]
)
def test_sizes(width: int, height: int) -> None:
    mark = VisibleMark("AI-generated", "bottom-left", width, height, CPU)
    x, y, w, h = mark.box
    assert 0 < x and x + w < width and 0 < y and y + h < height
    short = min(width, height)
    if short >= 128:
        assert mark.text_px >= 9, "legible in small frames"
    else:
        assert mark.text_px >= 7
    if short >= 512:
        assert 0.025 * short <= mark.text_px <= 0.04 * short, "modest in large frames"
        assert h <= 0.07 * short and w <= 0.3 * width
    frames = _frames(1, height, width)
    before = frames.clone()
    assert _changed(before, mark.apply(frames)).sum() > 0


def test_a_label_that_does_not_fit_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="does not fit a 64x64 frame"):
        VisibleMark("Synthetic video generated by a machine", "bottom-right", 64, 64, CPU)
    with pytest.raises(ConfigError, match="mark_corner"):
        VisibleMark("AI-generated", "middle", 256, 256, CPU)
    mark = VisibleMark("AI-generated", "bottom-right", 256, 256, CPU)
    with pytest.raises(GeneratorError, match="256x256"):
        mark.apply(torch.zeros(1, 3, 128, 128))
    with pytest.raises(GeneratorError, match="float"):
        mark.apply(torch.zeros(1, 3, 256, 256, dtype=torch.uint8))


def test_frames_it_cannot_own_are_copied_not_changed() -> None:
    size = 128
    mark = VisibleMark("AI-generated", "bottom-right", size, size, CPU)
    portrait = torch.rand(1, 3, size, size)
    cached = portrait.clone()
    out = mark.apply(portrait.expand(4, -1, -1, -1))  # one cached frame shown four times
    assert torch.equal(portrait, cached) and out.shape == (4, 3, size, size)
    assert _changed(portrait.expand(4, -1, -1, -1), out).sum() > 0
    leaf = torch.rand(2, 3, size, size, requires_grad=True)
    marked = mark.apply(leaf)
    marked.sum().backward()
    assert leaf.grad is not None
    half = mark.apply(torch.rand(2, 3, size, size).to(torch.bfloat16))
    assert half.dtype == torch.bfloat16


def test_the_default_portrait_is_marked_legibly() -> None:
    from avatar.portrait import default_portrait

    config = with_overrides(AppConfig(), video={"width_px": 256, "height_px": 256})
    portrait = default_portrait(config)
    d = config.disclosure
    mark = VisibleMark(d.mark_text, d.mark_corner, 256, 256, CPU)
    frame = torch.from_numpy(portrait.rgb).permute(2, 0, 1)[None].float() / 255.0
    out = mark.apply(frame.clone())[0].mean(dim=0).numpy()
    colour, alpha = label_layers(mark)
    x, y, w, h = mark.box
    box = out[y : y + h, x : x + w]
    text = colour.mean(axis=0) > 0.85
    pill = (alpha > 0.5) & (colour.mean(axis=0) < 0.2)
    assert box[text].mean() - box[pill].mean() > 0.5
