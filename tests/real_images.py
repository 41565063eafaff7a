"""Real images that carry no watermark, from the installed packages (nothing is downloaded): every
photograph scikit-image ships in its own folder, its 200 small LFW faces, and the PNG and JPEG files
of the other packages; and edits of them (noise, crops, JPEG, half size). The negative set of the
watermark's tests and benchmark, and the hosts of its marked pans."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from tests.watermark_clips import CLIP_FRAMES, Clip


def pan_clip(photo: np.ndarray, size: int) -> Clip:
    """2 s of a slow pan (a few pixels) over a photograph, as a square video of `size`."""
    side = min(photo.shape[:2])
    square = np.asarray(Image.fromarray(photo[:side, :side]).resize((size + 16, size + 16), Image.Resampling.BICUBIC))
    return np.stack([square[k // 5 : k // 5 + size, k // 4 : k // 4 + size] for k in range(CLIP_FRAMES)])


def photographs() -> dict[str, np.ndarray]:
    """Every photograph scikit-image ships in its own folder (no download), as RGB."""
    import skimage.data as data

    folder = Path(data.__file__).parent
    out = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".gif", ".tif"):
            continue
        try:
            image = Image.open(path)
            image.seek(0)
            rgb = np.asarray(image.convert("RGB"))
        except Exception:  # noqa: BLE001 - a file Pillow cannot read is not an image for this set
            continue
        if min(rgb.shape[:2]) >= 64:
            out[path.stem] = rgb
    return out


def other_package_images(limit: int) -> dict[str, np.ndarray]:
    """PNG and JPEG files of the other installed packages (plots, icons, test images)."""
    site = Path(np.__file__).resolve().parent.parent
    out: dict[str, np.ndarray] = {}
    for path in sorted(site.rglob("*")):
        if len(out) >= limit:
            break
        if path.suffix.lower() not in (".png", ".jpg", ".jpeg") or "skimage" in path.parts:
            continue
        try:
            rgb = np.asarray(Image.open(path).convert("RGB"))
        except Exception:  # noqa: BLE001
            continue
        if min(rgb.shape[:2]) >= 64:
            out[f"{path.parent.name}/{path.name}"] = rgb
    return out


def negative_stills(quick: bool) -> dict[str, np.ndarray]:
    """Real images and their edits, none of them marked."""
    import skimage.data as data

    rng = np.random.default_rng(7)
    base = photographs()
    base.update(other_package_images(limit=20 if quick else 200))
    faces = np.load(Path(data.__file__).parent / "lfw_subset.npy")  # (200, 25, 25) float 0..1
    for i, face in enumerate(faces[: 20 if quick else len(faces)]):
        rgb = np.repeat((face * 255).astype(np.uint8)[..., None], 3, axis=2)
        base[f"lfw{i}"] = np.asarray(Image.fromarray(rgb).resize((256, 256), Image.Resampling.BICUBIC))
    out = {}
    for name, rgb in base.items():
        out[name] = rgb
        out[f"{name} +noise"] = np.clip(rgb + rng.normal(0, 6, rgb.shape), 0, 255).astype(np.uint8)
        h, w = rgb.shape[:2]
        out[f"{name} crop"] = rgb[h // 10 : h - h // 10, w // 8 : w - w // 8]
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=70)
        out[f"{name} jpeg"] = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
        out[f"{name} half"] = np.asarray(Image.fromarray(rgb).resize((max(32, w // 2), max(32, h // 2))))
    return out


