"""The talking portrait as a virtual camera, through pyvirtualcam.

pyvirtualcam sends frames to v4l2loopback on Linux and to OBS Studio's Virtual Camera (or Unity
Capture) on Windows and macOS. Importing it works without any of them; opening a camera fails
without the driver. Both become a VirtualCameraError that says what to install and how to load it.
`VirtualCamera` is a frame sink of `avatar camera`: `write_frame()` copies one RGB frame out (a
memory copy into the driver, well under a millisecond at 512x512); the pacing is the session's.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from avatar.errors import VirtualCameraError

log = logging.getLogger(__name__)

_V4L2_SYSFS = Path("/sys/devices/virtual/video4linux")


def install_hint() -> str:
    """What to install (and run) for a virtual camera on this platform."""
    if sys.platform.startswith("linux"):
        return (
            "install v4l2loopback (Debian/Ubuntu: sudo apt install v4l2loopback-dkms) and load it: "
            'sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label="Talking portrait"'
        )
    return "install OBS Studio (28 or later), start its Virtual Camera once, then stop it and close OBS"


def _pyvirtualcam() -> Any:
    try:
        import pyvirtualcam
    except ImportError as exc:
        raise VirtualCameraError(
            f"pyvirtualcam is not installed (pip install pyvirtualcam); then {install_hint()}"
        ) from exc
    return pyvirtualcam


def describe_cameras() -> list[str]:
    """Lines naming the virtual cameras this machine has (v4l2loopback devices on Linux)."""
    lines = ["virtual cameras:"]
    if not sys.platform.startswith("linux"):
        lines.append(f"  the OBS Virtual Camera when OBS is installed ({install_hint()})")
        return lines
    devices = sorted(_V4L2_SYSFS.glob("video*")) if _V4L2_SYSFS.is_dir() else []
    for device in devices:
        name = (device / "name").read_text().strip() if (device / "name").is_file() else "?"
        lines.append(f"  /dev/{device.name}: {name}")
    if not devices:
        lines.append(f"  (none): {install_hint()}")
    return lines


class VirtualCamera:
    """One virtual camera at the output size and frame rate; `write_frame()`, `close()`."""

    def __init__(self, width_px: int, height_px: int, fps: int, *, device: str = "", backend: str = "") -> None:
        pyvirtualcam = _pyvirtualcam()
        try:
            self._camera = pyvirtualcam.Camera(
                width_px,
                height_px,
                fps,
                fmt=pyvirtualcam.PixelFormat.RGB,
                device=device or None,
                backend=backend or None,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise VirtualCameraError(f"no virtual camera to send to ({exc}); {install_hint()}") from exc
        self.device = str(self._camera.device)
        self.frames = 0
        log.info("virtual camera %s (%s), %dx%d at %d fps", self.device, self._camera.backend, width_px, height_px, fps)

    def write_frame(self, t_s: float, rgb: np.ndarray) -> None:
        """Send one RGB uint8 (h, w, 3) frame, due at clock time `t_s` (now: the session paces)."""
        self._camera.send(np.ascontiguousarray(rgb))
        self.frames += 1

    def close(self) -> None:
        self._camera.close()
