"""Reading the visible mark (avatar/disclosure/mark.py) back, for the tests that check the label
reached the viewer: in the mark's own tests, live frames, renders and the local camera."""

from __future__ import annotations

import numpy as np
import torch

from avatar.disclosure.mark import VisibleMark


def label_layers(mark: VisibleMark) -> tuple[np.ndarray, np.ndarray]:
    """The label's premultiplied colour (3, h, w) and alpha (h, w), read back through `apply`:
    over black it leaves the colour, over white the colour plus what shows through."""
    h, w = mark.height_px, mark.width_px
    on_black = mark.apply(torch.zeros(1, 3, h, w)).numpy()[0]
    on_white = mark.apply(torch.ones(1, 3, h, w)).numpy()[0]
    x, y, bw, bh = mark.box
    colour = on_black[:, y : y + bh, x : x + bw]
    alpha = 1.0 - (on_white - on_black)[0, y : y + bh, x : x + bw]
    return colour, alpha


def label_masks(mark: VisibleMark) -> tuple[np.ndarray, np.ndarray]:
    """(h, w) masks inside the label's box: its nearly opaque white text, and the dark pill around it."""
    colour, alpha = label_layers(mark)
    grey = colour.mean(axis=0)
    return grey > 0.85, (alpha > 0.5) & (grey < 0.2)


def label_contrast(rgb: np.ndarray, mark: VisibleMark) -> tuple[float, float]:
    """Mean brightness (0..1) of the text and of the pill in an RGB uint8 frame, inside the label's box."""
    text, pill = label_masks(mark)
    x, y, w, h = mark.box
    grey = rgb[y : y + h, x : x + w].astype(np.float32).mean(axis=2) / 255.0
    return float(grey[text].mean()), float(grey[pill].mean())
