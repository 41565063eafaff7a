"""A small talking-face data set made at test time (for the tgan tests).

Each clip is the built-in astronaut portrait with a drawn mouth whose opening follows the RMS
envelope of real espeak-ng speech, and a blink or two (the eyes painted over with skin colour),
written as H264 + AAC MP4 with av, with the 68 landmarks of its first frame beside it
(`<stem>.landmarks.json`, as avatar.portrait reads them), so no landmark detector runs per clip.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from avatar.audio import load_audio_file
from avatar.config import SAMPLE_RATE_HZ, PortraitConfig, TganConfig, VideoConfig
from avatar.lipsync import audio_envelope
from avatar.speech import synthesize_speech

TINY = TganConfig(  # a temporal GAN small enough to train in seconds on 2 CPU cores (tests/test_tgan.py
    # and tests/test_train.py also train and load it with viseme conditioning, the default)
    height_px=64, width_px=48, identity_channels=8, audio_features=32, noise_features=4, hidden_features=32,
    visemes=False,
)
PHRASES = ("Open the window wide.", "Move the boat, my friend.", "Hello, how are you?")
SIZE_PX = 128
FPS = 25


def astronaut_face() -> tuple[np.ndarray, np.ndarray]:
    """(rgb (128, 128, 3) uint8, landmarks (68, 2)) of the aligned built-in portrait."""
    from avatar.portrait import load_builtin_portrait

    portrait = load_builtin_portrait("astronaut", PortraitConfig(), VideoConfig(width_px=SIZE_PX, height_px=SIZE_PX))
    return np.array(portrait.rgb), np.array(portrait.landmarks, dtype=np.float64)


def _ellipse(shape: tuple[int, int], cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """Soft (anti-aliased) filled ellipse as weights 0..1: (H, W) float32."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32) + 0.5
    r = np.sqrt(((xs - cx) / max(rx, 1e-3)) ** 2 + ((ys - cy) / max(ry, 1e-3)) ** 2)
    edge = 1.0 / max(min(rx, ry), 1.0)
    return np.clip((1.0 - r) / edge + 0.5, 0.0, 1.0).astype(np.float32)


def envelope(audio: np.ndarray, frames: int) -> np.ndarray:
    """Mouth opening per frame in 0..1 from the RMS of the 40 ms around each frame."""
    rms = audio_envelope(audio, frames, FPS).astype(np.float64)
    return np.clip(rms / (0.6 * rms.max() + 1e-9), 0.0, 1.0)


def draw_frame(
    face: np.ndarray, landmarks: np.ndarray, opening: float, eyes_closed: bool, width_scale: float = 1.0
) -> np.ndarray:
    """The face with a drawn mouth `opening` (0..1) wide open, `width_scale` times its rest width."""
    out = face.astype(np.float32)
    shape = face.shape[:2]
    inner = landmarks[60:68]
    cx, cy = inner.mean(axis=0)
    width = (inner[:, 0].max() - inner[:, 0].min()) * width_scale
    # Lips: a fixed reddish ellipse; the open mouth: a dark ellipse growing with the opening (jaw drop).
    lips = _ellipse(shape, cx, cy + 1.5 * opening, 0.62 * width, 2.5 + 4.0 * opening)
    out = out * (1 - lips[..., None]) + lips[..., None] * np.array([150.0, 60.0, 70.0])
    mouth = _ellipse(shape, cx, cy + 1.5 * opening, 0.5 * width, 0.3 + 4.0 * opening)
    out = out * (1 - mouth[..., None]) + mouth[..., None] * np.array([35.0, 10.0, 15.0])
    if eyes_closed:
        skin = face[int(landmarks[29, 1]), int(landmarks[29, 0])].astype(np.float32)
        for eye in (landmarks[36:42], landmarks[42:48]):
            ex, ey = eye.mean(axis=0)
            ew = eye[:, 0].max() - eye[:, 0].min()
            lid = _ellipse(shape, ex, ey, 0.7 * ew, 0.45 * ew)
            out = out * (1 - lid[..., None]) + lid[..., None] * skin
    return np.clip(out, 0, 255).astype(np.uint8)


def write_clip(path: Path, frames: np.ndarray, audio: np.ndarray) -> None:
    """H264 (crf 12) + AAC mono 16 kHz MP4."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height = frames.shape[2], frames.shape[1]
        video.pix_fmt = "yuv420p"
        video.options = {"crf": "12", "preset": "veryfast"}
        sound = container.add_stream("aac", rate=SAMPLE_RATE_HZ, layout="mono")
        for frame in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(video.encode(None))
        chunk = 1024
        for start in range(0, audio.size, chunk):
            piece = audio[start : start + chunk]
            frame = av.AudioFrame.from_ndarray(piece.reshape(1, -1).astype(np.int16), format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE_HZ
            frame.pts = start
            frame.time_base = Fraction(1, SAMPLE_RATE_HZ)
            container.mux(sound.encode(frame))
        container.mux(sound.encode(None))


def make_clips(out_dir: Path, count: int = 3, seconds: float = 1.6) -> list[Path]:
    """`count` clips of `seconds` each (speech padded with silence), with their landmarks JSON."""
    out_dir.mkdir(parents=True, exist_ok=True)
    face, landmarks = astronaut_face()
    paths = []
    for n in range(count):
        wav = synthesize_speech(
            PHRASES[n % len(PHRASES)], out_dir / f"speech{n}.wav", lead_silence_s=0.2, tail_silence_s=0.3
        )
        audio = load_audio_file(wav)
        wav.unlink()
        total = int(seconds * SAMPLE_RATE_HZ)
        audio = np.pad(audio[:total], (0, max(0, total - audio.size))).astype(np.int16)
        frames_count = int(seconds * FPS)
        opening = envelope(audio, frames_count)
        blink_at = {8 + 13 * n, 9 + 13 * n, 30 - n}  # one or two short blinks per clip
        frames = np.stack([draw_frame(face, landmarks, float(opening[k]), k in blink_at) for k in range(frames_count)])
        path = out_dir / f"talk{n}.mp4"
        write_clip(path, frames, audio)
        path.with_name(path.stem + ".landmarks.json").write_text(json.dumps({"landmarks": landmarks.tolist()}))
        paths.append(path)
    return paths
