"""Faces and false faces for the human-face check (avatar.face_check), from installed packages only.

Positives: scikit-image's astronaut (as shipped, cropped, tilted: the framing tests' cases) and its
200 small LFW faces enlarged to 200-256 px, and stand-ins for paintings, statues, cartoons and
drawings made from them with image filters. They are stand-ins, honestly: filtered photographs, not
real paintings or statues (none is installed); they test that the check does not depend on photo
texture, skin colour or fine detail. A positive is a case only where the HOG detector finds it.

Negatives: false-face candidates, harvested the way the bug met them. The HOG detector is run with
a negative threshold (it then returns the boxes it nearly took for faces) on every photograph
scikit-image ships except the astronaut and the cameraman (both show human faces), on the other
packages' images, and on their crops, flips, half and double sizes; forced boxes at random places
and scales are added. Each box gets the shape predictor's 68 landmarks, as it would in the service.
Chelsea the cat is the one real animal face: its candidates, and boxes laid on its face at several
sizes, are a set of their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from avatar.portrait import _RELATIVE_SCORE, _area, _detector, _dlib_lock, detect_faces, fit_landmarks
from tests.real_images import other_package_images, photographs

Box = tuple[float, float, float, float]
_HUMAN_PHOTOS = ("astronaut", "camera")  # the cameraman is a person too: not a negative
_HARVEST_THRESHOLD = -1.0  # the HOG score down to which near-faces are taken as candidates
_PER_IMAGE = 4  # the best-scoring candidates kept per image and upsampling


@dataclass(frozen=True)
class Case:
    group: str  # "faces", "paintings", "non-faces", "cat"
    name: str
    rgb: np.ndarray
    landmarks: np.ndarray  # (68, 2) from the shape predictor


# --------------------------------------------------------------------------------------------------
# Positives


def astronaut_cases() -> dict[str, np.ndarray]:
    """The astronaut as shipped, cropped (the face near each edge, filling the frame, tiny) and tilted:
    the portraits of the framing and face-check tests."""
    import skimage.data as data

    a = data.astronaut()
    bicubic = Image.Resampling.BICUBIC
    return {
        "as shipped": a,
        "tight head": a[60:330, 160:400],
        "head cut at the top": a[90:400, 100:420],
        "face at the left edge": a[:, 170:],
        "face at the right edge": a[:, :330],
        "bust ending at the chest": a[20:260, 120:420],
        "chin at the bottom": a[0:250, 100:420],
        "face only": a[90:250, 180:340],
        "tiny (96 px)": np.asarray(Image.fromarray(a[40:360, 110:430]).resize((96, 96), bicubic)),
        "tilted 18 degrees": np.asarray(Image.fromarray(a).rotate(18, resample=bicubic, fillcolor=(120, 120, 120))),
        "tilted, tight": np.asarray(Image.fromarray(a[40:380, 120:440]).rotate(-15, bicubic, expand=True)),
    }  # fmt: skip


def lfw_faces(step: int = 1) -> dict[str, np.ndarray]:
    """scikit-image's LFW faces (25x25 grey), enlarged bicubically to 200-256 px, every `step`-th."""
    import skimage.data as data

    faces = np.load(Path(data.__file__).parent / "lfw_subset.npy")  # (200, 25, 25) float 0..1
    out = {}
    for i in range(0, len(faces), step):
        side = 200 + (i * 7) % 57
        grey = np.asarray(np.clip(faces[i] * 255, 0, 255), np.uint8)
        enlarged = Image.fromarray(grey).convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
        out[f"lfw {i}"] = np.asarray(enlarged)
    return out


def _quantise(rgb: np.ndarray, levels: int) -> np.ndarray:
    step = 256 // levels
    return np.asarray((rgb // step) * step + step // 2, np.uint8)


def _edges(rgb: np.ndarray) -> np.ndarray:
    """(h, w) float 0..1: the gradient magnitude of the grey image (Gaussian derivatives at the
    scale of a pen stroke, 1/150 of the image: Sobel alone draws the ringing of the enlarged LFW
    faces, a texture no drawing has)."""
    from scipy import ndimage

    grey = np.asarray(Image.fromarray(rgb).convert("L"), np.float64)
    magnitude = ndimage.gaussian_gradient_magnitude(grey, max(1.0, max(grey.shape) / 150.0))
    return np.clip(magnitude / max(1e-6, np.percentile(magnitude, 99)), 0.0, 1.0)


def cartoon(rgb: np.ndarray) -> np.ndarray:
    """Cartoon stand-in: edge-preserving smoothing (bilateral), flat colours, dark outlines."""
    from skimage.restoration import denoise_bilateral

    smooth = denoise_bilateral(rgb, sigma_color=0.08, sigma_spatial=3, channel_axis=-1)
    flat = _quantise(np.asarray(np.clip(smooth * 255, 0, 255), np.uint8), 6).astype(np.float64)
    outline = (_edges(rgb) > 0.35)[:, :, None]
    return np.asarray(np.where(outline, 0.25 * flat, flat), np.uint8)


def oil_paint(rgb: np.ndarray) -> np.ndarray:
    """Oil-paint stand-in: the most common colour over 7x7 patches (brush dabs), then a median."""
    image = Image.fromarray(_quantise(rgb, 12)).filter(ImageFilter.ModeFilter(7)).filter(ImageFilter.MedianFilter(3))
    return np.asarray(image)


def posterise(rgb: np.ndarray) -> np.ndarray:
    """Poster / screen-print stand-in: 3 bits per channel."""
    return np.asarray(ImageOps.posterize(Image.fromarray(rgb), 2))


def sepia(rgb: np.ndarray) -> np.ndarray:
    """Old-print stand-in: sepia tones."""
    tone = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])
    return np.asarray(np.clip(rgb.astype(np.float64) @ tone.T, 0, 255), np.uint8)


def statue(rgb: np.ndarray) -> np.ndarray:
    """Statue stand-in: grey stone, low contrast, no colour, a little blur (no texture of skin)."""
    grey = np.asarray(Image.fromarray(rgb).convert("L").filter(ImageFilter.GaussianBlur(1.2)), np.float64)
    stone = 150.0 + 0.45 * (grey - grey.mean())
    return np.repeat(np.clip(stone, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def line_drawing(rgb: np.ndarray) -> np.ndarray:
    """Drawing stand-in: dark strokes where the photo has edges, on white paper."""
    ink = np.clip((_edges(rgb) - 0.2) / 0.5, 0.0, 1.0)  # faint gradients leave the paper white
    paper = np.asarray(255.0 * (1.0 - ink), np.uint8)
    return np.repeat(paper[:, :, None], 3, axis=2)


PAINTING_FILTERS = {
    "cartoon": cartoon,
    "oil": oil_paint,
    "poster": posterise,
    "sepia": sepia,
    "statue": statue,
    "drawing": line_drawing,
}


def positive_images(quick: bool) -> dict[str, dict[str, np.ndarray]]:
    """{"faces": {...}, "paintings": {...}}: the photographs of people and their painted stand-ins."""
    astronauts = {f"astronaut {name}": rgb for name, rgb in astronaut_cases().items()}
    lfw = lfw_faces(step=10 if quick else 1)
    faces = {**astronauts, **lfw}
    chosen = ("astronaut as shipped", "astronaut tight head", "astronaut tilted 18 degrees")
    painted_from = {name: astronauts[name] for name in chosen}
    painted_from.update(lfw_faces(step=40 if quick else 8))
    paintings = {
        f"{name} {style}": apply(rgb) for name, rgb in painted_from.items() for style, apply in PAINTING_FILTERS.items()
    }
    return {"faces": faces, "paintings": paintings}


def found_face(rgb: np.ndarray) -> np.ndarray | None:
    """The landmarks detect_landmarks would fit (before its human-face check), or None: no face."""
    faces = detect_faces(rgb)
    if not faces:
        return None
    best = max(score for _, score in faces)
    box, _ = max((f for f in faces if f[1] >= _RELATIVE_SCORE * best), key=lambda f: (_area(f[0]), f[1]))
    return fit_landmarks(rgb, box)


def positive_cases(quick: bool) -> tuple[list[Case], list[str]]:
    """(cases, names of the positives dlib's HOG detector does not find: not cases)."""
    cases, missed = [], []
    for group, images in positive_images(quick).items():
        for name, rgb in images.items():
            rgb = np.ascontiguousarray(rgb)
            points = found_face(rgb)
            if points is None:
                missed.append(f"{group}: {name}")
            else:
                cases.append(Case(group, name, rgb, points))
    return cases, missed


# --------------------------------------------------------------------------------------------------
# Negatives


def _variants(rgb: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    h, w = rgb.shape[:2]
    yield "", rgb
    yield " flipped", rgb[:, ::-1]
    yield " crop", rgb[h // 8 : h - h // 8, w // 6 : w - w // 6]
    yield " corner", rgb[: h * 2 // 3, : w * 2 // 3]
    half = (max(48, w // 2), max(48, h // 2))
    yield " half", np.asarray(Image.fromarray(rgb).resize(half, Image.Resampling.BILINEAR))
    if max(h, w) <= 520:
        yield " double", np.asarray(Image.fromarray(rgb).resize((2 * w, 2 * h), Image.Resampling.BICUBIC))


def harvested_boxes(rgb: np.ndarray) -> list[tuple[Box, float]]:
    """The HOG detector's near-faces: every box down to `_HARVEST_THRESHOLD`, the best few per
    upsampling (0 and 1), in pixels of `rgb`, with their scores."""
    detector = _detector()
    out: list[tuple[Box, float]] = []
    for upsample in (0, 1) if max(rgb.shape[:2]) <= 800 else (0,):
        with _dlib_lock:
            rects, scores, _ = detector.run(np.ascontiguousarray(rgb), upsample, _HARVEST_THRESHOLD)
        ranked = sorted(zip(rects, scores, strict=True), key=lambda pair: -pair[1])[:_PER_IMAGE]
        for r, s in ranked:
            box = (float(r.left()), float(r.top()), float(r.right() + 1), float(r.bottom() + 1))
            if all(_overlap(box, seen) < 0.5 for seen, _ in out):
                out.append((box, float(s)))
    return out


def forced_boxes(rgb: np.ndarray, count: int, rng: np.random.Generator) -> list[Box]:
    """`count` square boxes at random places, 15-60 % of the image's short side."""
    h, w = rgb.shape[:2]
    out = []
    for _ in range(count):
        side = rng.uniform(0.15, 0.6) * min(h, w)
        x, y = rng.uniform(0, w - side), rng.uniform(0, h - side)
        out.append((x, y, x + side, y + side))
    return out


def cat_face_boxes(rgb: np.ndarray) -> list[Box]:
    """Boxes laid on Chelsea's face (eyes near (170, 115) and (318, 138), nose near (262, 240) in
    the 451x300 photo) at several sizes and shifts, in pixels of `rgb` (a resized copy is fine)."""
    sx, sy = rgb.shape[1] / 451.0, rgb.shape[0] / 300.0
    out = []
    for side in (140.0, 190.0, 240.0, 290.0):
        for dx, dy in ((0, 0), (-25, 0), (25, 0), (0, -25), (0, 25)):
            cx, cy = 250.0 + dx, 175.0 + dy
            out.append(((cx - side / 2) * sx, (cy - side / 2) * sy, (cx + side / 2) * sx, (cy + side / 2) * sy))
    return out


def _overlap(a: Box, b: Box) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def negative_images(quick: bool) -> dict[str, dict[str, np.ndarray]]:
    """{"cat": {...}, "non-faces": {...}}: the images false faces are harvested from."""
    photos = photographs()
    cat = {"chelsea": photos.pop("chelsea")}
    for name in _HUMAN_PHOTOS:
        photos.pop(name, None)
    if quick:
        photos = {k: photos[k] for k in ("coffee", "rocket", "motorcycle_left", "horse", "brick", "coins")}
    else:
        photos.update(other_package_images(limit=100))
    return {"cat": cat, "non-faces": photos}


def negative_cases(quick: bool, seed: int = 11) -> list[Case]:
    """Every false-face candidate, with the landmarks the predictor fits to it."""
    rng = np.random.default_rng(seed)
    cases = []
    for group, images in negative_images(quick).items():
        for base_name, base in images.items():
            variants = list(_variants(base))
            if quick:
                variants = variants[:1] + variants[4:5]
            for suffix, rgb in variants:
                rgb = np.ascontiguousarray(rgb)
                boxes = [(box, f"hog {score:+.2f}") for box, score in harvested_boxes(rgb)]
                boxes += [(box, "random") for box in forced_boxes(rgb, 1 if quick else 3, rng)]
                if group == "cat":
                    boxes += [(box, "on the face") for box in cat_face_boxes_in(suffix, rgb, base)]
                for k, (box, how) in enumerate(boxes):
                    points = fit_landmarks(rgb, box)
                    cases.append(Case(group, f"{base_name}{suffix} #{k} {how}", rgb, points))
    return cases


def cat_face_boxes_in(suffix: str, rgb: np.ndarray, base: np.ndarray) -> list[Box]:
    """The cat-face boxes in a variant of the photo: whole-photo variants only (the flip mirrored)."""
    if suffix in ("", " half", " double"):
        return cat_face_boxes(rgb)
    if suffix == " flipped":
        w = rgb.shape[1]
        return [(w - b[2], b[1], w - b[0], b[3]) for b in cat_face_boxes(rgb)]
    return []
