"""Invented borders in a frame: runs of lines at its edges that repeat the line before them.

Where a crop reaches past the photo and the edge pixels are repeated, the frame gets streaks: lines
parallel to the edge, each (nearly) a copy of its neighbour, while along the line the picture still
changes. `streak_runs` measures, for each edge of an RGB frame, how many consecutive lines from that
edge inwards are such copies: the change from one line to the next is under a tenth of the change
along the line (a photograph, and a soft fill that blurs with depth, change about as much both
ways; a flat area does not change along the line and does not count)."""

from __future__ import annotations

import numpy as np


def _run(lines: np.ndarray) -> int:
    """lines: (n, length) gray, from the edge inwards; the run of copies at the start."""
    along = np.abs(np.diff(lines, axis=1)).mean(axis=1)[:-1]  # change along each line
    across = np.abs(np.diff(lines, axis=0)).mean(axis=1)  # change to the next line
    copies = (along > 0.5) & (across < 0.1 * along)
    run = 0
    for copy in copies:
        if not copy:
            break
        run += 1
    return run


def streak_runs(rgb: np.ndarray, depth: int = 48) -> dict[str, int]:
    gray = np.asarray(rgb, np.float32).mean(axis=2)
    return {
        "top": _run(gray[:depth]),
        "bottom": _run(gray[::-1][:depth]),
        "left": _run(gray[:, :depth].T),
        "right": _run(gray[:, ::-1][:, :depth].T),
    }
