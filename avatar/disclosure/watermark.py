"""The invisible watermark: informed spread spectrum on a grid of 64 x 64 cells of the luma.

The frame's luma is averaged over a grid of GRID x GRID cells (the grid is tied to the frame's
edges, not to pixels, so it survives scaling), and each cell minus the mean of its four neighbours
is its *residual*: that removes the image's smooth shading, and brightness and contrast changes
only scale it. The cells are dealt, by a fixed public key, into 96 groups of about 43 cells, each
cell with a sign. A group's *projection* is the signed sum of its cells' residuals, and one group
carries one bit in the sign of its projection: 64 groups the payload (payload.py), 32 a known
pilot pattern that tells a marked frame from any other.

Embedding is *informed*: the embedder knows the frame, so it moves each projection only as far as
needed to have the right sign with a margin, instead of adding a fixed pattern that the image's own
texture would drown (classic spread spectrum) or cancelling the image entirely (ISS). The margin is
as large as a distortion budget allows (`psnr_db`, at least 40 dB against the unmarked frame), so a
busy frame gets a smaller margin than a plain one, and a frame whose texture fights a few groups too
hard gives those up (detection counts pilot signs; the payload has a CRC). The change is a smooth
field, nearly constant inside each cell with soft edges (`upsample`), added equally to R, G and B
(luma only), weaker on flat cells where it would show. The pattern is the same in every frame of a stream, which is
what video codecs keep best (a pattern that changed per frame would be coded away as noise).

Everything is batched torch on the generator's device, mostly at grid resolution: the frame itself is
read once and written once. Detection (detect.py) uses the same `layout()` and `cell_residuals()`.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from avatar.disclosure.payload import PAYLOAD_BITS

GRID = 64
PILOT_BITS = 32
GROUPS = PAYLOAD_BITS + PILOT_BITS  # payload groups first, then the pilot
CLIP_MEDIANS = 3.0  # residuals count up to this many times their median magnitude
CLIP_FLOOR = 6.0  # and at least this far (levels of 255): a plain frame is not clipped at all
PILOT_WEIGHT = 1.5  # pilot margins over payload margins (detection first, the payload second)
KEY = b"talking-portrait watermark v1"

SUBCELLS = 2  # cells are upsampled as 2x2 blocks, then bilinearly: flat inside, soft at the edges


def upsample(cells: torch.Tensor, height_px: int, width_px: int) -> torch.Tensor:
    """(B, 1, GRID, GRID) per-cell values -> (B, 1, H, W): nearly constant inside each cell (what
    the pooling of detection sees best) with soft edges (no visible block boundaries)."""
    blocks = F.interpolate(cells, scale_factor=SUBCELLS, mode="nearest")
    return F.interpolate(blocks, size=(height_px, width_px), mode="bilinear", align_corners=False)


_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class Layout:
    """Which cell belongs to which group, with which sign: public, fixed by KEY."""

    chips: np.ndarray  # (GROUPS, GRID * GRID) float32: the cell's sign in its group, 0 elsewhere
    pilot: np.ndarray  # (PILOT_BITS,) uint8: the known bits of the pilot groups


@functools.cache
def layout() -> Layout:
    rng = np.random.default_rng(np.frombuffer(hashlib.sha256(KEY).digest(), dtype=np.uint32))
    cells = GRID * GRID
    group_of_cell = np.empty(cells, dtype=np.int64)
    group_of_cell[rng.permutation(cells)] = np.arange(cells) % GROUPS
    chips = np.zeros((GROUPS, cells), dtype=np.float32)
    chips[group_of_cell, np.arange(cells)] = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=cells)
    pilot = rng.integers(0, 2, PILOT_BITS).astype(np.uint8)
    return Layout(chips=chips, pilot=pilot)


def luma(rgb255: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB 0..255 -> (B, 1, H, W) luma (BT.601 weights, as the encoders use)."""
    return (_LUMA[0] * rgb255[:, 0] + _LUMA[1] * rgb255[:, 1] + _LUMA[2] * rgb255[:, 2]).unsqueeze(1)


def grid_residuals(cells: torch.Tensor) -> torch.Tensor:
    """(B, 1, GRID, GRID) cell means -> each cell minus the mean of its 4 neighbours (edges repeated)."""
    pad = F.pad(cells, (1, 1, 1, 1), mode="replicate")
    neighbours = (pad[..., :-2, 1:-1] + pad[..., 2:, 1:-1] + pad[..., 1:-1, :-2] + pad[..., 1:-1, 2:]) * 0.25
    return cells - neighbours


def residual_bound(residuals: torch.Tensor) -> torch.Tensor:
    """(B, N) residuals -> (B, 1): the bound each frame's residuals are clipped to before they count.

    Strong edges (and the visible label's text) have residuals ten times the typical one, and an
    encoder changes them by more than the watermark's margin; clipped, they cannot outvote it."""
    return (CLIP_MEDIANS * residuals.abs().median(dim=1, keepdim=True).values).clamp_min(CLIP_FLOOR)


def cell_residuals(luma_255: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luma 0..255 of frames of any size -> (B, GRID * GRID) clipped residuals of the cells."""
    residuals = grid_residuals(F.adaptive_avg_pool2d(luma_255, GRID)).flatten(1)
    bound = residual_bound(residuals)
    return torch.maximum(torch.minimum(residuals, bound), -bound)


class WatermarkEmbedder:
    """Embeds per-stream payload bits into batches of frames of one size on one device."""

    def __init__(
        self, width_px: int, height_px: int, device: torch.device, *, psnr_db: float = 40.5, margin: float = 80.0,
        pilot_weight: float = PILOT_WEIGHT,
    ) -> None:
        self.width_px, self.height_px, self.device = width_px, height_px, device
        lay = layout()
        chips = torch.as_tensor(lay.chips)
        self.group_of_cell = chips.abs().argmax(dim=0).to(device)  # (N,)
        self.sign_of_cell = chips.sum(dim=0).to(device)  # (N,) of +-1
        self.pilot_signs = torch.as_tensor(lay.pilot.astype(np.float32) * 2.0 - 1.0, device=device)
        # The margins tried, as fractions of `margin`: the largest that fits the budget is taken.
        self.margins = torch.linspace(1.0 / 32, 1.0, 32, device=device) * margin
        self.min_margin = 0.25 * margin
        # Pilot groups get a larger margin than payload groups: detection stands on them.
        self.group_weight = torch.cat(
            [torch.ones(PAYLOAD_BITS, device=device), torch.full((PILOT_BITS,), pilot_weight, device=device)]
        )
        # Budget: the mean squared change per pixel (in levels of 255) that keeps psnr_db.
        self.mse_budget = 255.0**2 / 10.0 ** (psnr_db / 10.0)
        kernel, upsampled_energy = self._upsampling_response(width_px, height_px)
        # The response is an outer product: rows x columns, each summing to what the kernel sums to.
        column_sums, row_sums = kernel[0, 0].sum(dim=0), kernel[0, 0].sum(dim=1)
        total = float(kernel.sum())
        self._row_taps = [float(v) for v in row_sums / total**0.5]
        self._column_taps = [float(v) for v in column_sums / total**0.5]
        self._budget_cells = self.mse_budget * GRID * GRID / upsampled_energy  # the same, summed over cells
        # A cell's own residual per unit of change in it: the centre tap of (upsample, pool, residual).
        centre = torch.zeros(1, 1, 7, 7, device=device)
        centre[0, 0, 3, 3] = 1.0
        self._self_gain = float(grid_residuals(self._upsample_pool(centre))[0, 0, 3, 3])

    @staticmethod
    def _upsampling_response(width_px: int, height_px: int) -> tuple[torch.Tensor, float]:
        """What pooling sees of a cell change once it is upsampled to the frame (a 3x3 kernel at
        grid resolution), and the energy per pixel of an upsampled random cell pattern per unit of
        its energy per cell (the distortion budget is counted in pixels)."""
        probe = torch.zeros(1, 1, 9, 9)
        probe[0, 0, 4, 4] = 1.0
        up = upsample(probe, 9 * height_px // GRID, 9 * width_px // GRID)
        kernel = F.adaptive_avg_pool2d(up, 9)[:, :, 3:6, 3:6].contiguous()
        rng = np.random.default_rng(0)
        pattern = torch.as_tensor(rng.choice([-1.0, 1.0], size=(1, 1, GRID, GRID)).astype(np.float32))
        return kernel, float(upsample(pattern, height_px, width_px).pow(2).mean())

    def _upsample_pool(self, cells: torch.Tensor) -> torch.Tensor:
        """Cell changes -> the change of the cell means after upsampling (at grid resolution): the
        3x3 response is separable (rows x columns), so two 3-tap filters instead of a convolution."""
        (top, mid, bottom), (left, centre, right) = self._row_taps, self._column_taps
        pad = F.pad(cells, (1, 1, 1, 1), mode="replicate")
        rows = top * pad[..., :-2, :] + mid * pad[..., 1:-1, :] + bottom * pad[..., 2:, :]
        return left * rows[..., :-2] + centre * rows[..., 1:-1] + right * rows[..., 2:]

    def _per_group(self, per_cell: torch.Tensor) -> torch.Tensor:
        """(B, N) -> (B, GROUPS): the signed sum of each group's cells."""
        out = per_cell.new_zeros(per_cell.shape[0], GROUPS)
        return out.index_add_(1, self.group_of_cell, per_cell * self.sign_of_cell)

    def _clipped_projection(self, residuals: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
        """(B, N) residuals -> (B, G) projections, as detection sees them (clipped to `bound`)."""
        return self._per_group(torch.maximum(torch.minimum(residuals, bound), -bound))

    @staticmethod
    def _cell_weights(cells: torch.Tensor, residual: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
        """(B, N) share of the change each cell takes: full where the image is busy, a third on flat
        cells (where a change would show), none at cells clipped by detection (a change there
        would not count)."""
        flat = residual.flatten(1)
        open_cell = (flat.abs() < 0.8 * bound).float()
        spread = F.avg_pool2d(F.pad(cells, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        local = F.avg_pool2d(F.pad(cells * cells, (1, 1, 1, 1), mode="replicate"), 3, stride=1) - spread**2
        activity = (local.clamp_min(0.0) + residual**2).sqrt().flatten(1)
        return ((activity + 1.0) / (activity.mean(dim=1, keepdim=True) + 1.0)).clamp(0.3, 1.0) * open_cell

    def _allocate(
        self, projection: torch.Tensor, want: torch.Tensor, gain: torch.Tensor, cost: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per frame: the margin of every group (the largest that fits the budget, at least
        min_margin) and which groups are kept (where even min_margin does not fit, the groups that
        cost most are given up). All (B, G)."""
        targets = self.margins[:, None] * self.group_weight  # (M, G)
        deficits = (targets[None] - (want * projection)[:, None, :]).clamp_min(0.0)  # (B, M, G)
        fits = (deficits**2 * cost[:, None, :]).sum(dim=2) <= self._budget_cells  # (B, M)
        best = (fits * torch.arange(1, len(self.margins) + 1, device=fits.device)).argmax(dim=1)
        margin = torch.where(fits.any(dim=1), self.margins[best], self.margins.new_tensor(0.0))
        margin = margin.clamp_min(self.min_margin)[:, None] * self.group_weight
        energy = (margin - want * projection).clamp_min(0.0) ** 2 * cost
        order = energy.argsort(dim=1)
        kept_sorted = energy.gather(1, order).cumsum(dim=1) <= self._budget_cells
        return margin, torch.zeros_like(kept_sorted).scatter(1, order, kept_sorted)

    def embed(self, frames: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        """frames (B, 3, H, W) float 0..1, bits (B, PAYLOAD_BITS) of 0/1 -> marked frames, in place.

        The result may stray past 0..1 by a few levels where the frame is saturated: the uint8
        conversion that follows clamps it, once."""
        b = frames.shape[0]
        # Pool first, then luma: the only full-resolution work is one read here and one add below.
        cells = luma(F.adaptive_avg_pool2d(frames, GRID) * 255.0)  # (B, 1, GRID, GRID)
        residual = grid_residuals(cells)
        flat_residual = residual.flatten(1)
        bound = residual_bound(flat_residual)
        weight = self._cell_weights(cells, residual, bound)  # (B, N)
        want = torch.cat([bits * 2.0 - 1.0, self.pilot_signs.expand(b, -1)], dim=1)  # (B, G) of +-1
        members = weight.new_zeros(b, GROUPS)
        gain = (self._self_gain * members.index_add(1, self.group_of_cell, weight)).clamp_min(1e-3)
        cost = members.index_add(1, self.group_of_cell, weight**2) / gain**2  # cell energy per projection^2
        chip = self.sign_of_cell * weight  # (B, N): a cell's change per unit of its group's amount
        projection = self._clipped_projection(flat_residual, bound)
        margin, kept = self._allocate(projection, want, gain, cost)
        change = torch.zeros_like(flat_residual)
        # Three passes, each on the residuals the marked frame will have (clipped as detection clips
        # them, its bound growing a little with the watermark, measured after the first pass;
        # neighbouring groups leaking into each other a little): each tops up what was left short.
        for step in range(3):
            if step:
                marked = flat_residual + grid_residuals(self._upsample_pool(change.view(b, 1, GRID, GRID))).flatten(1)
                if step == 1:
                    bound = residual_bound(marked)
                projection = self._clipped_projection(marked, bound)
            short = (margin - want * projection).clamp_min(0.0)
            amount = torch.where(kept, short * want / gain, torch.zeros_like(short))
            change = change + amount[:, self.group_of_cell] * chip
        # The top-ups may overshoot the budget a little: scale back to it.
        energy = change.pow(2).sum(dim=1, keepdim=True)
        change = change * (self._budget_cells / energy.clamp_min(1e-9)).sqrt().clamp(max=1.0)
        field = upsample(change.view(b, 1, GRID, GRID) * (1.0 / 255.0), self.height_px, self.width_px)
        return frames.add_(field)
