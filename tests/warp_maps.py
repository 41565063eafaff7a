"""Checks on the warp animator's backward maps, shared by the tests that fold-check drives."""

from __future__ import annotations

import numpy as np


def area_ratio(source_xy: np.ndarray) -> np.ndarray:
    """Jacobian determinant of a backward map (H, W, 2): < 0 where the picture folds over itself."""
    dx_dx, dx_dy = np.gradient(source_xy[..., 0], axis=1), np.gradient(source_xy[..., 0], axis=0)
    dy_dx, dy_dy = np.gradient(source_xy[..., 1], axis=1), np.gradient(source_xy[..., 1], axis=0)
    return dx_dx * dy_dy - dx_dy * dy_dx
