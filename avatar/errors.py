"""Errors the library raises on purpose; each carries a message meant for a person."""

from __future__ import annotations


class AvatarError(Exception):
    """Base of every error this library raises on purpose."""


class ConfigError(AvatarError):
    """A setting in config.toml or a flag is missing, unknown or out of range."""


class AudioError(AvatarError):
    """Audio that cannot be decoded or does not fit the chain."""


class SpeechError(AvatarError):
    """A speech item that cannot be spoken: empty or overlong text, an unknown voice, a clip that
    does not decode, a speech synthesiser that fails or runs past its time limit, a full queue."""


class PortraitError(AvatarError):
    """An image that cannot be used as a portrait (not an image, too large, no face)."""


class GeneratorError(AvatarError):
    """A generator that cannot be built or loaded (unknown name, bad checkpoint)."""


class CheckpointError(GeneratorError):
    """A checkpoint file that is missing, unsafe, or does not match the model."""


class DeviceError(AvatarError):
    """A sound or compute device that is asked for but not present."""


class VirtualCameraError(DeviceError):
    """No virtual camera to send frames to: pyvirtualcam, or the driver it needs (v4l2loopback on
    Linux, OBS Virtual Camera on Windows and macOS), is missing; the message says what to install."""


class CredentialsError(AvatarError):
    """Content credentials (C2PA) that cannot be made or read: a signing certificate or key that is
    missing or invalid, a local chain that cannot be created, or a file no reader can parse."""
