"""Is a detected face a human face? A second opinion on what the HOG detector and the 68-point
predictor found, so that a dog's or cat's face (or a patch of texture) is refused with a clear
reason instead of animated with a mouth painted on its chin.

The HOG frontal detector fires, at low scores, on animal faces and on texture, and the shape
predictor then fits 68 points to whatever it was given. The check looks again at the face the
landmarks describe: the image is cut around the landmarks, turned so the eyes are level and scaled
so the face is `_FACE_PX` pixels wide, and dlib's CNN human-face detector (the MMOD model shipped by
`face-recognition-models`) must find a face there, of about that size and place. Where it finds
none, it looks once more at the crop softened (flat-colour and line-drawn faces). On that small
crop the CNN costs about 0.2 s per look on two CPU cores, instead of seconds on a whole photo.

Measured by `bench/face_check.py`: the CNN confirmed none of about 900 false faces (HOG near-faces
and random boxes on photographs, and boxes on a cat's face), and every photographed face. Two other
signals were measured and dropped: the shape of the 68 points (Procrustes distance to the mean
face) is as face-like on false faces as on real ones, since the predictor always draws a face; the
HOG score cannot tell the false faces the HOG detector itself accepted.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

_FACE_PX = 88  # the landmarks' width in the crop: the CNN finds faces from about 80 pixels
_CANVAS_PX = 148  # the square crop the CNN looks at (the face and a margin around it)
_CNN_MIN_CONFIDENCE = 0.0  # dlib's Python API reports only detections above 0, its own threshold
_MAX_CENTRE_OFFSET = 0.35  # the CNN's face centre this far (share of the face width) from the landmarks'
_SIZE_RATIO = (0.6, 1.8)  # the CNN's box width over the landmarks' width
_SOFTEN_PX = 2.0  # the Gaussian blur (sigma, crop pixels) of the second look


@dataclass(frozen=True)
class FaceEvidence:
    """What the check saw: the CNN's best matching confidence (None: no face there) and its cost."""

    cnn_confidence: float | None
    seconds: float

    @property
    def human(self) -> bool:
        return self.cnn_confidence is not None and self.cnn_confidence >= _CNN_MIN_CONFIDENCE


@functools.lru_cache(maxsize=1)
def _cnn() -> Any:
    import dlib

    from avatar.portrait import _model_path

    return dlib.cnn_face_detection_model_v1(str(_model_path("mmod_human_face_detector.dat")))


def levelled_crop(
    rgb: np.ndarray, landmarks: np.ndarray, face_px: float = _FACE_PX, canvas_px: int = _CANVAS_PX
) -> np.ndarray:
    """The (canvas_px, canvas_px, 3) uint8 square around the face of `landmarks`, eyes level, the
    landmarks `face_px` wide and centred. Outside the photo the crop is black."""
    left_eye, right_eye = landmarks[36:42].mean(axis=0), landmarks[42:48].mean(axis=0)
    dx, dy = right_eye - left_eye
    angle = math.atan2(dy, dx)
    cos, sin = math.cos(angle), math.sin(angle)
    to_level = np.array([[cos, sin], [-sin, cos]])  # rotates by -angle: the eye line becomes level
    levelled = landmarks @ to_level.T
    low, high = levelled.min(axis=0), levelled.max(axis=0)
    width = max(float(high[0] - low[0]), 1.0)
    scale = face_px / width
    centre_levelled = (low + high) / 2.0
    # crop = scale * to_level @ source + shift, the face centre at the crop's centre
    linear = scale * to_level
    shift = canvas_px / 2.0 - scale * centre_levelled
    # Cut the part of the source the crop sees, shrink it with a box filter near the target scale
    # (no aliasing), then resample it through the affine map.
    inverse = np.linalg.inv(linear)
    corners = np.array([[0, 0], [canvas_px, 0], [0, canvas_px], [canvas_px, canvas_px]], float)
    seen = (corners - shift) @ inverse.T
    x0, y0 = np.floor(seen.min(axis=0)).astype(int) - 2
    x1, y1 = np.ceil(seen.max(axis=0)).astype(int) + 2
    region = Image.fromarray(np.ascontiguousarray(rgb)).crop((int(x0), int(y0), int(x1), int(y1)))
    factor = max(1, int(1.0 / scale))
    if factor > 1:
        region = region.reduce(factor)
    # output (u, v) -> region pixel: ((inverse @ ((u, v) - shift)) - (x0, y0)) / factor
    # Pillow maps continuous coordinates (a pixel's centre is at index + 0.5), hence the halves.
    half = np.array([0.5, 0.5])
    a = inverse / factor
    b = (-inverse @ shift - inverse @ half - np.array([x0, y0], float) + half) / factor
    coefficients = (a[0, 0], a[0, 1], b[0], a[1, 0], a[1, 1], b[1])
    crop = region.transform((canvas_px, canvas_px), Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR)
    return np.ascontiguousarray(np.asarray(crop.convert("RGB")))


def face_evidence(rgb: np.ndarray, landmarks: np.ndarray) -> FaceEvidence:
    """Run the CNN human-face detector on the levelled crop around `landmarks` (68, 2) of `rgb`;
    where it finds no face, once more on the crop softened by a Gaussian blur (`_SOFTEN_PX`): flat
    colours and hard outlines (posters, cartoons, drawings) then read as shading, as in a photo."""
    from PIL import ImageFilter

    from avatar.portrait import _dlib_lock

    started = time.perf_counter()
    crop = levelled_crop(rgb, landmarks)
    detector = _cnn()
    best: float | None = None
    for soften_px in (0.0, _SOFTEN_PX):
        image = crop
        if soften_px:
            image = np.asarray(Image.fromarray(crop).filter(ImageFilter.GaussianBlur(soften_px)))
        with _dlib_lock:
            detections = detector(np.ascontiguousarray(image), 0)
        best = _best_matching(detections)
        if best is not None:
            break
    return FaceEvidence(cnn_confidence=best, seconds=time.perf_counter() - started)


def _best_matching(detections: Any) -> float | None:
    """The highest confidence among the CNN's faces that sit where the landmarks put the face."""
    centre = _CANVAS_PX / 2.0
    best: float | None = None
    for detection in detections:
        rect = detection.rect
        width = rect.right() + 1 - rect.left()
        cx, cy = (rect.left() + rect.right() + 1) / 2.0, (rect.top() + rect.bottom() + 1) / 2.0
        if math.hypot(cx - centre, cy - centre) > _MAX_CENTRE_OFFSET * _FACE_PX:
            continue
        if not _SIZE_RATIO[0] * _FACE_PX <= width <= _SIZE_RATIO[1] * _FACE_PX:
            continue
        best = float(detection.confidence) if best is None else max(best, float(detection.confidence))
    return best


def is_human_face(rgb: np.ndarray, landmarks: np.ndarray) -> bool:
    """True when the CNN human-face detector confirms a face where the landmarks are."""
    return face_evidence(rgb, landmarks).human


NOT_HUMAN = (
    "no human face found in this image: the face the detector found does not look like a person's "
    "(an animal or a pattern can fool it); use a photo or painting of one "
    "person looking roughly at the camera, with the face clearly visible"
)


def check_human_face(rgb: np.ndarray, landmarks: np.ndarray) -> None:
    """PortraitError (`NOT_HUMAN`) unless the face at `landmarks` is confirmed as a human face."""
    from avatar.errors import PortraitError

    if not is_human_face(rgb, landmarks):
        raise PortraitError(NOT_HUMAN)
