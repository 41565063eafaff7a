"""Talking-face videos -> face-aligned clips with their audio, cached; train/holdout split; batches.

A data folder holds video files with an audio track (any container av opens: .mp4, .mkv, .mov,
.avi, .webm), searched recursively. Each video is decoded once:
- the audio through avatar.audio.load_audio_file, the same path as every other input (16 kHz mono);
- the face found once on the first frame (landmarks from `<video stem>.landmarks.json` beside the
  video when present, else avatar.portrait.detect_landmarks), and one fixed crop for the whole clip
  (`face_crop_box`, the same crop the generator takes from a portrait), as stable talking-head data
  sets do;
- the frames resampled to the configured fps (nearest frame in time).
The result is cached as one .npz per video, keyed by the file's path, size and mtime and by the
model size and fps, so a second run (or `avatar eval`) does not decode again.

Audio windows for frame k are cut exactly as avatar.windows.AudioWindower cuts them live:
samples [s_k - past, s_k + lookahead) with s_k = round(k * 16000 / fps), silence outside the clip.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch

from avatar.config import SAMPLE_RATE_HZ, TganConfig, WindowConfig
from avatar.errors import AvatarError
from avatar.generators.tgan import crop_face, face_crop_box, to_model_image
from avatar.windows import frame_sample_index

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm")
CACHE_VERSION = 2  # bump when the preparation of clips changes


class DatasetError(AvatarError):
    """A data folder or video that cannot be used for training."""


@dataclass(frozen=True)
class Clip:
    name: str
    frames: np.ndarray  # [T, H, W, 3] uint8 face crops at the model size
    audio: np.ndarray  # [N] int16, 16 kHz mono
    landmarks: np.ndarray  # [68, 2] float32, first frame's landmarks in crop pixels
    fps: int

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps


def find_videos(data_dir: Path) -> list[Path]:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"data folder not found: {data_dir}")
    videos = sorted(p for p in data_dir.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise DatasetError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) in {data_dir}")
    return videos


def split_videos(videos: list[Path], data_dir: Path, holdout_fraction: float) -> tuple[list[Path], list[Path]]:
    """Deterministic split by a hash of each file's path inside the data folder.

    The videos with the smallest hashes are held out: round(fraction * n) of them, at least one when
    the fraction is positive and there are two or more videos; never all of them.
    """
    if holdout_fraction <= 0 or len(videos) < 2:
        return list(videos), []

    def key(path: Path) -> str:
        return hashlib.sha1(path.relative_to(data_dir).as_posix().encode()).hexdigest()

    ranked = sorted(videos, key=key)
    n_holdout = min(max(1, round(holdout_fraction * len(videos))), len(videos) - 1)
    holdout = set(ranked[:n_holdout])
    return [v for v in videos if v not in holdout], [v for v in videos if v in holdout]


def cut_windows(audio: np.ndarray, frames: np.ndarray, fps: int, windows: WindowConfig) -> np.ndarray:
    """The audio windows of the given frame indices: [len(frames), S] float32 in [-1, 1]."""
    past, total = windows.past_samples, windows.total_samples
    starts = frame_sample_index(frames, fps) - past  # [T]
    padded = np.concatenate([np.zeros(past, np.int16), audio, np.zeros(total, np.int16)])
    index = starts[:, None] + past + np.arange(total)[None, :]  # into `padded`
    index = np.clip(index, 0, padded.size - 1)
    return padded[index].astype(np.float32) / 32768.0


def _landmarks_for(path: Path, first_frame: np.ndarray) -> np.ndarray:
    from avatar.portrait import detect_landmarks, landmarks_sidecar, read_landmarks_json

    sidecar = landmarks_sidecar(path)
    if sidecar is not None:
        return read_landmarks_json(sidecar)
    return detect_landmarks(first_frame)


def _decode(path: Path, config: TganConfig, fps: int) -> Clip:
    from avatar.audio import load_audio_file

    audio = load_audio_file(path)
    crops: list[np.ndarray] = []
    times: list[float] = []
    box: tuple[float, float, float, float] | None = None
    landmarks: np.ndarray | None = None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DatasetError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                rgb = frame.to_ndarray(format="rgb24")
                if box is None:
                    landmarks = _landmarks_for(path, rgb)
                    box = face_crop_box(landmarks, config.height_px, config.width_px)
                times.append(float(frame.time) if frame.time is not None else len(times) / fps)
                crops.append(crop_face(rgb, box, config.height_px, config.width_px))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot decode video: {exc}") from exc
    if not crops or box is None or landmarks is None:
        raise DatasetError(f"{path}: no video frames")
    # Frame k stands at k / fps: take the decoded frame nearest in time (the video may have another rate).
    decoded_times = np.asarray(times) - times[0]
    frame_period = float(np.median(np.diff(decoded_times))) if len(times) > 1 else 1.0 / fps
    video_frames = int(np.floor((decoded_times[-1] + frame_period) * fps + 1e-6))
    audio_frames = int(np.ceil(audio.size * fps / SAMPLE_RATE_HZ))
    n = max(1, min(video_frames, audio_frames))
    targets = np.arange(n) / fps
    after = np.clip(np.searchsorted(decoded_times, targets), 1, len(times) - 1) if len(times) > 1 else np.zeros(n, int)
    before = np.maximum(after - 1, 0)
    closer_before = np.abs(decoded_times[before] - targets) <= np.abs(decoded_times[after] - targets)
    nearest = np.where(closer_before, before, after)
    x, y, w, h = box
    scale = np.array([config.width_px / w, config.height_px / h])
    crop_landmarks = ((np.asarray(landmarks, np.float64) - [x, y]) * scale).astype(np.float32)
    return Clip(path.stem, np.stack([crops[i] for i in nearest]), audio, crop_landmarks, fps)


def _cache_path(path: Path, cache_dir: Path, config: TganConfig, fps: int) -> Path:
    from avatar.portrait import landmarks_sidecar

    stat = path.stat()
    key = (
        f"{CACHE_VERSION}|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{config.height_px}x{config.width_px}|{fps}"
    )
    sidecar = landmarks_sidecar(path)
    if sidecar is not None:  # new or edited landmarks make a new crop
        sidecar_stat = sidecar.stat()
        key += f"|{sidecar.name}|{sidecar_stat.st_size}|{sidecar_stat.st_mtime_ns}"
    return cache_dir / f"{path.stem}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"


def load_clip(path: Path, config: TganConfig, fps: int, cache_dir: Path | None) -> Clip:
    """One video as a Clip, from the cache when it is there."""
    cached = _cache_path(path, cache_dir, config, fps) if cache_dir is not None else None
    if cached is not None and cached.is_file():
        with np.load(cached) as data:
            return Clip(path.stem, data["frames"], data["audio"], data["landmarks"], int(data["fps"]))
    clip = _decode(path, config, fps)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(cached.name + ".tmp.npz")
        np.savez(tmp, frames=clip.frames, audio=clip.audio, landmarks=clip.landmarks, fps=np.int64(fps))
        tmp.replace(cached)
    log.info("prepared %s: %d frames, %.1f s", path.name, clip.num_frames, clip.duration_s)
    return clip


@dataclass(frozen=True)
class Batch:
    identity: torch.Tensor  # [B, 3, H, W] in [-1, 1]
    frames: torch.Tensor  # [B, T, 3, H, W] in [-1, 1]
    windows: torch.Tensor  # [B, T, S] float32

    def to(self, device: torch.device) -> Batch:
        return Batch(self.identity.to(device), self.frames.to(device), self.windows.to(device))


class TalkingFaces:
    """The clips of a data folder, split into train and holdout, with a batch sampler."""

    def __init__(
        self,
        data_dir: Path,
        model: TganConfig,
        fps: int,
        holdout_fraction: float,
        cache_dir: Path | None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.model = model
        self.fps = fps
        videos = find_videos(self.data_dir)
        self.train_paths, self.holdout_paths = split_videos(videos, self.data_dir, holdout_fraction)
        self.cache_dir = cache_dir
        self._clips: dict[Path, Clip] = {}

    def clip(self, path: Path) -> Clip:
        if path not in self._clips:
            self._clips[path] = load_clip(path, self.model, self.fps, self.cache_dir)
        return self._clips[path]

    def train_clips(self, min_frames: int) -> list[Clip]:
        clips = [self.clip(p) for p in self.train_paths]
        usable = [c for c in clips if c.num_frames >= min_frames]
        for c in clips:
            if c.num_frames < min_frames:
                log.warning(
                    "skipping %s: %d frames, fewer than the %d of a training clip", c.name, c.num_frames, min_frames
                )
        if not usable:
            raise DatasetError(
                f"no training video in {self.data_dir} has the {min_frames} frames a training clip needs"
            )
        return usable

def clip_windows(clip: Clip, windows: WindowConfig) -> np.ndarray:
    """Every frame's audio window of a whole clip: [T, S]."""
    return cut_windows(clip.audio, np.arange(clip.num_frames), clip.fps, windows)


def sample_batch(
    clips: list[Clip], batch_size: int, clip_frames: int, windows: WindowConfig, rng: np.random.Generator
) -> Batch:
    """B random training clips of T frames; the identity is a random frame of the same video."""
    identities, frames, audio = [], [], []
    for _ in range(batch_size):
        clip = clips[int(rng.integers(len(clips)))]
        start = int(rng.integers(clip.num_frames - clip_frames + 1))
        index = np.arange(start, start + clip_frames)
        identities.append(clip.frames[int(rng.integers(clip.num_frames))])
        frames.append(clip.frames[index])
        audio.append(cut_windows(clip.audio, index, clip.fps, windows))
    return Batch(
        identity=to_model_image(np.stack(identities)),
        frames=to_model_image(np.stack(frames)),
        windows=torch.from_numpy(np.stack(audio)),
    )
