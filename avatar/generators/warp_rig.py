"""Face rig of the warp animator: control points from 68 landmarks, drive bases, TPS field, masks.

The rig is built once per portrait (`build_rig`). Its control points are the 68 landmarks plus fixed
anchors (above the brows, a ring around the face); each drive value moves them along a precomputed
basis, so the targets of a frame are `rest + sum_k drive_k * basis_k`.

The displacement field is a thin-plate spline solved per frame from target to rest positions (the
backward map `grid_sample` needs: for each output pixel, where to read), batched over streams with
one `torch.linalg.solve` of about 90 points. It is evaluated on a coarse grid over a region of
interest around the face and faded out to zero at an ellipse around the face, so the background
never moves because of it.

The rig follows the head's pose as the landmarks show it: the turn (yaw) is estimated from where
the nose tip lies between the jaw's ends, and a turned face's far mouth corner travels less
sideways than the near one; the face ellipse grows to hold the whole jaw line. No drive may fold the
warp (tearing): each basis is scaled down, once per portrait, where its full travel would
(`limit_bases`).

Coordinates: pixels (x, y) of the output image, pixel centres at integers. The spline works in
units of the output width so that it behaves the same at every output size.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

# Landmark groups (iBUG 300-W, 0-based): jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, lips 48-67.
BROWS = list(range(17, 27))

def smoothstep(x: np.ndarray) -> np.ndarray:
    """0 below 0, 1 above 1, a smooth S between (3x^2 - 2x^3)."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


# Order of the drive bases. The mouth's: jaw, width, rounding, the blinks, press, lower lip to the
# upper teeth (f, v). The face's, driven by the voice's expression: brows raised, eyes widened, smile
# (< 0 a frown).
(BASIS_JAW, BASIS_WIDTH, BASIS_ROUND, BASIS_BLINK_L, BASIS_BLINK_R, BASIS_PRESS, BASIS_LIP_TEETH,
 BASIS_BROWS, BASIS_WIDEN, BASIS_SMILE) = range(10)
N_BASES = 10
SIGNED_BASES = (BASIS_WIDTH, BASIS_SMILE)  # drives that also run negative (narrow, frown)

N_RING = 18
N_FOREHEAD = 6
N_LID = 8  # lid skin above each upper-lid point (moves part way) and cheek below each lower one (fixed)
N_POINTS = 68 + N_FOREHEAD + N_RING + N_LID
_LID_PAIRS = ((37, 41, 19), (38, 40, 20), (43, 47, 23), (44, 46, 24))  # upper lid, lower lid, brow above
_LID_SKIN = 0.45  # lid-skin point: this far from the lid toward the brow
_LID_SKIN_FOLLOW = 0.4  # and moves this share of the lid's travel
TPS_REGULARISATION = 1e-5
BLINK_TRAVEL = 0.8  # share of the eye opening the upper lid travels in a full blink
PRESS_TRAVEL = 0.47  # share of the rest lip gap each lip travels when pressed
WIDEN_TRAVEL = 0.25  # share of the eye opening the upper lid lifts in fully widened eyes
BROW_TRAVEL = 0.06  # rise of the brows, per face height (nose bridge to chin)
SMILE_TRAVEL = 0.07  # rise of the mouth corners in a full smile, per mouth width
LIP_TEETH_TRAVEL = 0.04  # rise of the upper lip's middle for f, v, per mouth width
RING_SCALE = 1.0  # the field is untouched inside this ellipse scale ...
FADE_SCALE = 1.3  # ... and fades to zero at this one
# The field's region of interest, as a share of the output: the fade ellipse of an aligned portrait
# (face width about 0.4 of the output) spans about 0.6 x 0.62 of it.
ROI_FRACTION = (0.68, 0.72)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-6)


@dataclass(frozen=True)
class RigGeometry:
    """Numbers measured once from the landmarks (pixels of the output image)."""

    down: np.ndarray  # (2,) unit vector from nose bridge to chin
    right: np.ndarray  # (2,) unit vector perpendicular to down, towards image right
    face_width: float  # jaw 0 to jaw 16
    face_height: float  # nose bridge (27) to chin (8)
    mouth_width: float  # outer corner to outer corner
    centre: np.ndarray  # (2,) centre of the face ellipse
    axes: np.ndarray  # (2,) semi-axes of the face ellipse along (right, down)
    chin: np.ndarray  # (2,)
    yaw_rad: float  # head turn estimated from the landmarks, > 0 when the face turns to image right
    side_scale: np.ndarray  # (2,) how far the (left, right) mouth corner moves sideways, frontal = 1


@dataclass
class Rig:
    """Per-portrait rig, as tensors on the generator's device."""

    geometry: RigGeometry
    rest: torch.Tensor  # (N, 2) control points at rest, pixels
    bases: torch.Tensor  # (K, N, 2) displacement in pixels per unit of each drive value
    roi_origin: torch.Tensor  # (2,) pixel position of the region-of-interest grid's first point
    fade: torch.Tensor  # (h_roi, w_roi) 1 near the face, 0 at the ellipse of FADE_SCALE
    travel: np.ndarray  # (K,) share of each drive's designed travel this portrait allows (no folds)


# Head pose from the landmarks. The jaw contour's ends (0, 16) lie on the head's silhouette, whose
# middle is the head's vertical axis whatever the turn; the nose tip stands ahead of the face by
# about _NOSE_DEPTH of its half width, so it shifts from that middle by (1 + depth) sin(yaw) half
# widths. The mouth corners sit about _CORNER_AZIMUTH_RAD around the head from its front: a sideways
# motion of a corner is seen foreshortened by cos(azimuth + yaw) against cos(azimuth) when frontal.
_NOSE_DEPTH = 0.4
_JAW_INSIDE_RHO = 0.8  # the jaw line lies inside this share of the face ellipse
_MAX_YAW_RAD = math.radians(45.0)
_CORNER_AZIMUTH_RAD = math.radians(40.0)


def estimate_yaw(landmarks: np.ndarray) -> float:
    """The head's turn in radians from its 68 landmarks (> 0: the face turns to image right)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    axis = lm[16] - lm[0]
    half = 0.5 * float(np.linalg.norm(axis))
    if half < 1e-6:
        return 0.0
    middle = 0.5 * (lm[0] + lm[16])
    offset = float((lm[30] - middle) @ (axis / (2.0 * half))) / half
    yaw = math.asin(float(np.clip(offset / (1.0 + _NOSE_DEPTH), -1.0, 1.0)))
    return float(np.clip(yaw, -_MAX_YAW_RAD, _MAX_YAW_RAD))


def corner_side_scale(yaw_rad: float) -> np.ndarray:
    """(left, right): the sideways travel of each mouth corner in the image, per unit of the mouth's
    measured (already foreshortened) width: 1 each for a frontal face. The far side's corner goes
    round the head, so its travel is compressed and the near one's stretched; they average 1."""
    # Corners at azimuth -a (image left) and +a; a turn by yaw moves both by yaw. A sideways motion
    # is seen as cos(azimuth), the measured width as cos(yaw) of the frontal one.
    a = _CORNER_AZIMUTH_RAD
    return np.array([1.0 + math.tan(a) * math.tan(yaw_rad), 1.0 - math.tan(a) * math.tan(yaw_rad)])


def rig_geometry(landmarks: np.ndarray) -> RigGeometry:
    lm = landmarks.astype(np.float64)
    down = _unit(lm[8] - lm[27])
    right = np.array([-down[1], down[0]])
    if right[0] < 0:
        right = -right
    yaw = estimate_yaw(lm)
    face_width = float(np.linalg.norm(lm[16] - lm[0]))
    face_height = float(np.linalg.norm(lm[8] - lm[27]))
    mouth_width = float(np.linalg.norm(lm[54] - lm[48]))
    brow_top = lm[BROWS] @ down
    chin = lm[8] @ down
    top = float(brow_top.min())
    # Face ellipse: from a little above the brows to a little below the chin, jaw to jaw.
    mid_right = float(((lm[0] + lm[16]) / 2.0) @ right)
    mid_down = (top + float(chin)) / 2.0
    centre = mid_right * right + mid_down * down
    axes = np.array([0.5 * face_width * 1.22, 0.5 * (float(chin) - top) * 1.3])
    # A turned face's chin lies off the jaw ends' middle: grow the ellipse until the chin and the
    # jaw beside it lie well inside, so the fixed ring never sits just below a moving chin.
    rel = lm[6:11] - centre
    rho = np.sqrt(((rel @ right) / axes[0]) ** 2 + ((rel @ down) / axes[1]) ** 2)
    axes = axes * max(1.0, float(rho.max()) / _JAW_INSIDE_RHO)
    return RigGeometry(
        down=down, right=right, face_width=face_width, face_height=face_height,
        mouth_width=mouth_width, centre=centre, axes=axes, chin=lm[8].copy(),
        yaw_rad=yaw, side_scale=corner_side_scale(yaw),
    )


def rest_points(landmarks: np.ndarray, g: RigGeometry) -> np.ndarray:
    """(N, 2): the 68 landmarks, anchors above the brows, a ring around the face."""
    lm = landmarks.astype(np.float64)
    forehead_idx = [17, 19, 21, 22, 24, 26]
    forehead = lm[forehead_idx] - 0.35 * g.face_height * g.down
    angles = np.linspace(0.0, 2.0 * np.pi, N_RING, endpoint=False)
    ring = (
        g.centre[None, :]
        + (RING_SCALE * g.axes[0] * np.cos(angles))[:, None] * g.right[None, :]
        + (RING_SCALE * g.axes[1] * np.sin(angles))[:, None] * g.down[None, :]
    )
    skin = [lm[u] + _LID_SKIN * (lm[b] - lm[u]) for u, _, b in _LID_PAIRS]
    cheek = [lm[lo] + 0.8 * (lm[lo] - lm[u]) for u, lo, _ in _LID_PAIRS]
    return np.concatenate([lm, forehead, ring, skin, cheek]).astype(np.float64)


def drive_bases(landmarks: np.ndarray, g: RigGeometry) -> np.ndarray:
    """(K, N, 2) displacement per unit drive, in the order of the BASIS_ constants."""
    lm = landmarks.astype(np.float64)
    bases = np.zeros((N_BASES, N_POINTS, 2))
    down, right, mw = g.down, g.right, g.mouth_width

    def sideways(side: int) -> np.ndarray:
        """Unit sideways displacement of one side (-1 image left, +1 right), foreshortened by the turn."""
        return side * float(g.side_scale[0 if side < 0 else 1]) * right
    open_px = 0.10 * g.face_height  # chin drop at jaw = 1

    # Jaw: chin, lower jaw line and lower lip drop; falls off towards the ears.
    jaw_weights = {3: 0.06, 4: 0.22, 5: 0.48, 6: 0.74, 7: 0.92, 8: 1.0, 9: 0.92, 10: 0.74, 11: 0.48,
                   12: 0.22, 13: 0.06}
    lower_lip = {55: 0.5, 56: 0.86, 57: 1.0, 58: 0.86, 59: 0.5, 65: 0.78, 66: 1.0, 67: 0.78}
    corners = {48: 0.3, 54: 0.3, 60: 0.32, 64: 0.32}
    upper_lip = {49: -0.04, 50: -0.08, 51: -0.09, 52: -0.08, 53: -0.04, 61: -0.08, 62: -0.09, 63: -0.08}
    for table in (jaw_weights, lower_lip, corners, upper_lip):
        for i, w in table.items():
            bases[BASIS_JAW, i] += w * open_px * down
    # The mouth narrows a little as it opens.
    for i, side in ((48, -1), (60, -1), (54, 1), (64, 1)):
        bases[BASIS_JAW, i] -= 0.05 * mw * sideways(side)

    # Width (spread, "ee"): corners out, the lips stretch and thin a little.
    for i, side, w in ((48, -1, 0.08), (60, -1, 0.08), (54, 1, 0.08), (64, 1, 0.08),
                       (49, -1, 0.04), (59, -1, 0.04), (53, 1, 0.04), (55, 1, 0.04),
                       (61, -1, 0.03), (67, -1, 0.03), (63, 1, 0.03), (65, 1, 0.03)):
        bases[BASIS_WIDTH, i] += w * mw * sideways(side)
    for i in (50, 51, 52):
        bases[BASIS_WIDTH, i] += 0.012 * mw * down
    for i in (56, 57, 58):
        bases[BASIS_WIDTH, i] -= 0.012 * mw * down

    # Rounding ("oo"): corners in, lips gather towards the centre and pout.
    for i, side, w in ((48, -1, 0.17), (60, -1, 0.17), (54, 1, 0.17), (64, 1, 0.17),
                       (49, -1, 0.09), (59, -1, 0.09), (53, 1, 0.09), (55, 1, 0.09),
                       (61, -1, 0.08), (67, -1, 0.08), (63, 1, 0.08), (65, 1, 0.08),
                       (50, -1, 0.03), (58, -1, 0.03), (52, 1, 0.03), (56, 1, 0.03)):
        bases[BASIS_ROUND, i] -= w * mw * sideways(side)
    for i in (48, 54, 60, 64):  # the corners drop out of a smile into a round "o"
        bases[BASIS_ROUND, i] += 0.07 * mw * down
    for i in (50, 51, 52):
        bases[BASIS_ROUND, i] -= 0.035 * mw * down
    for i in (56, 57, 58):
        bases[BASIS_ROUND, i] += 0.035 * mw * down

    # Press (m, b, p): lips parted at rest (a smile showing teeth) come together, not quite shut
    # (the backward spline cannot fold a gap to a line; the mouth painter draws the seam).
    for (up_in, lo_in), (up_out, lo_out) in zip(
        ((61, 67), (62, 66), (63, 65)), ((50, 58), (51, 57), (52, 56)), strict=True
    ):
        gap = lm[lo_in] - lm[up_in]
        if float(gap @ down) <= 0.0:
            continue
        bases[BASIS_PRESS, up_in] += PRESS_TRAVEL * gap
        bases[BASIS_PRESS, lo_in] -= PRESS_TRAVEL * gap
        bases[BASIS_PRESS, up_out] += 0.35 * PRESS_TRAVEL * gap
        bases[BASIS_PRESS, lo_out] -= 0.35 * PRESS_TRAVEL * gap

    # Blinks: the upper lids come down onto the lower ones, which rise a little.
    skin0 = 68 + N_FOREHEAD + N_RING
    for j, (upper, lower, _) in enumerate(_LID_PAIRS):
        basis = BASIS_BLINK_L if upper < 42 else BASIS_BLINK_R
        gap = lm[lower] - lm[upper]
        # Not quite shut (the backward spline cannot fold a gap to a line): the lid skin above
        # follows part way, the cheek below holds.
        bases[basis, upper] += BLINK_TRAVEL * gap
        bases[basis, lower] -= 0.08 * gap
        bases[basis, skin0 + j] += _LID_SKIN_FOLLOW * BLINK_TRAVEL * gap
        # Widened eyes: the upper lid lifts by a share of the opening, the lid skin with it.
        bases[BASIS_WIDEN, upper] -= WIDEN_TRAVEL * gap
        bases[BASIS_WIDEN, skin0 + j] -= 0.6 * WIDEN_TRAVEL * gap

    # Lip to teeth (f, v): the upper lip lifts off the upper teeth, the lower lip rises and tucks
    # under them (its outer edge rises more than its inner one: it thins). The inner lips part by
    # about half their rest gap plus 2 % of the mouth width, where the mouth painter shows the upper
    # teeth's edge; they never cross (a crossing folds the warp).
    t = LIP_TEETH_TRAVEL * mw
    for i, w in ((61, 0.85), (62, 1.0), (63, 0.85), (50, 0.6), (51, 0.7), (52, 0.6)):
        bases[BASIS_LIP_TEETH, i] -= w * t * down
    for up_in, lo_in in ((61, 67), (62, 66), (63, 65)):
        gap = max(0.0, float((lm[lo_in] - lm[up_in]) @ down))
        bases[BASIS_LIP_TEETH, lo_in] -= (0.5 * gap + 0.5 * t) * down
    for i, w in ((56, 1.3), (57, 1.5), (58, 1.3), (55, 0.5), (59, 0.5)):
        bases[BASIS_LIP_TEETH, i] -= w * t * down

    # Brows raised (emphasis, a rising question): the brows lift, the inner ends a little more;
    # the forehead above follows part way, the upper lid skin a little.
    lift = BROW_TRAVEL * g.face_height
    for i in BROWS:
        inner = 1.0 - min(abs(i - 21), abs(i - 22)) / 5.0  # 1 at the inner ends (21, 22), 0.2 outside
        bases[BASIS_BROWS, i] -= (0.8 + 0.3 * inner) * lift * down
    bases[BASIS_BROWS, 68 : 68 + N_FOREHEAD] -= 0.45 * lift * down
    bases[BASIS_BROWS, skin0 : skin0 + 4] -= 0.2 * lift * down

    # Smile (> 0; a frown < 0): the corners go up and out, the lips beside them follow, the upper
    # lip lifts a touch.
    for i, side, w in ((48, -1, 1.0), (60, -1, 0.9), (54, 1, 1.0), (64, 1, 0.9),
                       (49, -1, 0.45), (59, -1, 0.5), (53, 1, 0.45), (55, 1, 0.5),
                       (61, -1, 0.35), (67, -1, 0.35), (63, 1, 0.35), (65, 1, 0.35)):
        bases[BASIS_SMILE, i] += w * SMILE_TRAVEL * mw * (0.6 * sideways(side) - down)
    for i in (50, 51, 52):
        bases[BASIS_SMILE, i] -= 0.15 * SMILE_TRAVEL * mw * down
    return bases


# The warp must never fold (a fold mirrors the picture: tearing). Each drive's basis is scaled down,
# once per portrait, until its full travel keeps the backward map's area ratio (Jacobian
# determinant) above _MIN_AREA_RATIO everywhere it moves; close-set features (a narrow, turned eye;
# lips parted wide at rest) then move a little less instead of tearing. The drives that combine
# (jaw with width or rounding) are checked together too.
_MIN_AREA_RATIO = 0.15
_MIN_AREA_RATIO_BLINK = 0.02  # a blink lasts a few frames: it may squeeze harder, never fold
_LIMIT_FLOOR = 0.1  # the least travel a basis keeps (a bad landmark fit all but freezes)
_LIMIT_HALVINGS = 5  # bisection steps of the search for the largest safe travel
_GUARD_SAMPLES = 96  # sample points across the region a basis moves, each way


def _min_area_ratio(rest: np.ndarray, moved: np.ndarray, box: tuple[np.ndarray, np.ndarray], scale: float) -> float:
    """The smallest Jacobian determinant of the backward spline (targets `moved` -> `rest`) over `box`."""
    low, high = box
    xs = np.linspace(low[0], high[0], _GUARD_SAMPLES)
    ys = np.linspace(low[1], high[1], _GUARD_SAMPLES)
    gx, gy = np.meshgrid(xs, ys)
    points = torch.as_tensor(np.stack([gx, gy], -1).reshape(1, -1, 2), dtype=torch.float64)
    targets = torch.as_tensor(moved[None], dtype=torch.float64)
    weights = solve_backward_tps(targets, torch.as_tensor(rest[None], dtype=torch.float64), scale)
    source = (points + eval_tps(weights, targets, points, scale)).reshape(_GUARD_SAMPLES, _GUARD_SAMPLES, 2).numpy()
    step_x, step_y = xs[1] - xs[0], ys[1] - ys[0]
    d_dx = np.diff(source, axis=1)[:-1] / step_x  # (n-1, n-1, 2)
    d_dy = np.diff(source, axis=0)[:, :-1] / step_y
    return float((d_dx[..., 0] * d_dy[..., 1] - d_dx[..., 1] * d_dy[..., 0]).min())


def limit_bases(rest: np.ndarray, bases: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(bases scaled so that no drive at full travel folds the warp, the scale of each basis).

    About 0.1-0.3 s on one CPU core; remembered for the last few portraits (a built-in portrait's
    sessions all share its rig)."""
    limits = _travel_limits(rest.tobytes(), bases.tobytes(), bases.shape, scale)
    return bases * limits[:, None, None], limits


@functools.lru_cache(maxsize=16)
def _travel_limits(rest_bytes: bytes, bases_bytes: bytes, shape: tuple[int, ...], scale: float) -> np.ndarray:
    rest = np.frombuffer(rest_bytes, dtype=np.float64).reshape(shape[1], 2).copy()
    bases = np.frombuffer(bases_bytes, dtype=np.float64).reshape(shape).copy()
    limits = np.ones(len(bases))

    def region(moving: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pts = rest[np.linalg.norm(moving, axis=-1) > 1e-9]
        pad = 0.5 * float(np.ptp(pts, axis=0).max()) + 2.0
        return pts.min(axis=0) - pad, pts.max(axis=0) + pad

    def safe(combo: list[int], t: float) -> bool:
        signs = (1.0, -1.0) if set(combo) & set(SIGNED_BASES) else (1.0,)  # narrowing, a frown
        for sign in signs:
            moving = t * sum(limits[k] * bases[k] * (sign if k in SIGNED_BASES else 1.0) for k in combo)
            if np.any(np.linalg.norm(moving, axis=-1) > 1e-9):
                floor = _MIN_AREA_RATIO_BLINK if set(combo) <= {BASIS_BLINK_L, BASIS_BLINK_R} else _MIN_AREA_RATIO
                if _min_area_ratio(rest, rest + moving, region(moving), scale) < floor:
                    return False
        return True

    def largest(combo: list[int]) -> float:
        if safe(combo, 1.0):
            return 1.0
        low, high = _LIMIT_FLOOR, 1.0
        for _ in range(_LIMIT_HALVINGS):
            middle = 0.5 * (low + high)
            low, high = (middle, high) if safe(combo, middle) else (low, middle)
        return low

    for k in range(len(bases)):
        limits[k] *= largest([k])
    for combo in ([BASIS_JAW, BASIS_WIDTH], [BASIS_JAW, BASIS_ROUND], [BASIS_WIDTH, BASIS_SMILE],
                  [BASIS_JAW, BASIS_SMILE], [BASIS_BROWS, BASIS_WIDEN]):
        t = largest(combo)
        limits[combo] *= t
    limits.setflags(write=False)
    return limits


def roi_size(width: int, height: int, field_scale: int) -> tuple[int, int]:
    """(w, h) of the coarse region-of-interest grid; fixed per output size so streams batch."""
    return (
        max(8, -(-int(ROI_FRACTION[0] * width) // field_scale)),
        max(8, -(-int(ROI_FRACTION[1] * height) // field_scale)),
    )


def build_rig(
    landmarks: np.ndarray, width: int, height: int, field_scale: int, device: torch.device
) -> Rig:
    g = rig_geometry(landmarks)
    rest = rest_points(landmarks, g)
    bases, limits = limit_bases(rest, drive_bases(landmarks, g), float(width))
    w_roi, h_roi = roi_size(width, height, field_scale)
    # Centre the region on the face ellipse, keep it inside the image.
    cx, cy = g.centre
    x0 = float(np.clip(cx - 0.5 * w_roi * field_scale, 0, max(0, width - w_roi * field_scale)))
    y0 = float(np.clip(cy - 0.5 * h_roi * field_scale, 0, max(0, height - h_roi * field_scale)))
    origin = np.array([x0, y0]) + 0.5 * (field_scale - 1)  # centre of the first coarse cell
    xs = origin[0] + field_scale * np.arange(w_roi)
    ys = origin[1] + field_scale * np.arange(h_roi)
    gx, gy = np.meshgrid(xs, ys)
    rel = np.stack([gx - g.centre[0], gy - g.centre[1]], axis=-1)
    rho = np.sqrt(((rel @ g.right) / g.axes[0]) ** 2 + ((rel @ g.down) / g.axes[1]) ** 2)
    fade = smoothstep((FADE_SCALE - rho) / (FADE_SCALE - RING_SCALE))
    # A face too large for the region still fades to zero at its edges (no seam), over 3 cells.
    edge_x = np.clip(np.minimum(np.arange(w_roi), w_roi - 1 - np.arange(w_roi)) / 3.0, 0.0, 1.0)
    edge_y = np.clip(np.minimum(np.arange(h_roi), h_roi - 1 - np.arange(h_roi)) / 3.0, 0.0, 1.0)
    fade = fade * edge_y[:, None] * edge_x[None, :]
    return Rig(
        geometry=g,
        rest=torch.as_tensor(np.asarray(rest, dtype=np.float32), device=device),
        bases=torch.as_tensor(np.asarray(bases, dtype=np.float32), device=device),
        roi_origin=torch.as_tensor(np.asarray(origin, dtype=np.float32), device=device),
        fade=torch.as_tensor(np.asarray(fade, dtype=np.float32), device=device),
        travel=limits,
    )


# ---- thin-plate spline ----------------------------------------------------------------------

def _tps_kernel(d2: torch.Tensor) -> torch.Tensor:
    """U(r) = r^2 log r^2 from squared distances; 0 at r = 0."""
    return torch.xlogy(d2, d2)


def solve_backward_tps(targets: torch.Tensor, rest: torch.Tensor, scale: float) -> torch.Tensor:
    """Spline weights mapping target positions to rest positions.

    targets, rest: (B, N, 2) pixels. Returns (B, N + 3, 2): N kernel weights then the affine part,
    for the displacement (rest - target) / scale as a function of position / scale.
    """
    b, n, _ = targets.shape
    out_dtype = targets.dtype
    # float64: the kernel matrix is badly conditioned in float32 (ripples across the forehead).
    targets, rest = targets.double(), rest.double()
    p = targets / scale
    d2 = ((p[:, :, None, :] - p[:, None, :, :]) ** 2).sum(-1)  # (B, N, N)
    k = _tps_kernel(d2) + TPS_REGULARISATION * torch.eye(n, dtype=p.dtype, device=p.device)
    ones = torch.ones(b, n, 1, dtype=p.dtype, device=p.device)
    pa = torch.cat([ones, p], dim=-1)  # (B, N, 3)
    top = torch.cat([k, pa], dim=-1)  # (B, N, N + 3)
    bottom = torch.cat([pa.transpose(1, 2), torch.zeros(b, 3, 3, dtype=p.dtype, device=p.device)], dim=-1)
    a = torch.cat([top, bottom], dim=1)  # (B, N + 3, N + 3)
    values = torch.cat([(rest - targets) / scale, torch.zeros(b, 3, 2, dtype=p.dtype, device=p.device)], dim=1)
    return torch.linalg.solve(a, values).to(out_dtype)


def eval_tps(weights: torch.Tensor, targets: torch.Tensor, points: torch.Tensor, scale: float) -> torch.Tensor:
    """Displacement in pixels at `points` (B, G, 2) from weights (B, N + 3, 2); returns (B, G, 2)."""
    n = targets.shape[1]
    p = targets / scale
    q = points / scale
    # |q - p|^2 = [q, |q|^2, 1] . [-2p, 1, |p|^2]: one batched product, (B, G, N)
    ones_q = torch.ones(q.shape[0], q.shape[1], 1, dtype=q.dtype, device=q.device)
    ones_p = torch.ones(p.shape[0], p.shape[1], 1, dtype=p.dtype, device=p.device)
    q_aug = torch.cat([q, (q * q).sum(-1, keepdim=True), ones_q], dim=-1)  # (B, G, 4)
    p_aug = torch.cat([-2.0 * p, ones_p, (p * p).sum(-1, keepdim=True)], dim=-1)  # (B, N, 4)
    d2 = torch.bmm(q_aug, p_aug.transpose(1, 2)).clamp_min_(0.0)
    u = _tps_kernel(d2)
    disp = torch.baddbmm(torch.cat([ones_q, q], dim=-1) @ weights[:, n:], u, weights[:, :n])
    return disp * scale
