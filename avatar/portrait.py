"""Portraits: load and validate an image, find the face and its 68 landmarks, crop and align it.

An image (a file path or the bytes of an upload) becomes a `Portrait`: an RGB picture of exactly the
output size, in which the face has a fixed size and place (eyes level, eye line at
`portrait.eye_line_fraction` of the height, face `portrait.face_width_fraction` of the width, head
centred), with its 68 landmarks in output pixels. Only PNG, JPEG and WebP are accepted, judged by the
content, never by the name; files over `portrait.max_bytes` and images over `portrait.max_pixels` are
refused before any pixel is decoded.

Face and landmarks are found offline with dlib: its HOG frontal-face detector, then the 68-point shape
predictor shipped by the package `face-recognition-models`. Both are loaded once per process. The
face found must then pass `avatar.face_check` (dlib's CNN human-face detector, run on a small crop
around the landmarks): a dog's or cat's face, which the HOG detector can take for a face, is refused
with "no human face found in this image". Landmarks given by the user skip that check.

Licence of the landmark model: `shape_predictor_68_face_landmarks.dat` was trained on the iBUG 300-W
data set, whose licence excludes commercial use. For commercial use, do not rely on it: give the 68
landmarks yourself (from any tool you may use) either as the `landmarks` argument of `load_portrait`
or in a JSON file beside the image, named `<image stem>.landmarks.json` or `<image name>.json`, holding
`{"landmarks": [[x, y], ... 68 points]}` (a bare list of 68 pairs is accepted too) in pixels of the
image as it is displayed (after its EXIF orientation), in the iBUG 300-W order: jaw 0-16, brows 17-26,
nose 27-35, eyes 36-47, outer lips 48-59, inner lips 60-67. dlib is then not used at all.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import io
import json
import logging
import math
import re
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from avatar.config import AppConfig, PortraitConfig, VideoConfig
from avatar.errors import PortraitError

log = logging.getLogger(__name__)

N_LANDMARKS = 68
_OPENERS = ("PNG", "JPEG", "WEBP")  # Pillow plugins tried; no other parser ever sees the bytes
# What the openers may report; MPO is the JPEG opener's name for the multi-picture JPEGs of phones.
_ACCEPTED_FORMATS = ("PNG", "JPEG", "MPO", "WEBP")
_DETECT_MAX_SIDE = 800  # faces are searched on a copy at most this large (speed); landmarks at full size
_MAX_LANDMARKS_JSON_BYTES = 1_000_000
_RELATIVE_SCORE = 0.5  # faces scoring under this share of the best detection are ignored
_MAX_FACES_CHECKED = 3  # the largest faces, in turn, that the human-face check may refuse (~0.4 s each)
_NO_FACE = (
    "no face found in the image: use a photo or painting of one person looking roughly at the camera, "
    "with the face clearly visible"
)
_NO_FACE_FILE_HINT = ", or give its 68 landmarks in a JSON file beside the image (<name>.landmarks.json)"


@dataclass(frozen=True)
class Portrait:
    name: str
    rgb: np.ndarray  # (height_px, width_px, 3) uint8, cropped and scaled to the output size
    landmarks: np.ndarray  # (68, 2) float32, (x, y) in pixels of `rgb`, iBUG 300-W order
    face_box: tuple[int, int, int, int]  # (x, y, w, h) of the face in pixels of `rgb`


# --------------------------------------------------------------------------------------------------
# Decoding


def _megapixels(pixels: float) -> str:
    return f"{pixels / 1e6:.3g} megapixels"


def _read_source(source: Path | bytes, max_bytes: int) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        path = Path(source)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise PortraitError(f"no such image file: {path}") from None
        except OSError as exc:
            raise PortraitError(f"cannot read image file {path}: {exc.strerror or exc}") from None
        if not path.is_file():
            raise PortraitError(f"not a file: {path}")
        if size > max_bytes:
            raise PortraitError(f"file is {size / 1e6:.1f} MB, the limit is {max_bytes / 1e6:g} MB")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise PortraitError(f"cannot read image file {path}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise PortraitError(f"file is {len(data) / 1e6:.1f} MB, the limit is {max_bytes / 1e6:g} MB")
    if not data:
        raise PortraitError("the image is empty (0 bytes)")
    return data


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Bytes of a PNG, JPEG or WebP image -> (h, w, 3) uint8 RGB, upright (EXIF), alpha over white.

    The size is checked from the header before any pixel is decoded.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(_OPENERS))
    except Image.DecompressionBombError as exc:  # far beyond Pillow's own limit (~179 MP)
        match = re.search(r"\((\d+) pixels\)", str(exc))
        size = _megapixels(int(match.group(1))) if match else "too large"
        raise PortraitError(f"image is {size}, the limit is {_megapixels(max_pixels)}") from None
    except Exception:  # UnidentifiedImageError, and any parser error on a damaged header
        raise PortraitError("not a PNG, JPEG or WebP image") from None
    with image:
        if image.format not in _ACCEPTED_FORMATS:
            raise PortraitError("not a PNG, JPEG or WebP image")
        width, height = image.size
        if width <= 0 or height <= 0:
            raise PortraitError("the image has no pixels")
        if width * height > max_pixels:
            raise PortraitError(f"image is {width}x{height} pixels, the limit is {_megapixels(max_pixels)}")
        try:
            image.load()
            upright = ImageOps.exif_transpose(image)
            rgb = _to_rgb(upright)
        except PortraitError:
            raise
        except Exception:  # truncated data, corrupt chunks, decoder errors
            raise PortraitError("the image file is damaged or truncated and cannot be decoded") from None
    return rgb


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):  # 16-bit or float greyscale
        grey = np.asarray(image, dtype=np.float64)
        top = grey.max() if grey.size else 0.0
        grey = grey / (257.0 if top > 255 else 1.0)
        grey8 = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey8[:, :, None], 3, axis=2))
    has_alpha = (
        image.mode in ("RGBA", "LA", "PA", "RGBa", "La")
        or (image.mode == "P" and "transparency" in image.info)
        or (image.mode in ("RGB", "L") and "transparency" in image.info)
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb)


# --------------------------------------------------------------------------------------------------
# Face detection and landmarks (dlib), loaded once per process


_dlib_lock = threading.Lock()


def _model_path(filename: str) -> Path:
    # Do not import face_recognition_models: its pkg_resources import fails on new setuptools.
    spec = importlib.util.find_spec("face_recognition_models")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / "models" / filename
        if path.is_file():
            return path
    raise PortraitError(
        f"the face landmark model {filename} is missing: install the package face-recognition-models, "
        "or give the 68 landmarks in a JSON file beside the image"
    )


@functools.lru_cache(maxsize=1)
def _detector() -> Any:
    import dlib

    return dlib.get_frontal_face_detector()


@functools.lru_cache(maxsize=1)
def _predictor() -> Any:
    import dlib

    started = time.perf_counter()
    predictor = dlib.shape_predictor(str(_model_path("shape_predictor_68_face_landmarks.dat")))
    log.debug("loaded the 68-point shape predictor in %.2f s", time.perf_counter() - started)
    return predictor


def detect_faces(rgb: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
    """Every face the HOG detector finds: [((left, top, right, bottom) in pixels of `rgb`, score)].

    Big images are searched on a downscaled copy; the image is upsampled (0, 1, then 2 times for small
    images) only while nothing is found, which keeps both the time and the false detections low.
    """
    import dlib  # noqa: F401  (fail here, clearly, when dlib is missing)

    height, width = rgb.shape[:2]
    factor = min(1.0, _DETECT_MAX_SIDE / max(height, width))
    work = rgb
    if factor < 1.0:
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        work = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))
    work = np.ascontiguousarray(work)
    fx, fy = work.shape[1] / width, work.shape[0] / height
    levels = (0, 1, 2) if max(work.shape[:2]) <= 400 else (0, 1)
    detector = _detector()
    for upsample in levels:
        with _dlib_lock:
            rects, scores, _ = detector.run(work, upsample, 0.0)
        if len(rects):
            return [
                ((r.left() / fx, r.top() / fy, (r.right() + 1) / fx, (r.bottom() + 1) / fy), float(s))
                for r, s in zip(rects, scores, strict=True)
            ]
    return []


def detect_landmarks(rgb: np.ndarray) -> np.ndarray:
    """The 68 landmarks (float64 (68, 2), x y in pixels of `rgb`) of the largest face.

    PortraitError when there is no face, or when the face found is not a human one (`face_check`).
    """
    faces = detect_faces(rgb)
    if not faces:
        raise PortraitError(_NO_FACE)
    # The largest face wins, among the confident ones: the detector also returns weak false faces of
    # about the same size as a real one (seen on a shirt collar), which must not win on size alone.
    best_score = max(score for _, score in faces)
    confident = [face for face in faces if face[1] >= _RELATIVE_SCORE * best_score]
    ranked = sorted(confident, key=lambda face: (_area(face[0]), face[1]), reverse=True)
    # A false face (a dog beside its owner) may be the largest: the next ones get their turn.
    from avatar.face_check import NOT_HUMAN, is_human_face

    for box, _ in ranked[:_MAX_FACES_CHECKED]:
        points = fit_landmarks(rgb, box)
        if is_human_face(rgb, points):
            return points
    raise PortraitError(NOT_HUMAN)


def fit_landmarks(rgb: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """The shape predictor's 68 landmarks (float64 (68, 2)) for the face in `box` (left, top, right,
    bottom in pixels of `rgb`). It fits 68 points to whatever the box holds: nothing is checked."""
    left, top, right, bottom = box
    # The predictor only looks near the face: run it on a margin around the box (cheap on huge images).
    height, width = rgb.shape[:2]
    margin = 0.5 * max(right - left, bottom - top)
    x0, y0 = max(0, int(left - margin)), max(0, int(top - margin))
    x1, y1 = min(width, int(math.ceil(right + margin))), min(height, int(math.ceil(bottom + margin)))
    patch = np.ascontiguousarray(rgb[y0:y1, x0:x1])
    import dlib

    rect = dlib.rectangle(round(left - x0), round(top - y0), round(right - x0) - 1, round(bottom - y0) - 1)
    predictor = _predictor()
    with _dlib_lock:
        shape = predictor(patch, rect)
    points = np.array([(p.x + x0, p.y + y0) for p in shape.parts()], dtype=np.float64)
    if points.shape != (N_LANDMARKS, 2):
        raise PortraitError(_NO_FACE)
    return points


def _area(box: tuple[float, float, float, float]) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


# --------------------------------------------------------------------------------------------------
# Landmarks given by the user


def parse_landmarks(value: Any, what: str = "landmarks") -> np.ndarray:
    """A (68, 2) array, a list of 68 [x, y] pairs, or {"landmarks": [...]} -> float64 (68, 2)."""
    if isinstance(value, dict):
        if "landmarks" not in value:
            raise PortraitError(f'{what}: expected an object with a "landmarks" list of 68 [x, y] points')
        value = value["landmarks"]
    try:
        points = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise PortraitError(f"{what}: expected 68 [x, y] points (numbers)") from None
    if points.shape != (N_LANDMARKS, 2):
        raise PortraitError(f"{what}: expected 68 [x, y] points, got an array of shape {points.shape}")
    if not np.all(np.isfinite(points)):
        raise PortraitError(f"{what}: every coordinate must be a finite number")
    return points


def read_landmarks_json(path: Path) -> np.ndarray:
    try:
        size = path.stat().st_size
        if size > _MAX_LANDMARKS_JSON_BYTES:
            raise PortraitError(f"landmarks file {path.name} is too large ({size} bytes)")
        value = json.loads(path.read_text(encoding="utf-8"))
    except PortraitError:
        raise
    except FileNotFoundError:
        raise PortraitError(f"no such landmarks file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PortraitError(f"cannot read landmarks file {path.name}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise PortraitError(f"landmarks file {path.name} is not valid JSON: {exc}") from None
    return parse_landmarks(value, f"landmarks file {path.name}")


def landmarks_sidecar(path: Path) -> Path | None:
    """The landmarks file beside an image or video (<stem>.landmarks.json or <name>.json), if any."""
    for candidate in (path.with_name(path.stem + ".landmarks.json"), path.with_name(path.name + ".json")):
        if candidate.is_file():
            return candidate
    return None


def _check_inside(points: np.ndarray, width: int, height: int, what: str) -> None:
    inside = (points[:, 0] >= 0) & (points[:, 0] <= width) & (points[:, 1] >= 0) & (points[:, 1] <= height)
    if not np.all(inside):
        bad = int(np.argmin(inside))
        x, y = points[bad]
        raise PortraitError(f"{what}: point {bad} ({x:g}, {y:g}) lies outside the {width}x{height} image")


# --------------------------------------------------------------------------------------------------
# Alignment


def alignment_matrix(
    landmarks: np.ndarray,
    width: int,
    height: int,
    face_width_fraction: float,
    eye_line_fraction: float,
    source_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """The 2x3 similarity (scale, rotation, shift) from source to output pixels: out = A @ [x, y, 1].

    Eyes level; the landmark extent `face_width_fraction` of the width and centred; the eye line at
    `eye_line_fraction` of the height. Given the source's (width, height), the framing is fitted
    (`fit_framing`) so the output stays inside the photo where it can.
    """
    left_eye = landmarks[36:42].mean(axis=0)
    right_eye = landmarks[42:48].mean(axis=0)
    dx, dy = right_eye - left_eye
    angle = math.atan2(dy, dx)
    cos, sin = math.cos(-angle), math.sin(-angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    rotated = landmarks @ rotation.T
    extent = float(rotated[:, 0].max() - rotated[:, 0].min())
    if extent < 8.0 or math.hypot(dx, dy) < 2.0:
        raise PortraitError("the face is too small to use (under 8 pixels wide)")
    eyes_y = float(((left_eye + right_eye) / 2.0) @ rotation[1])
    centre_x = float(rotated[:, 0].max() + rotated[:, 0].min()) / 2.0
    fraction, x_fraction, eye_fraction = face_width_fraction, 0.5, eye_line_fraction
    if source_size is not None:
        fraction, x_fraction, eye_fraction = fit_framing(
            rotation, extent, centre_x, eyes_y, (width, height), source_size, face_width_fraction, eye_line_fraction
        )
    scale = fraction * width / extent
    shift = np.array([x_fraction * width - scale * centre_x, eye_fraction * height - scale * eyes_y])
    return np.hstack([scale * rotation, shift[:, None]])


# How far the framing may move from the configured one to keep the output inside the photo: the face
# up to this share of the width (room is left for the head's motion), its centre and eye line this
# far from where they are configured; the margin of the photo kept beyond the frame (the
# head-motion warp reads a little past the frame's edges); and the share of the frame that may lie
# past the photo (filled) before the configured framing is moved.
_MAX_FACE_FRACTION = 0.62
_MAX_CENTRE_SHIFT = 0.1
_EYE_LINE_RANGE = (-0.08, 0.1)
_EDGE_MARGIN = 0.02
_SMALL_FILL = 0.04


def fit_framing(
    rotation: np.ndarray,
    extent: float,
    centre_x: float,
    eyes_y: float,
    out_size: tuple[int, int],
    source_size: tuple[int, int],
    face_width_fraction: float,
    eye_line_fraction: float,
) -> tuple[float, float, float]:
    """(face width fraction, face centre x fraction, eye line fraction) closest to the configured
    framing whose output (and a small margin) lies inside the photo; when none does, the one that
    leaves the least of the output outside it (that part is filled: see `warp_image`). The
    configured framing stays when little of the frame lies past the photo: a small corner is filled
    softly, and a framing moved for it would move every portrait's face."""
    width, height = out_size
    src_w, src_h = source_size

    def outside(f: np.ndarray, c: np.ndarray, e: np.ndarray, margin: float, points: int) -> np.ndarray:
        """The share of a grid over the frame (and `margin` around it) that falls past the photo."""
        scale = f * width / extent
        shift_x, shift_y = c * width - scale * centre_x, e * height - scale * eyes_y
        cells = (np.arange(points) + 0.5) / points  # the centres of a points x points grid of cells
        gx, gy = np.meshgrid(cells * (width + 2 * margin) - margin, cells * (height + 2 * margin) - margin)
        rx = (gx.reshape(1, -1) - shift_x[:, None]) / scale[:, None]  # source = R^T (out - t) / s
        ry = (gy.reshape(1, -1) - shift_y[:, None]) / scale[:, None]
        sx = rotation[0, 0] * rx + rotation[1, 0] * ry
        sy = rotation[0, 1] * rx + rotation[1, 1] * ry
        return ((sx < 0) | (sx > src_w - 1) | (sy < 0) | (sy > src_h - 1)).mean(axis=1)

    one = np.ones(1)
    if outside(one * face_width_fraction, one * 0.5, one * eye_line_fraction, 0.0, 33)[0] <= _SMALL_FILL:
        return face_width_fraction, 0.5, eye_line_fraction
    fractions = np.linspace(face_width_fraction, max(face_width_fraction, _MAX_FACE_FRACTION), 14)
    centres = 0.5 + np.linspace(-_MAX_CENTRE_SHIFT, _MAX_CENTRE_SHIFT, 11)
    eyes = eye_line_fraction + np.linspace(*_EYE_LINE_RANGE, 10)
    f, c, e = (a.reshape(-1) for a in np.meshgrid(fractions, centres, eyes, indexing="ij"))
    share = outside(f, c, e, _EDGE_MARGIN * max(width, height), 17)
    cost = 3.0 * (f - face_width_fraction) / face_width_fraction + 4.0 * np.abs(c - 0.5)
    cost = cost + 4.0 * np.abs(e - eye_line_fraction)
    best = int(np.argmin(np.where(share == 0, cost, np.inf))) if np.any(share == 0) else int(
        np.lexsort((cost, np.round(share, 3)))[0]
    )
    return float(f[best]), float(c[best]), float(e[best])


def warp_image(rgb: np.ndarray, matrix: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resample `rgb` through the 2x3 source-to-output similarity `matrix` into (height, width, 3) uint8.

    Cubic spline interpolation; outside the source, its edge pixels are repeated. When shrinking, the
    source is first reduced with a Lanczos filter (no aliasing) so the spline works near scale 1.
    """
    from scipy import ndimage

    linear, shift = matrix[:, :2], matrix[:, 2]
    inverse = np.linalg.inv(linear)
    # The region of the source that the output sees, plus a margin for the spline; crop to it.
    corners = np.array([[0, 0], [width, 0], [0, height], [width, height]], dtype=np.float64)
    seen = (corners - shift) @ inverse.T
    src_h, src_w = rgb.shape[:2]
    pad = 4.0 + 2.0 * float(np.abs(inverse).sum())
    x0 = int(np.clip(math.floor(seen[:, 0].min() - pad), 0, src_w - 1))
    y0 = int(np.clip(math.floor(seen[:, 1].min() - pad), 0, src_h - 1))
    x1 = int(np.clip(math.ceil(seen[:, 0].max() + pad), x0 + 1, src_w))
    y1 = int(np.clip(math.ceil(seen[:, 1].max() + pad), y0 + 1, src_h))
    region = rgb[y0:y1, x0:x1]
    # out = L @ (p_region + (x0, y0)) + t
    shift = shift + linear @ np.array([x0, y0], dtype=np.float64)
    scale = math.sqrt(abs(np.linalg.det(linear)))
    if scale < 0.9:
        new_w = max(1, round(region.shape[1] * scale))
        new_h = max(1, round(region.shape[0] * scale))
        sx, sy = new_w / region.shape[1], new_h / region.shape[0]
        region = np.asarray(
            Image.fromarray(np.ascontiguousarray(region)).resize((new_w, new_h), Image.Resampling.LANCZOS)
        )
        # A pixel centre c in the old region is at (c + 0.5) * s - 0.5 in the new one.
        to_new = np.array([[sx, 0.0], [0.0, sy]])
        offset_new = np.array([0.5 * sx - 0.5, 0.5 * sy - 0.5])
        # p_old = inv(to_new) @ (p_new - offset_new)
        inv_to_new = np.linalg.inv(to_new)
        shift = shift - linear @ inv_to_new @ offset_new
        linear = linear @ inv_to_new
    inverse = np.linalg.inv(linear)
    # scipy works in (row, col) = (y, x): source_yx = M @ out_yx + offset.
    swap = np.array([[0.0, 1.0], [1.0, 0.0]])
    matrix_yx = swap @ inverse @ swap
    offset_yx = swap @ (-inverse @ shift)
    region_f = np.asarray(region, dtype=np.float32)
    planes = np.stack(
        [
            ndimage.affine_transform(
                region_f[:, :, channel],
                matrix_yx,
                offset=offset_yx,
                output_shape=(height, width),
                order=3,
                mode="nearest",
                prefilter=True,
            )
            for channel in range(3)
        ],
        axis=-1,
    )
    # Beyond the photo, scipy repeats the edge pixels, which draws streaks. There the frame gets a
    # soft continuation instead: the photo's own pixels averaged isotropically (a normalised
    # Gaussian of what lies inside, wider where the photo is further away), blended in over a few
    # pixels past the edge, so it reads as out-of-focus background with no direction to it.
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    src_y = matrix_yx[0, 0] * rows + matrix_yx[0, 1] * cols + offset_yx[0]
    src_x = matrix_yx[1, 0] * rows + matrix_yx[1, 1] * cols + offset_yx[1]
    last_y, last_x = region_f.shape[0] - 1, region_f.shape[1] - 1
    outside = np.maximum.reduce([-src_y, src_y - last_y, -src_x, src_x - last_x, np.zeros_like(src_y)])
    outside_px = outside / math.sqrt(abs(np.linalg.det(inverse)))  # in output pixels
    if outside_px.max() > 0.0:
        inside = (outside_px <= 0.0).astype(np.float32)
        fill = _continuation(planes, inside, outside_px, max(width, height))
        feather = max(3.0, width / 32.0)
        weight = np.clip(outside_px / feather, 0.0, 1.0)[:, :, None]
        planes = planes * (1.0 - weight) + fill * weight
    return np.clip(np.rint(planes), 0, 255).astype(np.uint8)


def _continuation(planes: np.ndarray, inside: np.ndarray, depth_px: np.ndarray, size: int) -> np.ndarray:
    """(h, w, 3) float: a soft continuation of the `inside` pixels of `planes` beyond them.

    At each pixel, a normalised Gaussian average of the photo's pixels around it, whose width grows
    with the pixel's depth past the photo's edge (`depth_px`): close to the edge it continues the
    nearest colours, further out it fades into ever wider averages, so it keeps no direction (edge
    pixels repeated would draw streaks) and no hard seams. It is smooth, so it is made at about
    128 pixels across and enlarged."""
    from scipy import ndimage

    height, width = inside.shape
    step = max(1, size // 128)
    small_inside = inside[::step, ::step]
    small = planes[::step, ::step] * small_inside[:, :, None]
    base = size / 48.0
    sigmas = [base * 2.0**k for k in range(5)]
    mean = small.sum(axis=(0, 1)) / max(1.0, float(small_inside.sum()))
    levels = []
    grid = small_inside.shape[::-1]  # (w', h')
    for k, sigma in enumerate(sigmas):
        # Each wider average on a coarser grid (its detail is coarser too), enlarged to the first.
        sub = 2**k
        sub_inside, sub_planes = small_inside[::sub, ::sub], small[::sub, ::sub]
        weight = ndimage.gaussian_filter(sub_inside, sigma / step / sub, mode="constant")
        total = np.stack(
            [ndimage.gaussian_filter(sub_planes[:, :, c], sigma / step / sub, mode="constant") for c in range(3)], -1
        )
        level = np.concatenate([total, weight[:, :, None]], axis=-1)
        if sub > 1:
            level = _resize_planes(level, grid)
        total, weight = level[:, :, :3], level[:, :, 3]
        levels.append(np.where((weight > 1e-4)[:, :, None], total / np.maximum(weight, 1e-6)[:, :, None], np.nan))
    # The level for each pixel: log2 of (base + depth / 2) / base, between two levels.
    depth = depth_px[::step, ::step]
    position = np.clip(np.log2((base + 0.5 * depth) / base), 0.0, len(sigmas) - 1.0)
    lower = np.floor(position).astype(int)
    upper = np.minimum(lower + 1, len(sigmas) - 1)
    t = (position - lower)[:, :, None]
    stack = np.stack(levels)  # (levels, h', w', 3)
    rows, cols = np.indices(depth.shape)
    near, far = stack[lower, rows, cols], stack[upper, rows, cols]
    far = np.where(np.isnan(far), near, far)
    near = np.where(np.isnan(near), far, near)
    fill = np.where(np.isnan(near), mean, (1.0 - t) * near + t * far).astype(np.float32)
    return fill if step == 1 else _resize_planes(fill, (width, height))


def _resize_planes(planes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w, c) float -> (size[1], size[0], c) float32, bilinear."""
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(planes[:, :, c], np.float32), mode="F").resize(
            size, Image.Resampling.BILINEAR))
        for c in range(planes.shape[2])
    ]  # fmt: skip
    return np.stack(channels, axis=-1)


def align_portrait(
    name: str, rgb: np.ndarray, landmarks: np.ndarray, portrait: PortraitConfig, video: VideoConfig
) -> Portrait:
    """Crop, level and scale `rgb` around its face to the output size; landmarks follow."""
    width, height = video.width_px, video.height_px
    source_size = (int(rgb.shape[1]), int(rgb.shape[0]))
    matrix = alignment_matrix(
        landmarks, width, height, portrait.face_width_fraction, portrait.eye_line_fraction, source_size
    )
    out = warp_image(rgb, matrix, width, height)
    points = landmarks @ matrix[:, :2].T + matrix[:, 2]
    x_min, y_min = np.floor(points.min(axis=0))
    x_max, y_max = np.ceil(points.max(axis=0))
    face_box = (int(x_min), int(y_min), int(x_max - x_min), int(y_max - y_min))
    return Portrait(name=name, rgb=out, landmarks=points.astype(np.float32), face_box=face_box)


# --------------------------------------------------------------------------------------------------
# Public entry points


def load_portrait(
    source: Path | bytes,
    portrait: PortraitConfig,
    video: VideoConfig,
    *,
    name: str | None = None,
    landmarks: np.ndarray | Path | None = None,
) -> Portrait:
    """An image file or the bytes of an upload -> an aligned Portrait; PortraitError with a reason if not.

    Landmarks come from, in order: `landmarks` (a (68, 2) array or a JSON file), a JSON file beside
    the image (`<stem>.landmarks.json` or `<name>.json`, when `source` is a path), else dlib.
    Given landmarks are in pixels of the image as displayed (after EXIF orientation).
    """
    started = time.perf_counter()
    data = _read_source(source, portrait.max_bytes)
    rgb = decode_image(data, portrait.max_pixels)
    height, width = rgb.shape[:2]
    if name is None:
        name = Path(source).stem if isinstance(source, str | Path) else "upload"
    given: np.ndarray | None = None
    what = "landmarks"
    if isinstance(landmarks, str | Path):
        what = f"landmarks file {Path(landmarks).name}"
        given = read_landmarks_json(Path(landmarks))
    elif landmarks is not None:
        given = parse_landmarks(landmarks)
    elif isinstance(source, str | Path):
        sidecar = landmarks_sidecar(Path(source))
        if sidecar is not None:
            what = f"landmarks file {sidecar.name}"
            given = read_landmarks_json(sidecar)
    if given is not None:
        _check_inside(given, width, height, what)
        points = given
    else:
        try:
            points = detect_landmarks(rgb)
        except PortraitError as exc:
            if isinstance(source, str | Path):  # a file on disk can have landmarks beside it; an upload cannot
                raise PortraitError(f"{exc}{_NO_FACE_FILE_HINT}") from None
            raise
    result = align_portrait(name, rgb, points, portrait, video)
    log.debug(
        "portrait %r: %dx%d source, landmarks from %s, %.3f s",
        name,
        width,
        height,
        "the user" if given is not None else "dlib",
        time.perf_counter() - started,
    )
    return result


def _astronaut() -> np.ndarray:
    from skimage import data

    return np.asarray(data.astronaut(), dtype=np.uint8)[:, :, :3]


# Name -> (loader of the RGB image, credit). Only scikit-image's astronaut has a face dlib finds.
_BUILTINS: dict[str, tuple[Callable[[], np.ndarray], str]] = {
    "astronaut": (_astronaut, "Eileen Collins, NASA (public domain), via scikit-image"),
}


def builtin_portrait_names() -> list[str]:
    return sorted(_BUILTINS)


@functools.cache
def _builtin_source(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(rgb, landmarks) of a built-in portrait, detected once per process; read-only arrays."""
    loader, _ = _BUILTINS[name]
    rgb = np.ascontiguousarray(loader())
    points = detect_landmarks(rgb)
    rgb.setflags(write=False)
    points.setflags(write=False)
    return rgb, points


def load_builtin_portrait(name: str, portrait: PortraitConfig, video: VideoConfig) -> Portrait:
    if name not in _BUILTINS:
        raise PortraitError(
            f"unknown built-in portrait {name!r}; "
            f"the built-in portraits are: {', '.join(builtin_portrait_names())}"
        )
    aligned = _aligned_builtin(name, portrait, video)
    # Each caller gets its own arrays: one session scribbling on its portrait does not touch another's.
    return dataclasses.replace(aligned, rgb=aligned.rgb.copy(), landmarks=aligned.landmarks.copy())


@functools.cache
def _aligned_builtin(name: str, portrait: PortraitConfig, video: VideoConfig) -> Portrait:
    """A built-in portrait cropped for one output size, once per process (the crop costs ~0.1 s)."""
    rgb, points = _builtin_source(name)
    return align_portrait(name, rgb, points, portrait, video)


def default_portrait(config: AppConfig) -> Portrait:
    return load_builtin_portrait(config.portrait.default, config.portrait, config.video)
