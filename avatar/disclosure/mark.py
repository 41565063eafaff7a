"""The visible mark: a small label ("AI-generated") drawn into a corner of every frame.

The label is rendered once, when the mark is made, with Pillow's built-in scalable font (no font
files, no downloads): white text on a rounded, semi-transparent dark pill, a thin margin away from
the configured corner. It is kept on the generator's device as a premultiplied RGBA tile, so marking
a batch is two element-wise operations on the small slice of the frames that the label covers;
pixels outside the label's box are never touched (nor those inside it where the tile is clear).

Sizes: the text is about 3.2 % of the frame's shorter side tall, never below 9 px (legible at
128x128 and 256x256, modest at 512 and 1080p). A label too wide for a small frame is set smaller,
down to 7 px; a label that would still not fit is a clear ConfigError.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from avatar.errors import ConfigError, GeneratorError

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")

TEXT_FRACTION = 0.032  # text height / shorter side of the frame
MIN_TEXT_PX = 9  # the smallest text set by the fraction alone
MIN_FIT_TEXT_PX = 7  # the smallest text a narrow frame may shrink the label to
MARGIN_FRACTION = 0.022  # gap between the pill and the frame's edges / shorter side
MIN_MARGIN_PX = 2
PAD_X = 0.62  # horizontal padding inside the pill, in text heights (the ends are round)
PAD_Y = 0.34  # vertical padding inside the pill, in text heights
PILL_RGB = (14, 16, 20)
PILL_OPACITY = 0.68
RIM_OPACITY = 0.16  # a faint light hairline around the pill: it keeps its shape on dark backgrounds
TEXT_RGB = (255, 255, 255)
SUPERSAMPLE = 4  # the pill is drawn this many times larger, then reduced: smooth round ends
CPU_PIECE_ELEMENTS = 32768  # torch's grain size: element-wise ops up to this size stay on the calling thread
SMALL_TEXT_PX = 14  # below this, the thin built-in font is set a little heavier (smeared 1 px right)
SMALL_TEXT_WEIGHT = 0.35


def _font(size_px: int) -> ImageFont.FreeTypeFont:
    try:
        font = ImageFont.load_default(size=size_px)
    except TypeError:  # Pillow < 10.1: no size, only the old bitmap font
        font = None
    if not isinstance(font, ImageFont.FreeTypeFont):
        raise GeneratorError(
            "the visible mark needs Pillow >= 10.1 built with FreeType (ImageFont.load_default(size=...))"
        )
    return font


class VisibleMark:
    """The label of `text` in `corner` of frames `width_px` x `height_px`, kept on `device`."""

    def __init__(self, text: str, corner: str, width_px: int, height_px: int, device: torch.device | str) -> None:
        if corner not in CORNERS:
            raise ConfigError(f"disclosure.mark_corner {corner!r} must be one of {', '.join(CORNERS)}")
        if not text or not text.strip():
            raise ConfigError("disclosure.mark_text must not be empty")
        self.text = text
        self.corner = corner
        self.width_px = width_px
        self.height_px = height_px
        self.device = torch.device(device)
        short = min(width_px, height_px)
        self.margin_px = max(MIN_MARGIN_PX, round(MARGIN_FRACTION * short))
        room_w = width_px - 2 * self.margin_px
        room_h = height_px - 2 * self.margin_px
        size = max(MIN_TEXT_PX, round(TEXT_FRACTION * short))
        while True:
            rgba = self._render(text, size)
            h, w = rgba.shape[:2]
            if (w <= room_w and h <= room_h // 3) or size <= MIN_FIT_TEXT_PX:
                break
            size -= 1
        if w > room_w or h > room_h // 3:
            raise ConfigError(
                f"disclosure.mark_text {text!r} does not fit a {width_px}x{height_px} frame "
                f"(the label is {w}x{h} px even with {size} px text): use a shorter text or a larger video size"
            )
        self.text_px = size
        top = self.margin_px if corner.startswith("top") else height_px - self.margin_px - h
        left = self.margin_px if corner.endswith("left") else width_px - self.margin_px - w
        self.box = (left, top, w, h)  # (x, y, w, h) in pixels of the frame
        self._rows = slice(top, top + h)
        self._cols = slice(left, left + w)
        tile = torch.from_numpy(rgba).permute(2, 0, 1).contiguous()  # (4, h, w) premultiplied, float32
        self._premultiplied = tile[:3].to(self.device)
        self._keep = (1.0 - tile[3:]).to(self.device)  # 1 - alpha: how much of the frame shows through
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    @staticmethod
    def _render(text: str, size_px: int) -> np.ndarray:
        """The label as premultiplied RGBA float32 (h, w, 4) in 0..1, tight around its pill."""
        font = _font(size_px)
        left, top, right, bottom = (int(v) for v in font.getbbox(text))
        ink_w, ink_h = right - left, bottom - top
        # The pill is sized from the font's size, not the ink, so labels with and without capitals
        # or descenders get the same height; the ink is centred in it.
        pad_x = max(3, round(PAD_X * size_px))
        pad_y = max(2, round(PAD_Y * size_px))
        h = max(ink_h, size_px) + 2 * pad_y
        w = max(ink_w + 2 * pad_x, h)
        # Pill: drawn large, reduced with a box filter (anti-aliased round ends), coverage 0..1.
        s = SUPERSAMPLE
        big = Image.new("L", (w * s, h * s), 0)
        ImageDraw.Draw(big).rounded_rectangle((0, 0, w * s - 1, h * s - 1), radius=h * s // 2, fill=255)
        pill = np.asarray(big.resize((w, h), Image.Resampling.BOX), dtype=np.float32) / 255.0
        inner = Image.new("L", (w * s, h * s), 0)
        ImageDraw.Draw(inner).rounded_rectangle((s, s, w * s - 1 - s, h * s - 1 - s), radius=h * s // 2 - s, fill=255)
        core = np.asarray(inner.resize((w, h), Image.Resampling.BOX), dtype=np.float32) / 255.0
        rim = np.clip(pill - core, 0.0, 1.0)  # a one-pixel ring at the pill's edge
        # Text: set at its real size (FreeType's hinting and anti-aliasing at the target size).
        glyphs = Image.new("L", (w, h), 0)
        x = (w - ink_w) / 2 - left
        y = (h - ink_h) / 2 - top
        ImageDraw.Draw(glyphs).text((round(x), round(y)), text, font=font, fill=255)
        ink = np.asarray(glyphs, dtype=np.float32) / 255.0
        if size_px < SMALL_TEXT_PX:  # a touch of weight: thin strokes at 7-13 px blur into the pill
            ink[:, 1:] = np.clip(ink[:, 1:] + SMALL_TEXT_WEIGHT * ink[:, :-1], 0.0, 1.0)
        ink *= core  # never past the pill's edge

        pill_rgb = np.asarray(PILL_RGB, dtype=np.float32) / 255.0
        text_rgb = np.asarray(TEXT_RGB, dtype=np.float32) / 255.0
        # Layers, bottom to top: the dark pill, the light rim, the text (premultiplied "over").
        a_pill = (core * PILL_OPACITY)[..., None]
        a_rim = (rim * RIM_OPACITY)[..., None]
        a_ink = ink[..., None]
        rgb = a_pill * pill_rgb
        alpha = a_pill
        rgb = a_rim * 1.0 + (1.0 - a_rim) * rgb
        alpha = a_rim + (1.0 - a_rim) * alpha
        rgb = a_ink * text_rgb + (1.0 - a_ink) * rgb
        alpha = a_ink + (1.0 - a_ink) * alpha
        return np.concatenate([rgb, alpha], axis=2).astype(np.float32)

    def _tiles(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (frames.device, frames.dtype)
        tiles = self._cache.get(key)
        if tiles is None:
            tiles = (
                self._premultiplied.to(device=frames.device, dtype=frames.dtype),
                self._keep.to(device=frames.device, dtype=frames.dtype),
            )
            self._cache[key] = tiles
        return tiles

    def apply(self, frames: torch.Tensor) -> torch.Tensor:
        """Composite the label over `frames` (B, 3, H, W), float in 0..1; returns the marked frames.

        Marks in place when it can: the caller hands over frames it owns (never a cached portrait it
        will hand over again). Frames that need gradients, or are views that overlap themselves
        (expanded), are copied first.
        """
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise GeneratorError(f"the visible mark takes frames (B, 3, H, W), not {tuple(frames.shape)}")
        if (frames.shape[2], frames.shape[3]) != (self.height_px, self.width_px):
            raise GeneratorError(
                f"the visible mark was made for {self.width_px}x{self.height_px} frames, "
                f"not {frames.shape[3]}x{frames.shape[2]}"
            )
        if not frames.is_floating_point():
            raise GeneratorError(f"the visible mark takes float frames in 0..1, not {frames.dtype}")
        if frames.requires_grad or any(st == 0 for st, n in zip(frames.stride(), frames.shape, strict=True) if n > 1):
            frames = frames.clone()
        premultiplied, keep = self._tiles(frames)
        region = frames[:, :, self._rows, self._cols]
        if frames.requires_grad:  # a copy (see above); `out=` does not record gradients
            region.mul_(keep).add_(premultiplied)
            return frames
        if frames.device.type != "cpu":
            torch.addcmul(premultiplied, region, keep, out=region)  # region * (1 - alpha) + colour
            return frames
        # On the CPU, in pieces small enough that torch runs each on this thread: a piece handed to
        # the intra-op pool waits for every pool thread, and on a small machine busy with encoders
        # that wait was 10-30 ms per call (measured) for about 50 us of work.
        batch, _, h, w = region.shape
        frames_per_piece = max(1, CPU_PIECE_ELEMENTS // (3 * h * w))
        rows_per_piece = max(1, min(h, CPU_PIECE_ELEMENTS // (3 * w)))
        for i in range(0, batch, frames_per_piece):
            for j in range(0, h, rows_per_piece):
                piece = region[i : i + frames_per_piece, :, j : j + rows_per_piece]
                torch.addcmul(
                    premultiplied[:, j : j + rows_per_piece], piece, keep[:, j : j + rows_per_piece], out=piece
                )
        return frames
