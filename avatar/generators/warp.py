"""The default generator: a weight-free landmark-warp animator.

A still portrait is animated by moving a face rig (warp_rig.py) with drive values taken from each
frame's audio window (warp_drive.py): the jaw opens with loudness, the lips spread or round with the
spectral shape, close on nasal murmurs and pauses; the eyes blink at random intervals; the head
nods, tilts and sways a little (livelier while speaking); the shoulders breathe. One batched step
for all streams:

    audio windows (B, T) -> drive values (B, K)                          numpy, per-stream state
    targets = rest + drive @ bases                      (B, N, 2)        control points
    thin-plate spline, target -> rest                   (B, N+3, 2)      one batched solve
    field on a coarse grid around the face              (B, 2, h, w)     faded out around the face
    head motion under a face-and-hair mask + breathing  (B, h', w', 2)   at 1/field_scale, held
                                                                         still at the frame's edges
    displacement upsampled, one grid_sample             (B, 3, H, W)
    mouth interior painted inside the inner lips        (warp_mouth.py): cavity, teeth (the
        portrait's own when it shows them, else painted), tongue; or the seam of pressed lips
    then, for every generator alike (base.py): the disclosure stage, one uint8 copy to the CPU

Every stream owns its state (smoothed drive, gain, blink schedule, idle-motion phases drawn from
its seed); the generator itself holds nothing per session, so one instance serves many.

On the CPU a step is many small tensor ops: torch's intra-op threads help little and, on a busy
machine, spin at their barriers (measured here: 6.6 ms per 128x128 frame with one thread against
280 ms with two under load). A caller that shares the CPU should run it with torch.set_num_threads(1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from avatar.config import VideoConfig, WarpConfig
from avatar.drive.expression import ExpressionDriver, ExpressionState
from avatar.drive.viseme_model import VisemeModel
from avatar.errors import GeneratorError
from avatar.generators.base import FrameGenerator, FrameStage, GeneratorStream
from avatar.generators.warp_drive import LearnedShapes, MouthDriver, MouthDriveState
from avatar.generators.warp_mouth import MouthBatch, mouth_boxes, paint_mouth
from avatar.generators.warp_rig import (
    BASIS_BLINK_L,
    BASIS_BLINK_R,
    BASIS_BROWS,
    BASIS_JAW,
    BASIS_LIP_TEETH,
    BASIS_PRESS,
    BASIS_ROUND,
    BASIS_SMILE,
    BASIS_WIDEN,
    BASIS_WIDTH,
    N_BASES,
    Rig,
    build_rig,
    eval_tps,
    roi_size,
    smoothstep,
    solve_backward_tps,
)
from avatar.portrait import Portrait
from avatar.windows import AudioWindow

# Idle motion: three slow sines per axis (Hz), each stream jitters them and draws its own phases.
_HEAD_FREQS_HZ = np.array([[0.13, 0.29, 0.47], [0.09, 0.21, 0.38], [0.11, 0.24, 0.43]])  # pitch, yaw, roll
_HEAD_MIX = np.array([0.6, 0.3, 0.15])
_HEAD_AMP_DEG = np.array([1.6, 2.0, 1.0])  # pitch, yaw, roll at full liveliness, head_motion = 1
_QUIET_LIVELINESS = 0.45  # share of the motion left in silence
_ACTIVITY_UP_S, _ACTIVITY_DOWN_S = 0.4, 1.5
_BREATH_HZ = (0.2, 0.3)
_BREATH_SCALE = 0.004  # vertical scale of the shoulders at breathing = 1
_MIN_BLINK_GAP_S = 0.8
_SMILE_GAIN = 0.5  # the voice's tone moves the mouth corners at most this share of a full smile
_NOD_DEG = 1.5  # head dip of a full nod on a stressed syllable
_PRESS_SHUT_AT = 0.5  # the lips are as shut as the press basis goes from this press on (an m's hold)
_EDGE_HOLD = 0.1  # share of the frame over which the motion fades out toward its edges


@dataclass
class _Motion:
    """Idle-motion and blink state of one stream, drawn from its seed."""

    rng: np.random.Generator
    head_freqs: np.ndarray  # (3, 3) Hz
    head_phase: np.ndarray  # (3, 3) rad
    breath_hz: float
    breath_phase: float
    activity: float = 0.0
    emphasis: float = 0.0
    next_blink_frame: int = 0
    blink_frames: int = 3

    def draw_blink_gap(self, mean_s: float, fps: int) -> int:
        gap_s = max(_MIN_BLINK_GAP_S, self.rng.gamma(3.0, mean_s / 3.0))
        return max(1, round(gap_s * fps))


@dataclass
class WarpStream(GeneratorStream):
    """Per-session state of the warp animator."""

    image: torch.Tensor  # (3, H, W) float in [0, 1] on the device
    rig: Rig
    head_mask: torch.Tensor  # (h, w) coarse face-and-hair mask, 1 on the head
    body_dy: torch.Tensor  # (h, w) source shift in pixels per unit breathing scale
    pivot: np.ndarray  # (2,) neck pivot of head motion, pixels
    rest_gap: float  # inner-lip gap at rest, pixels
    teeth_rgb: np.ndarray  # (3,) in [0, 1]
    real_teeth: bool  # the portrait shows teeth at rest: reuse them inside the open mouth
    lip_rgb: np.ndarray  # (3,) in [0, 1], the lips' colour
    saturation: float  # 0 (black and white) .. 1 (colour): how colourful the painted interior is
    mouth_centre: np.ndarray  # (2,) pixels
    mouth: MouthDriveState
    expression: ExpressionState
    motion: _Motion
    frame_index: int = 0


@dataclass
class _Batch:
    """Constant per-portrait tensors of the streams of one step, stacked along the batch."""

    streams: tuple[WarpStream, ...]
    rest: torch.Tensor  # (B, N, 2)
    bases: torch.Tensor  # (B, K, N, 2)
    roi_origin: torch.Tensor  # (B, 2)
    fade: torch.Tensor  # (B, G, 1)
    head_mask: torch.Tensor  # (B, h, w, 1)
    body_dy: torch.Tensor  # (B, h, w)
    images: torch.Tensor  # (B, 3, H, W)
    mouth: MouthBatch


class WarpAnimator(FrameGenerator[WarpStream]):
    """Landmark-warp animator; see the module docstring."""

    name = "warp"
    stream_type = WarpStream

    def __init__(
        self,
        warp: WarpConfig,
        video: VideoConfig,
        device: torch.device | str = "cpu",
        *,
        disclosure: FrameStage | None = None,
    ) -> None:
        super().__init__(torch.device(device), video.width_px, video.height_px, video.fps, disclosure)
        self.config = warp
        self.field_scale = warp.field_scale
        self.low_w = -(-self.width_px // self.field_scale)
        self.low_h = -(-self.height_px // self.field_scale)
        self.roi_w, self.roi_h = roi_size(self.width_px, self.height_px, self.field_scale)
        shapes = LearnedShapes(VisemeModel.load()) if warp.mouth_shapes == "visemes" else None
        self.driver = MouthDriver(self.fps, warp.attack_s, warp.release_s, shapes)
        self.expression = ExpressionDriver(self.fps, warp.expression)
        fs = self.field_scale
        # Coarse grid: pixel centres of each field_scale x field_scale cell, in output pixels.
        ys = torch.arange(self.low_h, dtype=torch.float32, device=self.device) * fs + 0.5 * (fs - 1)
        xs = torch.arange(self.low_w, dtype=torch.float32, device=self.device) * fs + 0.5 * (fs - 1)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        self._low_grid = torch.stack([gx, gy], dim=-1)  # (h, w, 2)
        # 0 on the frame's edge, 1 from _EDGE_HOLD of the frame inwards: the motion fades out there.
        to_edge = torch.minimum(
            torch.minimum(gx + 0.5, self.width_px - 0.5 - gx), torch.minimum(gy + 0.5, self.height_px - 0.5 - gy)
        )
        hold = (to_edge / (_EDGE_HOLD * max(self.width_px, self.height_px))).clamp(0.0, 1.0)
        self._edge_hold = (hold * hold * (3.0 - 2.0 * hold))[..., None]  # (h, w, 1)
        ry = torch.arange(self.roi_h, dtype=torch.float32, device=self.device) * fs
        rx = torch.arange(self.roi_w, dtype=torch.float32, device=self.device) * fs
        gy, gx = torch.meshgrid(ry, rx, indexing="ij")
        self._roi_offsets = torch.stack([gx, gy], dim=-1).reshape(-1, 2)  # (G, 2)
        ys = (2.0 * torch.arange(self.height_px, dtype=torch.float32, device=self.device) + 1.0) / self.height_px - 1.0
        xs = (2.0 * torch.arange(self.width_px, dtype=torch.float32, device=self.device) + 1.0) / self.width_px - 1.0
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        self._identity = torch.stack([gx, gy], dim=-1)  # (H, W, 2), normalised, align_corners=False
        self._last_batch: _Batch | None = None

    def _f32(self, values: object) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values, dtype=np.float32), device=self.device)

    # ---- streams ---------------------------------------------------------------------------
    def _new_stream(self, portrait: Portrait, seed: int) -> WarpStream:
        rgb, landmarks = self._fit_portrait(portrait)
        w, h = self.width_px, self.height_px
        rig = build_rig(landmarks, w, h, self.field_scale, self.device)
        g = rig.geometry
        image = torch.from_numpy(np.array(rgb, dtype=np.uint8)).to(self.device).permute(2, 0, 1).float() / 255.0

        # Face-and-hair mask (coarse): a tall ellipse over the face ellipse, shifted up for the hair.
        low = self._low_grid.cpu().numpy().astype(np.float64)
        centre = g.centre - 0.3 * g.axes[1] * g.down
        axes = np.array([1.45 * g.axes[0], 1.35 * g.axes[1]])
        rel = low - centre
        rho = np.sqrt(((rel @ g.right) / axes[0]) ** 2 + ((rel @ g.down) / axes[1]) ** 2)
        head_mask = 1.0 - smoothstep((rho - 0.8) / 0.4)
        # Breathing: a vertical scale of everything below the chin about the bottom edge.
        below_chin = smoothstep((low[..., 1] - (g.chin[1] + 0.1 * g.face_height)) / (0.12 * h))
        body_dy = below_chin * (1.0 - head_mask) * (h - 1 - low[..., 1])

        rest_gap = max(0.0, float((landmarks[66] - landmarks[62]) @ g.down))
        teeth, real_teeth = self._teeth_colour(rgb, landmarks, rest_gap, g.mouth_width)
        lip_rgb, saturation = self._lip_colour(rgb, landmarks)
        rng = np.random.default_rng(seed)
        motion = _Motion(
            rng=rng,
            head_freqs=_HEAD_FREQS_HZ * rng.uniform(0.85, 1.15, size=(3, 3)),
            head_phase=rng.uniform(0.0, 2.0 * math.pi, size=(3, 3)),
            breath_hz=float(rng.uniform(*_BREATH_HZ)),
            breath_phase=float(rng.uniform(0.0, 2.0 * math.pi)),
            blink_frames=max(2, round(self.config.blink_duration_s * self.fps)),
        )
        motion.next_blink_frame = max(
            1, round(rng.uniform(0.3, 1.0) * self.config.blink_mean_interval_s * self.fps)
        )
        return WarpStream(
            image=image,
            rig=rig,
            head_mask=self._f32(head_mask),
            body_dy=self._f32(body_dy),
            pivot=g.chin + 0.35 * g.face_height * g.down,
            rest_gap=rest_gap,
            teeth_rgb=teeth,
            real_teeth=real_teeth,
            lip_rgb=lip_rgb,
            saturation=saturation,
            mouth_centre=landmarks[[48, 54, 51, 57]].mean(axis=0),
            mouth=MouthDriveState(),
            expression=ExpressionState(),
            motion=motion,
        )

    def _fit_portrait(self, portrait: Portrait) -> tuple[np.ndarray, np.ndarray]:
        """The portrait's image and landmarks at the output size (resized when it is not)."""
        rgb = np.asarray(portrait.rgb)
        landmarks = np.asarray(portrait.landmarks, dtype=np.float64)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise GeneratorError("portrait.rgb must be an (H, W, 3) uint8 array")
        if landmarks.shape != (68, 2):
            raise GeneratorError("portrait.landmarks must have shape (68, 2)")
        h, w = rgb.shape[:2]
        if (w, h) != (self.width_px, self.height_px):
            from PIL import Image

            rgb = np.asarray(Image.fromarray(rgb).resize((self.width_px, self.height_px), Image.Resampling.BICUBIC))
            landmarks = (landmarks + 0.5) * np.array([self.width_px / w, self.height_px / h]) - 0.5
        return rgb, landmarks

    @staticmethod
    def _teeth_colour(
        rgb: np.ndarray, lm: np.ndarray, rest_gap: float, mouth_width: float
    ) -> tuple[np.ndarray, bool]:
        """Teeth colour and whether the portrait shows teeth at rest (bright pixels between the lips)."""
        default = np.array([0.90, 0.87, 0.81]), False
        if rest_gap < 0.06 * mouth_width:
            return default
        x0, x1 = int(lm[61, 0]), int(lm[63, 0]) + 1
        y0, y1 = int(min(lm[61, 1], lm[62, 1], lm[63, 1])), int(max(lm[65, 1], lm[66, 1], lm[67, 1])) + 1
        patch = rgb[max(y0, 0) : max(y1, 1), max(x0, 0) : max(x1, 1)].reshape(-1, 3).astype(np.float64) / 255.0
        if len(patch) < 4:
            return default
        lum = patch.mean(axis=1)
        bright = patch[lum >= np.quantile(lum, 0.6)]
        colour = np.median(bright, axis=0)
        if colour.mean() < 0.45:  # a dark gap, no teeth to see
            return default
        return 0.92 * colour, True

    @staticmethod
    def _lip_colour(rgb: np.ndarray, lm: np.ndarray) -> tuple[np.ndarray, float]:
        """The lips' colour and how colourful the portrait is there: 0 for black and white (or a
        statue), 1 for a colour photo's red lips; a sepia print lies between."""
        x0, y0 = np.floor(lm[48:60].min(axis=0)).astype(int)
        x1, y1 = np.ceil(lm[48:60].max(axis=0)).astype(int) + 1
        h, w = rgb.shape[:2]
        patch = rgb[max(y0, 0) : min(max(y1, 1), h), max(x0, 0) : min(max(x1, 1), w)]
        pixels = patch.reshape(-1, 3).astype(np.float64) / 255.0
        if len(pixels) < 4:
            return np.array([0.6, 0.4, 0.38]), 1.0
        lip = np.median(pixels, axis=0)
        chroma = float(np.median(pixels.max(axis=1) - pixels.min(axis=1)) / max(float(lip.mean()), 0.05))
        return lip, float(np.clip(chroma / 0.3, 0.0, 1.0))

    def _rest_frame(self, stream: WarpStream) -> torch.Tensor:
        return stream.image

    def release_stream(self, stream: GeneratorStream) -> None:
        # The stacked tensors of the last batch (see _batch) hold the streams that stepped in it:
        # without this, the last sessions' portraits and rigs would outlive them until a new batch.
        cached = self._last_batch
        if cached is not None and any(s is stream for s in cached.streams):
            self._last_batch = None

    # ---- motion ----------------------------------------------------------------------------
    def _blink(self, m: _Motion, frame: int) -> float:
        """Blink closure 0..1 at `frame`; schedules the next blink when one ends."""
        if frame >= m.next_blink_frame + m.blink_frames:
            m.next_blink_frame = frame + m.draw_blink_gap(self.config.blink_mean_interval_s, self.fps)
        i = frame - m.next_blink_frame
        if i < 0:
            return 0.0
        x = (i + 0.5) / m.blink_frames
        v = min(1.0, x / 0.35, (1.0 - x) / 0.5)
        return float(max(0.0, v))

    def _head(self, m: _Motion, speaking: bool, jaw: float, nod: float) -> np.ndarray:
        """Head pitch, yaw, roll in degrees; advances the noise phases by one frame."""
        dt = 1.0 / self.fps
        target = 1.0 if (speaking or jaw > 0.05) else 0.0
        tau = _ACTIVITY_UP_S if target > m.activity else _ACTIVITY_DOWN_S
        m.activity += (target - m.activity) * (1.0 - math.exp(-dt / tau))
        m.emphasis += (jaw - m.emphasis) * (1.0 - math.exp(-dt / 0.25))
        m.head_phase = (m.head_phase + 2.0 * math.pi * m.head_freqs * dt * (1.0 + 0.6 * m.activity)) % (
            2.0 * math.pi
        )
        noise = (np.sin(m.head_phase) * _HEAD_MIX).sum(axis=1) / _HEAD_MIX.sum()  # (3,) in [-1, 1]
        liveliness = _QUIET_LIVELINESS + (1.0 - _QUIET_LIVELINESS) * m.activity
        angles = self.config.head_motion * _HEAD_AMP_DEG * liveliness * noise
        angles[0] += self.config.head_motion * 0.8 * m.emphasis  # a small nod on loud syllables
        angles[0] += self.config.head_motion * _NOD_DEG * nod  # and a clearer one on stressed ones
        return angles

    # ---- one batched step ------------------------------------------------------------------
    def _batch(self, ss: list[WarpStream]) -> _Batch:
        """The streams' constant per-portrait tensors stacked; reused while the same streams step."""
        cached = self._last_batch
        if cached is not None and len(cached.streams) == len(ss) and all(
            a is b for a, b in zip(cached.streams, ss, strict=True)
        ):
            return cached
        mws = np.array([s.rig.geometry.mouth_width for s in ss])
        origins, box = mouth_boxes(np.stack([s.mouth_centre for s in ss]), mws, self.width_px, self.height_px)
        images = torch.stack([s.image for s in ss])
        batch = _Batch(
            streams=tuple(ss),
            rest=torch.stack([s.rig.rest for s in ss]),
            bases=torch.stack([s.rig.bases for s in ss]),
            roi_origin=torch.stack([s.rig.roi_origin for s in ss]),
            fade=torch.stack([s.rig.fade for s in ss]).reshape(len(ss), -1, 1),
            head_mask=torch.stack([s.head_mask for s in ss])[..., None],
            body_dy=torch.stack([s.body_dy for s in ss]),
            images=images,
            mouth=MouthBatch(
                images=images,
                rest_inner=torch.stack([s.rig.rest[60:68] for s in ss]),
                rest_gap=self._f32([s.rest_gap for s in ss]),
                mouth_width=self._f32(mws),
                down=self._f32(np.stack([s.rig.geometry.down for s in ss])),
                yaw_rad=self._f32([s.rig.geometry.yaw_rad for s in ss]),
                teeth_rgb=self._f32(np.stack([s.teeth_rgb for s in ss])),
                real_teeth=self._f32([s.real_teeth for s in ss]),
                lip_rgb=self._f32(np.stack([s.lip_rgb for s in ss])),
                saturation=self._f32([s.saturation for s in ss]),
                box_origins=origins,
                box_size=box,
            ),
        )
        self._last_batch = batch
        return batch

    def backward_map(
        self,
        stream: WarpStream,
        drive: dict[str, float],
        head_pose_deg: tuple[float, float, float] = (0.0, 0.0, 0.0),
        breathing: float = 0.0,
    ) -> np.ndarray:
        """Where each output pixel reads the portrait for the given drive values ("jaw", "width",
        "rounding", "press", "lip_teeth", "blink", "brows", "widen", "smile"; 0 when absent) and head
        pose (pitch, yaw, roll): (H, W, 2) float, source (x, y) in pixels. For checks of the warp
        (folds tear the picture); the stream's own state does not move."""
        drives = np.zeros((1, N_BASES))
        named = {"jaw": BASIS_JAW, "width": BASIS_WIDTH, "rounding": BASIS_ROUND, "press": BASIS_PRESS,
                 "lip_teeth": BASIS_LIP_TEETH, "brows": BASIS_BROWS, "widen": BASIS_WIDEN,
                 "smile": BASIS_SMILE}
        for key, basis in named.items():
            drives[0, basis] = float(drive.get(key, 0.0))
        drives[0, BASIS_BLINK_L] = drives[0, BASIS_BLINK_R] = float(drive.get("blink", 0.0))
        batch = self._batch([stream])
        with torch.no_grad():
            grid, _, _ = self._sampling_grid(batch, self._f32(drives), np.array([head_pose_deg]), np.array([breathing]))
        normalised = grid[0].double().cpu().numpy()
        size = np.array([self.width_px, self.height_px], dtype=np.float64)
        return ((normalised + 1.0) * size - 1.0) / 2.0  # align_corners=False

    def _sampling_grid(
        self, batch: _Batch, drive_t: torch.Tensor, poses: np.ndarray, breath: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The backward map of one step: (grid (B, H, W, 2) for grid_sample, normalised; the forward
        head transforms (B, 2, 3), pixels; the control-point targets (B, N, 2), pixels)."""
        b = len(batch.streams)
        fs, w_px, h_px = self.field_scale, self.width_px, self.height_px
        # 2. Control-point targets and the backward thin-plate spline.
        rest, bases = batch.rest, batch.bases  # (B, N, 2), (B, K, N, 2)
        targets = rest + torch.einsum("bk,bknc->bnc", drive_t, bases)
        weights = solve_backward_tps(targets, rest, float(w_px))

        # 3. Field on each stream's coarse region of interest, faded out around the face.
        roi_origin = batch.roi_origin  # (B, 2)
        roi_pts = roi_origin[:, None, :] + self._roi_offsets[None]  # (B, G, 2)
        disp = eval_tps(weights, targets, roi_pts, float(w_px))  # (B, G, 2)
        fade = batch.fade  # (B, G, 1)
        field_roi = (disp * fade).reshape(b, self.roi_h, self.roi_w, 2).permute(0, 3, 1, 2)

        # 4. Head motion under the face-and-hair mask, breathing below it (coarse grid).
        affine = np.zeros((b, 2, 3))  # forward head transform, pixels: x' = A x + c
        for i, s in enumerate(batch.streams):
            g = s.rig.geometry
            pitch, yaw, roll = np.radians(poses[i])
            rot = np.array([[math.cos(roll), -math.sin(roll)], [math.sin(roll), math.cos(roll)]])
            # Nod: shift along the face's down axis and squash slightly; sway: shift along its right axis.
            squash = np.eye(2) - 0.12 * math.sin(pitch) * np.outer(g.down, g.down)
            a = rot @ squash
            shift = 0.6 * math.sin(pitch) * g.face_height * g.down + 0.45 * math.sin(yaw) * g.face_width * g.right
            affine[i, :, :2] = a
            affine[i, :, 2] = s.pivot + shift - a @ s.pivot
        fwd = self._f32(affine)
        inv_a = torch.linalg.inv(fwd[:, :, :2])
        low = self._low_grid[None].expand(b, -1, -1, -1)  # (B, h, w, 2)
        head_src = torch.einsum("bij,bhwj->bhwi", inv_a, low - fwd[:, None, None, :, 2])
        mask = batch.head_mask  # (B, h, w, 1)
        src = low + mask * (head_src - low)
        body = batch.body_dy  # (B, h, w)
        src = src + torch.stack([torch.zeros_like(body), body * self._f32(breath)[:, None, None]], -1)

        # 5. Local field read at the head-moved positions, then upsampled as a displacement.
        roi_norm = torch.stack(
            [
                2.0 * (src[..., 0] - roi_origin[:, None, None, 0]) / (fs * (self.roi_w - 1)) - 1.0,
                2.0 * (src[..., 1] - roi_origin[:, None, None, 1]) / (fs * (self.roi_h - 1)) - 1.0,
            ],
            dim=-1,
        )
        local = F.grid_sample(field_roi, roi_norm, mode="bilinear", padding_mode="zeros", align_corners=True)
        src = src + local.permute(0, 2, 3, 1)
        # (B, 2, h, w) in grid_sample's normalised units (the upsampling is linear: scale first); held
        # at the frame's edges, so a head cut by the frame never reads past it (repeated edge pixels).
        disp_low = ((src - low) * self._edge_hold * self._f32([2.0 / w_px, 2.0 / h_px])).permute(0, 3, 1, 2)
        disp_full = F.interpolate(disp_low, size=(h_px, w_px), mode="bilinear", align_corners=False)
        grid = disp_full.permute(0, 2, 3, 1) + self._identity
        return grid, fwd, targets

    def _generate(
        self, streams: Sequence[WarpStream], windows: Sequence[AudioWindow]
    ) -> tuple[torch.Tensor, list[dict[str, float]]]:
        ss = list(streams)
        b = len(ss)

        # 1. Drive values (numpy; causal per-stream state).
        past = windows[0].past_samples
        samples = np.stack([np.asarray(wnd.samples, dtype=np.float32) for wnd in windows])
        if any(wnd.past_samples != past for wnd in windows):
            raise GeneratorError("all audio windows of one step must have the same layout")
        speaking = np.array([bool(wnd.speaking) for wnd in windows])
        mouth = self.driver.step([s.mouth for s in ss], samples, past, speaking)
        expression = self.expression.step(
            [s.expression for s in ss], samples, past, speaking,
            np.array([m.loudness_db for m in mouth]), np.array([m.level_db for m in mouth]),
        )  # fmt: skip
        drives = np.zeros((b, N_BASES))
        poses = np.zeros((b, 3))
        breath = np.zeros(b)
        for i, s in enumerate(ss):
            k = s.frame_index
            blink = self._blink(s.motion, k)
            poses[i] = self._head(s.motion, bool(speaking[i]), mouth[i].jaw, expression[i].nod)
            t = k / self.fps
            breath[i] = self.config.breathing * _BREATH_SCALE * math.sin(
                2.0 * math.pi * s.motion.breath_hz * t + s.motion.breath_phase
            )
            # Pressed lips win over the jaw (the release of an m or b opens it again).
            press = min(1.0, mouth[i].press / _PRESS_SHUT_AT)
            drives[i, BASIS_JAW] = mouth[i].jaw * (1.0 - press) * self.config.mouth_open_max
            drives[i, BASIS_WIDTH] = mouth[i].width
            drives[i, BASIS_ROUND] = mouth[i].rounding
            drives[i, BASIS_PRESS] = press
            drives[i, BASIS_LIP_TEETH] = mouth[i].lip_teeth * (1.0 - press)
            drives[i, BASIS_BLINK_L] = drives[i, BASIS_BLINK_R] = blink
            drives[i, BASIS_BROWS] = expression[i].brows
            drives[i, BASIS_WIDEN] = expression[i].widen * (1.0 - blink)
            drives[i, BASIS_SMILE] = _SMILE_GAIN * expression[i].smile

        # 2.-5. Where each output pixel reads the portrait.
        batch = self._batch(ss)
        drive_t = self._f32(drives)
        grid, fwd, targets = self._sampling_grid(batch, drive_t, poses, breath)
        images = batch.images
        frames = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)

        # 6. The inside of the mouth, at the inner lips' target positions moved with the head.
        inner = targets[:, 60:68]
        inner = torch.einsum("bij,bnj->bni", fwd[:, :, :2], inner) + fwd[:, None, :, 2]
        frames = paint_mouth(frames, inner, drive_t[:, BASIS_PRESS], batch.mouth)

        out = []
        for i, s in enumerate(ss):
            drive = {
                "jaw": float(drives[i, BASIS_JAW]),
                "width": float(drives[i, BASIS_WIDTH]),
                "rounding": float(drives[i, BASIS_ROUND]),
                "press": float(drives[i, BASIS_PRESS]),
                "lip_teeth": float(drives[i, BASIS_LIP_TEETH]),
                "blink": float(drives[i, BASIS_BLINK_L]),
                "brows": float(drives[i, BASIS_BROWS]),
                "widen": float(drives[i, BASIS_WIDEN]),
                "smile": float(drives[i, BASIS_SMILE]),
                "nod": expression[i].nod,
                "f0_hz": expression[i].f0_hz,
                "head_pitch": float(poses[i, 0]),
                "head_yaw": float(poses[i, 1]),
                "head_roll": float(poses[i, 2]),
                "breathing": float(breath[i]),
                "loudness_db": mouth[i].loudness_db,
                "gain_db": -mouth[i].level_db,
                "closure": mouth[i].closure,
            }
            s.frame_index += 1
            out.append(drive)
        return frames, out
