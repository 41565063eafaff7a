"""`avatar verify`: is this video or image synthetic, by this software's own marks?

Two independent checks, each reported in full:
- the invisible watermark (detect.py), read from the pixels: it survives re-encoding, scaling and
  colour changes, and tells which service and session made the frames;
- the content credentials (credentials.py), read from the file: a signed C2PA manifest bound to
  the file's bytes, so any re-encode or edit removes or invalidates it.

`synthetic` is true when the watermark is found, or when valid credentials say the file was made
by a trained algorithm (the IPTC digital source type). A file that is not a readable video or
image raises VerifyError; nothing is guessed about it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

from avatar.disclosure.credentials import read_credentials
from avatar.disclosure.detect import WatermarkDetector
from avatar.errors import AvatarError, CredentialsError

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
DEFAULT_MAX_FRAMES = 1500  # 60 s at 25 fps: enough evidence, bounded time for a long file


class VerifyError(AvatarError):
    """A file `avatar verify` cannot read as a video or an image."""


def _video_frames(path: Path, max_frames: int) -> tuple[float, Iterator[np.ndarray]] | None:
    """(fps, frames) of the first video stream that av finds, or None when av sees no video."""
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError):
        return None
    streams = [s for s in container.streams.video if s.codec_context.name not in ("ansi", "tty", "bintext")]
    if not streams:
        container.close()
        return None
    stream = streams[0]
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else 25.0

    def frames() -> Iterator[np.ndarray]:
        with container:
            for count, frame in enumerate(container.decode(stream)):
                if count >= max_frames:
                    break
                yield frame.to_ndarray(format="rgb24")

    return fps, frames()


def _image_frame(path: Path) -> np.ndarray | None:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None


def verify_file(
    path: Path, *, max_frames: int = DEFAULT_MAX_FRAMES, trust_anchors: Path | None = None
) -> dict[str, Any]:
    """The report of one file (see the module docstring); VerifyError when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise VerifyError(f"{path}: no such file")
    detector: WatermarkDetector
    video = _video_frames(path, max_frames)
    try:
        if video is not None:
            fps, frames = video
            detector = WatermarkDetector(fps)
            detector.add_all(frames)
        else:
            still = _image_frame(path)
            if still is None:
                raise VerifyError(f"{path}: not a video or an image that can be read")
            detector = WatermarkDetector()
            detector.add(still)
    except (av.error.FFmpegError, OSError) as exc:
        raise VerifyError(f"{path}: cannot be decoded ({exc})") from exc
    watermark = detector.result()
    if watermark.frames == 0:
        raise VerifyError(f"{path}: holds no frame that can be decoded")
    try:
        credentials = read_credentials(path, trust_anchors=trust_anchors)
    except CredentialsError:
        credentials = {"present": False, "valid": False, "generator": None, "errors": ["unreadable"]}
    says_synthetic = bool(credentials.get("valid")) and credentials.get("source_type") == TRAINED_ALGORITHMIC_MEDIA
    c2pa = {
        key: credentials.get(key)
        for key in ("present", "valid", "trusted", "generator", "signer", "source_type", "watermark", "errors")
    }
    return {
        "file": str(path),
        "synthetic": watermark.detected or says_synthetic,
        "watermark": watermark.as_dict(),
        "c2pa": c2pa,
    }
