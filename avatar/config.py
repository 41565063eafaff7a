"""Settings: one frozen dataclass per component, loaded once from config.toml.

A config file may set only some keys; every other key keeps the default written here. Unknown
sections or keys, and values of the wrong type or out of range, raise ConfigError naming the key.
Components receive their own dataclass through their constructor; nothing reads the environment.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avatar.errors import ConfigError

SAMPLE_RATE_HZ = 16_000
"""The one sample rate inside the chain: every input is resampled to 16 kHz mono int16 at the edge."""

MOUTH_SHAPES = ("visemes", "spectral")  # [warp] mouth_shapes: the learned model, the band-energy rules

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config.toml"


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


@dataclass(frozen=True)
class VideoConfig:
    fps: int = 25
    width_px: int = 512
    height_px: int = 512

    def __post_init__(self) -> None:
        _check(1 <= self.fps <= 60, "video.fps", "must be between 1 and 60")
        for key, value in (("video.width_px", self.width_px), ("video.height_px", self.height_px)):
            _check(64 <= value <= 2048 and value % 16 == 0, key, "must be a multiple of 16 in 64..2048")


@dataclass(frozen=True)
class VadConfig:
    aggressiveness: int = 2
    frame_ms: int = 20
    start_s: float = 0.04
    hangover_s: float = 0.25

    def __post_init__(self) -> None:
        _check(self.aggressiveness in (0, 1, 2, 3), "vad.aggressiveness", "must be 0, 1, 2 or 3")
        _check(self.frame_ms in (10, 20, 30), "vad.frame_ms", "must be 10, 20 or 30")
        _check(0.0 <= self.start_s <= 1.0, "vad.start_s", "must be between 0 and 1 s")
        _check(0.0 <= self.hangover_s <= 2.0, "vad.hangover_s", "must be between 0 and 2 s")


@dataclass(frozen=True)
class WindowConfig:
    """Each frame's audio window; and how far ahead of its frames the voice plays (`voice_lead_s`):
    a frame's mouth reads into its lookahead, so it moves ahead of the sound it shows by part of
    the lookahead, and the voice is played that much earlier to meet it (tests/av_sync.py
    measures lips against voice at the far end of a browser call)."""

    window_s: float = 0.2
    lookahead_s: float = 0.04
    voice_lead_s: float = 0.02

    def __post_init__(self) -> None:
        _check(0.02 <= self.window_s <= 2.0, "windows.window_s", "must be between 0.02 and 2 s")
        _check(0.0 <= self.lookahead_s <= 0.5, "windows.lookahead_s", "must be between 0 and 0.5 s")
        _check(0.0 <= self.voice_lead_s <= 0.5, "windows.voice_lead_s", "must be between 0 and 0.5 s")

    @property
    def voice_lead_used_s(self) -> float:
        """The lead the voice gets: `voice_lead_s`, but never more than the lookahead it makes up for."""
        return min(self.voice_lead_s, self.lookahead_s)

    @property
    def past_samples(self) -> int:
        return round(self.window_s * SAMPLE_RATE_HZ)

    @property
    def lookahead_samples(self) -> int:
        return round(self.lookahead_s * SAMPLE_RATE_HZ)

    @property
    def total_samples(self) -> int:
        return self.past_samples + self.lookahead_samples


@dataclass(frozen=True)
class PortraitConfig:
    default: str = "astronaut"
    max_pixels: int = 40_000_000
    max_bytes: int = 20_000_000
    face_width_fraction: float = 0.38
    eye_line_fraction: float = 0.45

    def __post_init__(self) -> None:
        _check(self.max_pixels > 0, "portrait.max_pixels", "must be positive")
        _check(self.max_bytes > 0, "portrait.max_bytes", "must be positive")
        _check(0.15 <= self.face_width_fraction <= 0.8, "portrait.face_width_fraction", "must be in 0.15..0.8")
        _check(0.2 <= self.eye_line_fraction <= 0.6, "portrait.eye_line_fraction", "must be in 0.2..0.6")


@dataclass(frozen=True)
class GeneratorConfig:
    name: str = "warp"
    device: str = "auto"
    seed: int = 0
    checkpoint: str = ""
    cpu_threads: int = 1

    def __post_init__(self) -> None:
        _check(self.name in ("warp", "tgan"), "generator.name", "must be 'warp' or 'tgan'")
        _check(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            "generator.device",
            "must be 'auto', 'cpu' or 'cuda[:N]'",
        )
        _check(0 <= self.cpu_threads <= 256, "generator.cpu_threads", "must be in 0..256 (0: torch's default)")


@dataclass(frozen=True)
class WarpConfig:
    attack_s: float = 0.03
    release_s: float = 0.08
    blink_mean_interval_s: float = 4.0
    blink_duration_s: float = 0.12
    head_motion: float = 1.0
    breathing: float = 1.0
    mouth_open_max: float = 1.0
    field_scale: int = 4
    mouth_shapes: str = "visemes"
    expression: float = 1.0

    def __post_init__(self) -> None:
        _check(
            self.mouth_shapes in MOUTH_SHAPES,
            "warp.mouth_shapes",
            'must be "spectral" (band-energy rules) or "visemes" (the learned model)',
        )
        _check(0.0 < self.attack_s <= 1.0, "warp.attack_s", "must be in (0, 1] s")
        _check(0.0 < self.release_s <= 2.0, "warp.release_s", "must be in (0, 2] s")
        _check(0.5 <= self.blink_mean_interval_s <= 60.0, "warp.blink_mean_interval_s", "must be in 0.5..60 s")
        _check(0.04 <= self.blink_duration_s <= 0.5, "warp.blink_duration_s", "must be in 0.04..0.5 s")
        _check(0.0 <= self.head_motion <= 3.0, "warp.head_motion", "must be in 0..3")
        _check(0.0 <= self.breathing <= 3.0, "warp.breathing", "must be in 0..3")
        _check(0.0 < self.mouth_open_max <= 2.0, "warp.mouth_open_max", "must be in (0, 2]")
        _check(self.field_scale in (1, 2, 4, 8), "warp.field_scale", "must be 1, 2, 4 or 8")
        _check(0.0 <= self.expression <= 2.0, "warp.expression", "must be in 0..2")


@dataclass(frozen=True)
class TganConfig:
    """Architecture of a new temporal-GAN model; a checkpoint carries its own copy."""

    height_px: int = 128
    width_px: int = 96
    identity_channels: int = 32
    audio_features: int = 256
    noise_features: int = 10
    hidden_features: int = 256
    visemes: bool = True  # the audio GRU also reads the viseme model's probabilities and jaw

    def __post_init__(self) -> None:
        for key, value in (("tgan.height_px", self.height_px), ("tgan.width_px", self.width_px)):
            _check(32 <= value <= 512 and value % 16 == 0, key, "must be a multiple of 16 in 32..512")
        _check(self.identity_channels >= 8, "tgan.identity_channels", "must be at least 8")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch_size: int = 8
    clip_frames: int = 16
    learning_rate: float = 2e-4
    l1_weight: float = 400.0
    lower_face_weight: float = 3.0
    frame_adv_weight: float = 1.0
    sequence_adv_weight: float = 0.2
    sync_adv_weight: float = 0.8
    checkpoint_every: int = 500
    log_every: int = 10
    mixed_precision: bool = True
    holdout_fraction: float = 0.1

    def __post_init__(self) -> None:
        _check(self.steps >= 1, "train.steps", "must be at least 1")
        _check(self.batch_size >= 1, "train.batch_size", "must be at least 1")
        _check(self.clip_frames >= 2, "train.clip_frames", "must be at least 2")
        _check(self.learning_rate > 0, "train.learning_rate", "must be positive")
        _check(self.checkpoint_every >= 1, "train.checkpoint_every", "must be at least 1")
        _check(0.0 <= self.holdout_fraction < 1.0, "train.holdout_fraction", "must be in [0, 1)")


@dataclass(frozen=True)
class RenderConfig:
    video_codec: str = "libx264"
    crf: int = 20
    audio_codec: str = "aac"
    audio_bitrate_bps: int = 128_000

    def __post_init__(self) -> None:
        _check(0 <= self.crf <= 51, "render.crf", "must be in 0..51")


MARK_CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


@dataclass(frozen=True)
class DisclosureConfig:
    """How every output says it is synthetic: the visible label, the invisible watermark, and the
    content credentials of renders (signed with the operator's certificate, else a local chain)."""

    mark: bool = True
    mark_text: str = "AI-generated"
    mark_corner: str = "bottom-right"
    watermark: bool = True
    service_id: int = 1
    content_credentials: bool = True
    signing_certificate: str = ""
    signing_key: str = ""
    credentials_dir: str = ""

    def __post_init__(self) -> None:
        _check(self.mark_corner in MARK_CORNERS, "disclosure.mark_corner", f"must be one of {', '.join(MARK_CORNERS)}")
        _check(
            0 < len(self.mark_text) <= 40 and self.mark_text.isprintable(),
            "disclosure.mark_text",
            "must be 1..40 printable characters",
        )
        _check(0 <= self.service_id <= 0xFFFF, "disclosure.service_id", "must be in 0..65535")
        _check(
            bool(self.signing_certificate) == bool(self.signing_key),
            "disclosure.signing_certificate",
            "give both signing_certificate and signing_key, or neither",
        )


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_sessions: int = 4
    token: str = ""
    allowed_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    hello_timeout_s: float = 5.0
    offer_timeout_s: float = 15.0
    max_pending_connections: int = 64
    max_pending_per_address: int = 8
    max_waiting_clients: int = 64
    max_text_message_bytes: int = 65_536
    websocket_compression: bool = False
    peer_timeout_s: float = 10.0
    max_session_s: float = 0.0
    stats_interval_s: float = 1.0
    drain_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        _check(0 <= self.port <= 65535, "server.port", "must be in 0..65535")
        _check(self.max_sessions >= 1, "server.max_sessions", "must be at least 1")
        for origin in self.allowed_origins:
            _check(
                origin == "*" or ("://" in origin and not origin.endswith("/")),
                "server.allowed_origins",
                f"{origin!r} is not an origin like 'https://call.example.org' (no path, no trailing slash) or '*'",
            )
        _check(0.1 <= self.hello_timeout_s <= 300, "server.hello_timeout_s", "must be in 0.1..300 s")
        _check(0.1 <= self.offer_timeout_s <= 3600, "server.offer_timeout_s", "must be in 0.1..3600 s")
        _check(self.max_pending_connections >= 1, "server.max_pending_connections", "must be at least 1")
        _check(
            1 <= self.max_pending_per_address <= self.max_pending_connections,
            "server.max_pending_per_address",
            "must be in 1..max_pending_connections",
        )
        _check(self.max_waiting_clients >= 1, "server.max_waiting_clients", "must be at least 1")
        _check(
            1024 <= self.max_text_message_bytes <= 16 * 1024 * 1024,
            "server.max_text_message_bytes",
            "must be in 1024..16777216",
        )
        _check(0.5 <= self.peer_timeout_s <= 600, "server.peer_timeout_s", "must be in 0.5..600 s")
        _check(self.max_session_s >= 0, "server.max_session_s", "must be 0 (unlimited) or positive")
        _check(self.stats_interval_s > 0, "server.stats_interval_s", "must be positive")


@dataclass(frozen=True)
class WebRtcConfig:
    host_addresses: tuple[str, ...] = ()
    stun_urls: tuple[str, ...] = ()
    turn_urls: tuple[str, ...] = ()
    turn_username: str = ""
    turn_password: str = ""
    video_codec: str = "vp8"
    video_bitrate_bps: int = 1_000_000
    audio_jitter_prefetch: int = 0

    def __post_init__(self) -> None:
        _check(self.video_codec in ("vp8", "h264"), "webrtc.video_codec", "must be 'vp8' or 'h264'")
        _check(0 <= self.audio_jitter_prefetch <= 8, "webrtc.audio_jitter_prefetch", "must be in 0..8")
        _check(self.video_bitrate_bps >= 100_000, "webrtc.video_bitrate_bps", "must be at least 100000")


@dataclass(frozen=True)
class CameraConfig:
    """`avatar camera`: the sound devices and the virtual camera of the local live chain."""

    input: str = ""
    output: str = ""
    device: str = ""
    backend: str = ""
    output_latency_s: float = 0.04

    def __post_init__(self) -> None:
        _check(
            self.backend in ("", "v4l2loopback", "obs", "unitycapture"),
            "camera.backend",
            "must be '' (the platform's), 'v4l2loopback', 'obs' or 'unitycapture'",
        )
        _check(0.005 <= self.output_latency_s <= 0.5, "camera.output_latency_s", "must be in 0.005..0.5 s")


@dataclass(frozen=True)
class TtsConfig:
    """Speech items of a live session (`say`, `play`): the synthesiser, its limits, the queue.

    `command` empty: espeak-ng. Otherwise the argv of any program that reads the text on stdin and
    writes a WAV (or any file av decodes) to the path `{out}`; `{voice}` is replaced by the voice."""

    command: tuple[str, ...] = ()
    voice: str = "en-us"
    voices: tuple[str, ...] = ()  # the voices a `say` may name; () = espeak-ng's list (any, with a command)
    timeout_s: float = 10.0
    max_text_chars: int = 1000
    max_clip_s: float = 120.0
    max_queued: int = 16

    def __post_init__(self) -> None:
        _check(not self.command or any("{out}" in arg for arg in self.command), "tts.command",
               "must contain '{out}', the path of the WAV file the command writes")  # fmt: skip
        _check(0.5 <= self.timeout_s <= 300, "tts.timeout_s", "must be in 0.5..300 s")
        _check(1 <= self.max_text_chars <= 100_000, "tts.max_text_chars", "must be in 1..100000")
        _check(0.5 <= self.max_clip_s <= 3600, "tts.max_clip_s", "must be in 0.5..3600 s")
        _check(1 <= self.max_queued <= 1000, "tts.max_queued", "must be in 1..1000")


@dataclass(frozen=True)
class AppConfig:
    video: VideoConfig = field(default_factory=VideoConfig)
    vad: VadConfig = field(default_factory=VadConfig)
    windows: WindowConfig = field(default_factory=WindowConfig)
    portrait: PortraitConfig = field(default_factory=PortraitConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    warp: WarpConfig = field(default_factory=WarpConfig)
    tgan: TganConfig = field(default_factory=TganConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    disclosure: DisclosureConfig = field(default_factory=DisclosureConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    webrtc: WebRtcConfig = field(default_factory=WebRtcConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    tts: TtsConfig = field(default_factory=TtsConfig)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check one TOML value against a field's annotation; ints are accepted where floats are."""
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    origin = typing.get_origin(annotation)
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
        return tuple(value)
    raise ConfigError(f"{key}: unsupported field type {annotation!r}")


def _updated_section(current: Any, name: str, values: Any) -> Any:
    """`current` (one section's dataclass) with the keys in `values` replaced, checked and validated."""
    if not isinstance(values, dict):
        raise ConfigError(f"[{name}] must be a table")
    hints = typing.get_type_hints(type(current))
    known = {f.name for f in dataclasses.fields(current)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"[{name}] has unknown key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    # replace() runs __post_init__ again, so the merged section is validated as a whole.
    return dataclasses.replace(
        current, **{key: _coerce(value, hints[key], f"{name}.{key}") for key, value in values.items()}
    )


def config_from_dict(data: dict[str, Any], base: AppConfig | None = None) -> AppConfig:
    """Build an AppConfig from a TOML-like dict; sections and keys not given keep `base`'s values."""
    base = base or AppConfig()
    sections = {f.name for f in dataclasses.fields(AppConfig)}
    unknown = sorted(set(data) - sections)
    if unknown:
        raise ConfigError(f"unknown section(s): {', '.join(unknown)}; known: {', '.join(sorted(sections))}")
    changes = {name: _updated_section(getattr(base, name), name, values) for name, values in data.items()}
    return dataclasses.replace(base, **changes)


def load_config(path: Path | str | None = None) -> AppConfig:
    """Load config.toml (the repository's own when `path` is None and it exists; defaults otherwise)."""
    if path is None:
        if not DEFAULT_CONFIG_PATH.is_file():
            return AppConfig()
        path = DEFAULT_CONFIG_PATH
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return config_from_dict(data)


def with_overrides(config: AppConfig, **sections: dict[str, Any]) -> AppConfig:
    """Return `config` with some keys replaced, e.g. with_overrides(c, server={"port": 0})."""
    return config_from_dict({name: values for name, values in sections.items() if values}, base=config)
