"""Real edits of video, for the watermark's tests and benchmark: aiortc's own VP8 and H264 encoders
(with their packetisers and decoders, as a WebRTC peer runs them), libx264 through av at a set
bitrate and size, resizing, brightness and contrast, and stills saved as PNG or JPEG."""

from __future__ import annotations

import fractions
import io
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
from PIL import Image

Clip = np.ndarray  # (T, H, W, 3) uint8
FPS = 25


def _video_frames(clip: Clip) -> list[av.VideoFrame]:
    frames = []
    for i, rgb in enumerate(clip):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts, frame.time_base = i * 3600, fractions.Fraction(1, 90000)
        frames.append(frame)
    return frames


def aiortc_codec(codec: str, bitrate_bps: int) -> Callable[[Clip], Clip]:
    def run(clip: Clip) -> Clip:
        from aiortc.codecs.h264 import H264Decoder, H264Encoder, h264_depayload
        from aiortc.codecs.vpx import Vp8Decoder, Vp8Encoder, vp8_depayload
        from aiortc.jitterbuffer import JitterFrame

        if codec == "vp8":
            encoder, decoder, depayload = Vp8Encoder(), Vp8Decoder(), vp8_depayload
        else:
            encoder, decoder, depayload = H264Encoder(), H264Decoder(), h264_depayload  # type: ignore[assignment]
        encoder.target_bitrate = bitrate_bps
        out = []
        for i, frame in enumerate(_video_frames(clip)):
            payloads, timestamp = encoder.encode(frame, force_keyframe=i == 0)
            data = b"".join(depayload(p) for p in payloads)
            out += [f.to_ndarray(format="rgb24") for f in decoder.decode(JitterFrame(data, timestamp))]
        return np.stack(out)

    return run


def encode_mp4(
    clip: Clip | list[np.ndarray],
    target: str | Path | io.BytesIO,
    *,
    bitrate_bps: int | None = None,
    scale: float = 1.0,
) -> None:
    """Frames -> H264 (libx264 through av) in MP4, at a bitrate and a size when given."""
    h, w = clip[0].shape[:2]
    width, height = int(w * scale) // 2 * 2, int(h * scale) // 2 * 2
    with av.open(target if isinstance(target, io.BytesIO) else str(target), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if bitrate_bps:
            stream.bit_rate = bitrate_bps
        for i, rgb in enumerate(clip):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame = frame.reformat(width=width, height=height)
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def x264(bitrate_bps: int, scale: float = 1.0) -> Callable[[Clip], Clip]:
    def run(clip: Clip) -> Clip:
        buffer = io.BytesIO()
        encode_mp4(clip, buffer, bitrate_bps=bitrate_bps, scale=scale)
        buffer.seek(0)
        with av.open(buffer) as container:
            return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])

    return run


def resized(factor: float) -> Callable[[Clip], Clip]:
    def run(clip: Clip) -> Clip:
        h, w = clip.shape[1:3]
        size = (int(w * factor), int(h * factor))
        return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BILINEAR)) for f in clip])

    return run


def levels(brightness: float = 0.0, contrast: float = 0.0) -> Callable[[Clip], Clip]:
    def run(clip: Clip) -> Clip:
        x = clip.astype(np.float32)
        x = (x - x.mean()) * (1.0 + contrast) + x.mean() + 255.0 * brightness
        return np.clip(x, 0, 255).round().astype(np.uint8)

    return run


def still(fmt: str, **options: int) -> Callable[[Clip], Clip]:
    def run(clip: Clip) -> Clip:
        buffer = io.BytesIO()
        Image.fromarray(clip[len(clip) // 2]).save(buffer, format=fmt, **options)
        return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))[None]

    return run


STANDARD: dict[str, Callable[[Clip], Clip]] = {
    "vp8 1 Mbps": aiortc_codec("vp8", 1_000_000),
    "vp8 500 kbps": aiortc_codec("vp8", 500_000),
    "vp8 300 kbps": aiortc_codec("vp8", 300_000),
    "h264 1 Mbps": aiortc_codec("h264", 1_000_000),
    "h264 500 kbps": aiortc_codec("h264", 500_000),
    "x264 300 kbps": x264(300_000),
    "half size, x264 300 kbps": x264(300_000, scale=0.5),
    "double size": resized(2.0),
    "brightness +10%": levels(brightness=0.1),
    "brightness -10%": levels(brightness=-0.1),
    "contrast +10%": levels(contrast=0.1),
    "contrast -10%": levels(contrast=-0.1),
    "a still, png": still("PNG"),
    "a still, jpeg 75": still("JPEG", quality=75),
}
"""What the watermark must survive (issue 8): the service's encoders down to 300 kbps, scaling,
colour changes and stills."""
