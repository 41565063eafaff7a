"""Portraits: load and validate an image, find the face and its 68 landmarks, crop and align it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Portrait:
    name: str
    rgb: np.ndarray  # (height_px, width_px, 3) uint8, cropped and scaled to the output size
    landmarks: np.ndarray  # (68, 2) float32, (x, y) in pixels of `rgb`, iBUG 300-W order
    face_box: tuple[int, int, int, int]  # (x, y, w, h) of the face in pixels of `rgb`
