"""The inside of the open mouth, painted over the warped frame.

The warp stretches whatever lay between the lips at rest; once the jaw opens, that stretch is
covered by a painted interior: the inner-lip outline at its target position (smoothed with a
Catmull-Rom spline) as a soft mask feathered over about a pixel, filled with a dark cavity that is
darker toward the corners, a band of upper teeth hanging from the upper lip whose height follows the
opening (with the gaps between the teeth where they stand round the dental arch), and a hint of
tongue at the bottom. The lips themselves are never painted: they are warped.

The painting follows the head's pose: the mouth opens along the face's own down axis, and on a
turned face the middle of the mouth, the shading and the teeth lie toward the far corner, as the
landmarks place them. The painted colours take the portrait's palette: a black-and-white photo or a
statue gets a grey interior, a sepia print a sepia one.

Work happens in a box around each mouth only; the math is batched over streams, the paste back
into each frame is a slice per stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

_SUBDIV = 4  # spline samples per landmark segment of the inner lip


def _catmull_rom_matrix(n_points: int, subdiv: int) -> np.ndarray:
    """(n_out, n_points) weights sampling a Catmull-Rom spline through n_points (ends repeated)."""
    rows = []
    for seg in range(n_points - 1):
        for k in range(subdiv):
            t = k / subdiv
            idx = [max(seg - 1, 0), seg, seg + 1, min(seg + 2, n_points - 1)]
            w = [
                0.5 * (-t**3 + 2 * t**2 - t),
                0.5 * (3 * t**3 - 5 * t**2 + 2),
                0.5 * (-3 * t**3 + 4 * t**2 + t),
                0.5 * (t**3 - t**2),
            ]
            row = np.zeros(n_points)
            for i, wi in zip(idx, w, strict=True):
                row[i] += wi
            rows.append(row)
    last = np.zeros(n_points)
    last[-1] = 1.0
    rows.append(last)
    return np.stack(rows)


_CR = _catmull_rom_matrix(5, _SUBDIV)  # (17, 5)


def _interp_monotone(u: torch.Tensor, knots_u: torch.Tensor, knots_v: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear v(u) through knots sorted by u, clamped at the ends.

    u: (B, P); knots: (B, S). v(u) = v_0 + sum_i clamp((u - u_i) / (u_{i+1} - u_i), 0, 1) (v_{i+1} - v_i).
    """
    du = (knots_u[:, 1:] - knots_u[:, :-1]).clamp_min(1e-3)  # (B, S-1)
    dv = knots_v[:, 1:] - knots_v[:, :-1]
    t = ((u[:, :, None] - knots_u[:, None, :-1]) / du[:, None, :]).clamp(0.0, 1.0)  # (B, P, S-1)
    return knots_v[:, :1] + (t * dv[:, None, :]).sum(-1)


def _smoothstep(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


class _MouthFrame:
    """A mouth's local frame and its inner-lip curves in it: upper (uu, vu) and lower (ul, vl),
    (B, 17) each. The origin lies between the inner corners, u runs along the corners' line and v
    down the face's own axis (nose bridge to chin), so the mouth opens along v whatever the head's
    tilt, and a turned face's mouth is not sheared."""

    def __init__(self, inner: torch.Tensor, down: torch.Tensor, cr: torch.Tensor) -> None:
        left, right = inner[:, 0], inner[:, 4]
        axis = right - left
        self.axis = axis / axis.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        self.down = down
        # to_local solves rel = u axis + v down; det is about 1 (down is near perpendicular to axis).
        self.det = (self.axis[:, 0] * down[:, 1] - self.axis[:, 1] * down[:, 0]).clamp_min(0.2)
        self.origin = 0.5 * (left + right)
        self.uu, self.vu = self.to_local(cr @ inner[:, [0, 1, 2, 3, 4]])
        self.ul, self.vl = self.to_local(cr @ inner[:, [0, 7, 6, 5, 4]])
        self.uu = torch.cummax(self.uu, dim=1).values
        self.ul = torch.cummax(self.ul, dim=1).values
        self.u_first = torch.minimum(self.uu[:, :1], self.ul[:, :1])
        self.u_last = torch.maximum(self.uu[:, -1:], self.ul[:, -1:])
        self.span = (self.u_last - self.u_first).clamp_min(1.0)
        # The middle of the lips (62 and 66): on a turned face it lies toward the far corner.
        u_mid = 0.5 * (self.to_local(inner[:, 2:3])[0] + self.to_local(inner[:, 6:7])[0])
        self.u_mid = torch.maximum(torch.minimum(u_mid, self.u_last - 1.0), self.u_first + 1.0)

    def to_local(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rel = p - self.origin[:, None, :]
        ax, ay = self.axis[:, None, 0], self.axis[:, None, 1]
        dx, dy = self.down[:, None, 0], self.down[:, None, 1]
        det = self.det[:, None]
        return (rel[..., 0] * dy - rel[..., 1] * dx) / det, (ax * rel[..., 1] - ay * rel[..., 0]) / det

    def to_image(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.origin[:, None, :] + u[..., None] * self.axis[:, None, :] + v[..., None] * self.down[:, None, :]

    def centre_weight(self, u: torch.Tensor) -> torch.Tensor:
        """1 at the middle of the lips, 0 at either corner (each side over its own length)."""
        left = (self.u_mid - self.u_first).clamp_min(1.0)
        right = (self.u_last - self.u_mid).clamp_min(1.0)
        t = torch.where(u < self.u_mid, (u - self.u_mid) / left, (u - self.u_mid) / right)
        return (1.0 - t * t).clamp_min(0.0)


@dataclass
class MouthBatch:
    """The per-portrait constants the painter needs, stacked over the streams of a step."""

    images: torch.Tensor  # (B, 3, H, W) the portraits, [0, 1]
    rest_inner: torch.Tensor  # (B, 8, 2) inner lips (60..67) at rest, pixels
    rest_gap: torch.Tensor  # (B,) inner-lip gap at rest (62 to 66), pixels
    mouth_width: torch.Tensor  # (B,) pixels
    down: torch.Tensor  # (B, 2) the face's own down axis (unit)
    yaw_rad: torch.Tensor  # (B,) the head's turn (> 0 toward image right)
    teeth_rgb: torch.Tensor  # (B, 3) painted teeth colour
    real_teeth: torch.Tensor  # (B,) 1 where the portrait shows its own teeth at rest
    lip_rgb: torch.Tensor  # (B, 3) the portrait's lip colour, [0, 1]
    saturation: torch.Tensor  # (B,) 1 for a colour photo, 0 for a black-and-white one
    box_origins: np.ndarray  # (B, 2) int, the painted box of each mouth
    box_size: tuple[int, int]


# Where the painted teeth meet, in radians round the dental arch from its middle (central and lateral
# incisors, canines, a premolar); the arch reaches the mouth corners at about _ARCH_CORNER_RAD.
_TOOTH_EDGES_RAD = (0.0, 0.30, -0.30, 0.53, -0.53, 0.72, -0.72)
_ARCH_CORNER_RAD = 0.80


def _tooth_gaps(
    u: torch.Tensor, frame: _MouthFrame, yaw: torch.Tensor, feather: float
) -> torch.Tensor:
    """(B, P) 0..1: how much of a gap between two painted teeth each pixel shows.

    The teeth stand on an arch round the mouth: a pixel's position u becomes its angle round the arch
    (seen turned by the head's yaw), and the gaps sit at fixed angles, a pixel or two wide, narrower
    where the arch turns away."""
    s_yaw, c = torch.sin(yaw)[:, None], _ARCH_CORNER_RAD
    # Arch radius per side, from where each corner is seen: x(theta) = r (sin(theta + yaw) - sin(yaw)).
    r_left = (frame.u_mid - frame.u_first) / (s_yaw - torch.sin(yaw[:, None] - c)).clamp_min(0.05)
    r_right = (frame.u_last - frame.u_mid) / (torch.sin(yaw[:, None] + c) - s_yaw).clamp_min(0.05)
    radius = torch.where(u < frame.u_mid, r_left, r_right).clamp_min(1.0)
    theta = torch.asin(((u - frame.u_mid) / radius + s_yaw).clamp(-1.0, 1.0)) - yaw[:, None]
    seen = (radius * torch.cos(theta + yaw[:, None])).clamp_min(0.0)  # pixels per radian here
    gaps = torch.zeros_like(u)
    width = 0.45 * feather
    for edge in _TOOTH_EDGES_RAD:
        distance_px = (theta - edge) * seen
        gaps = torch.maximum(gaps, torch.exp(-0.5 * (distance_px / width) ** 2))
    return gaps


def _tinted(colour: torch.Tensor, mouth: MouthBatch) -> torch.Tensor:
    """Painted colours (B, 3, P) seen in the portrait's own palette: a black-and-white or sepia
    portrait gets its interior in its lips' hue at the same brightness, a colour one as painted."""
    lum = colour.mean(dim=1, keepdim=True)
    lip = mouth.lip_rgb / mouth.lip_rgb.mean(dim=1, keepdim=True).clamp_min(1e-3)  # hue, mean 1
    toned = lum * lip[:, :, None]
    sat = mouth.saturation[:, None, None]
    return toned + (colour - toned) * sat


def mouth_boxes(
    centres: np.ndarray, mouth_widths: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, tuple[int, int]]:
    """Integer box origins (B, 2) and one common (w, h) covering every mouth and its widest opening."""
    # Inner lips: about +-0.45 mouth widths across (more when spread), from 0.15 above the centre
    # to 0.15 below it at rest, plus the jaw drop (about 0.17) and head motion when open.
    w = int(min(width, np.ceil(1.3 * mouth_widths.max()) + 4))
    h = int(min(height, np.ceil(0.95 * mouth_widths.max()) + 4))
    x0 = np.clip(np.round(centres[:, 0] - w / 2), 0, width - w)
    y0 = np.clip(np.round(centres[:, 1] - 0.33 * h), 0, height - h)
    return np.stack([x0, y0], axis=1).astype(np.int64), (w, h)


def paint_mouth(frames: torch.Tensor, inner: torch.Tensor, press: torch.Tensor, mouth: MouthBatch) -> torch.Tensor:
    """Composite the mouth interior into `frames` (B, 3, H, W) float in [0, 1], in place; returns it.

    inner: (B, 8, 2) inner-lip points 60..67 at their target positions in output pixels; the
    interior fades in as the gap grows beyond its rest size. press: (B,) lips pressed together
    (0..1): what is left between them is drawn as the dark seam of closed lips. Where the portrait
    shows its teeth at rest (mouth.real_teeth), the teeth band is the portrait's own teeth, carried
    with the upper lip, instead of a painted one.
    """
    b = frames.shape[0]
    dev, dt = frames.device, frames.dtype
    bw, bh = mouth.box_size
    feather = max(0.6, 1.1 * frames.shape[-1] / 512.0)

    cr = torch.tensor(_CR, dtype=dt, device=dev)
    frame_now = _MouthFrame(inner, mouth.down, cr)
    frame_rest = _MouthFrame(mouth.rest_inner, mouth.down, cr)
    uu, vu, ul, vl = frame_now.uu, frame_now.vu, frame_now.ul, frame_now.vl

    ys = torch.arange(bh, dtype=dt, device=dev)
    xs = torch.arange(bw, dtype=dt, device=dev)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    org = torch.as_tensor(mouth.box_origins, dtype=dt, device=dev)
    px = torch.stack([gx, gy], dim=-1).reshape(1, -1, 2) + org[:, None, :]  # (B, P, 2)
    u, v = frame_now.to_local(px)  # (B, P)

    v_up = _interp_monotone(u, uu, vu)
    v_lo = _interp_monotone(u, ul, vl)
    u_first, u_last, span = frame_now.u_first, frame_now.u_last, frame_now.span
    d_up, d_lo = v - v_up, v_lo - v
    d_side = torch.minimum(u - u_first, u_last - u)
    inside = (torch.minimum(torch.minimum(d_up, d_lo), d_side) / feather + 0.5).clamp(0.0, 1.0)

    # Fade the interior in as the gap grows beyond its rest size (at rest: the portrait itself).
    _, v62 = frame_now.to_local(inner[:, 2:3])
    _, v66 = frame_now.to_local(inner[:, 6:7])
    gap_centre = (v66 - v62)[:, 0]  # (B,)
    rest_gap = mouth.rest_gap
    opening = gap_centre - rest_gap
    fade = (opening / (1.5 + 0.4 * rest_gap)).clamp(0.0, 1.0)  # (B,)

    s = ((u - u_first) / span).clamp(0.0, 1.0)
    centre = frame_now.centre_weight(u)  # 1 in the middle of the lips, 0 at the corners
    gap = (v_lo - v_up).clamp_min(0.0)
    mw = mouth.mouth_width[:, None]

    # Cavity: dark red-brown, darker toward the corners and under the teeth.
    depth = (d_up / gap.clamp_min(1.0)).clamp(0.0, 1.0)
    cavity = torch.tensor([0.17, 0.045, 0.04], dtype=dt, device=dev)[None, :, None]
    cavity = cavity * ((0.25 + 0.75 * centre.sqrt()) * (0.75 + 0.25 * depth))[:, None, :]

    # Tongue: a soft ellipse rising from the lower lip in the middle of the lips.
    rx = 0.60 * torch.where(u < frame_now.u_mid, frame_now.u_mid - u_first, u_last - frame_now.u_mid).clamp_min(1.0)
    ry = (0.45 * gap_centre[:, None]).clamp_min(1.0)
    v_base = v_lo + 0.25 * ry
    tongue_e = ((u - frame_now.u_mid) / rx) ** 2 + ((v - v_base) / ry) ** 2
    tongue_a = _smoothstep((1.0 - tongue_e) / 0.8) * 0.7
    tongue = torch.tensor([0.50, 0.17, 0.16], dtype=dt, device=dev)[None, :, None]
    tongue = tongue * ((0.35 + 0.65 * centre) * (0.7 + 0.3 * depth))[:, None, :]

    # Upper teeth: a band hanging from the upper lip, its height following the opening, with the
    # gaps between the teeth where they stand round the arch.
    teeth_h = torch.minimum(0.07 * mw, 0.5 * gap)
    teeth_a = ((teeth_h - d_up) / (0.7 * feather) + 0.5).clamp(0.0, 1.0) * (teeth_h > 0.5).to(dt)
    top_shadow = 0.6 + 0.4 * _smoothstep(d_up / (0.45 * teeth_h.clamp_min(0.5)))
    gaps = _tooth_gaps(u, frame_now, mouth.yaw_rad, feather)
    teeth_shade = (0.3 + 0.7 * centre.clamp_min(0.0) ** 0.7) * top_shadow * (1.0 - 0.45 * gaps)
    teeth = _tinted(mouth.teeth_rgb[:, :, None] * teeth_shade[:, None, :], mouth)

    # Or the portrait's own teeth: what lay between its lips at rest, as deep below the upper lip
    # as it lay then, carried along with the upper lip (no stretch).
    real = mouth.real_teeth.to(dt)[:, None]
    if bool((real > 0).any()):
        images = mouth.images
        u_rest = frame_rest.u_first + s * frame_rest.span
        v_up_rest = _interp_monotone(u_rest, frame_rest.uu, frame_rest.vu)
        gap_rest = (_interp_monotone(u_rest, frame_rest.ul, frame_rest.vl) - v_up_rest).clamp_min(0.0)
        src = frame_rest.to_image(u_rest, v_up_rest + d_up.clamp_min(0.0))  # (B, P, 2) pixels
        h_img, w_img = images.shape[-2:]
        norm = torch.stack([(2.0 * src[..., 0] + 1.0) / w_img - 1.0, (2.0 * src[..., 1] + 1.0) / h_img - 1.0], -1)
        own = F.grid_sample(images, norm[:, None], mode="bilinear", padding_mode="border", align_corners=False)
        own = own[:, :, 0] * (0.55 + 0.45 * centre.clamp_min(0.0) ** 0.5)[:, None, :]  # (B, 3, P)
        own_h = (gap_rest - 1.0).clamp_min(0.0)
        own_a = ((own_h - d_up) / (1.5 * feather) + 0.5).clamp(0.0, 1.0)
        teeth = teeth + (own - teeth) * real[:, None, :]
        teeth_a = teeth_a + (own_a - teeth_a) * real

    colour = _tinted(cavity + (tongue - cavity) * tongue_a[:, None, :], mouth)
    colour = colour + (teeth - colour) * teeth_a[:, None, :]
    # Pressed lips: the sliver left between them (the fold guard keeps some) is lip, a little
    # shaded, with the dark line where the lips meet, darker toward the corners.
    meet = (v - 0.5 * (v_up + v_lo)).abs() / (0.6 * feather + 0.5)
    line = (1.0 - meet).clamp(0.0, 1.0)
    shade = 0.8 - (0.35 + 0.15 * (1.0 - centre)) * line
    seam = mouth.lip_rgb[:, :, None] * shade[:, None, :]
    seam_a = (_smoothstep((press - 0.2) / 0.5) * (1.0 - fade))[:, None]  # (B, 1)
    colour = colour + (seam - colour) * (seam_a / (fade[:, None] + seam_a).clamp_min(1e-6))[:, None, :]
    # The seam also covers a pixel or two below the inner lower lip (landmarks often sit on the teeth).
    grow = 1.5 * feather
    inside_seam = (torch.minimum(torch.minimum(d_up + 0.5 * grow, d_lo + grow), d_side) / feather + 0.5).clamp(0, 1)
    alpha = (inside * fade[:, None] + inside_seam * seam_a)[:, None, :]  # (B, 1, P)
    colour = colour.reshape(b, 3, bh, bw)
    alpha = alpha.reshape(b, 1, bh, bw)
    for i in range(b):
        x0, y0 = int(mouth.box_origins[i, 0]), int(mouth.box_origins[i, 1])
        region = frames[i, :, y0 : y0 + bh, x0 : x0 + bw]
        region.mul_(1.0 - alpha[i]).add_(colour[i] * alpha[i])
    return frames
