"""The signaling protocol (DESIGN.md section 3): typed messages, parsing with validation, dumping.

Text frames are JSON objects with a ``type``; one binary frame is one uploaded portrait image.
`parse_client_message` turns one frame from a client into one typed message or raises
`ProtocolError` with the code to answer; `dump` turns a server message into the text to send.

Unknown keys in a client message are ignored (room for later fields); missing or mistyped
required keys, unknown types and oversized values are errors.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from avatar.errors import AvatarError

# Error codes a client can get; each error message is meant for a person.
BAD_MESSAGE: Final = "bad_message"
UNAUTHORIZED: Final = "unauthorized"
RATE_LIMITED: Final = "rate_limited"
BUSY: Final = "busy"
TIMEOUT: Final = "timeout"
BAD_PORTRAIT: Final = "bad_portrait"
BAD_SDP: Final = "bad_sdp"
BAD_SPEECH: Final = "bad_speech"
INTERNAL: Final = "internal"
ERROR_CODES: Final = frozenset(
    {BAD_MESSAGE, UNAUTHORIZED, RATE_LIMITED, BUSY, TIMEOUT, BAD_PORTRAIT, BAD_SDP, BAD_SPEECH, INTERNAL}
)

MAX_TOKEN_CHARS: Final = 4096
MAX_NAME_CHARS: Final = 200
MAX_SDP_CHARS: Final = 256 * 1024  # a browser's complete offer is a few kB
MAX_ID_CHARS: Final = 64
MAX_SAY_CHARS: Final = 100_000  # the server's own limit ([tts] max_text_chars) is checked later


def base64_chars(data_bytes: int) -> int:
    """The length of `data_bytes` bytes in base64 (the `play` message's audio)."""
    return -(-data_bytes // 3) * 4


class ProtocolError(AvatarError):
    """A client broke the protocol (or sent something unusable); `code` is the error code to answer."""

    def __init__(self, code: str, message: str) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message


# --- client to server --------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    token: str | None = None
    type: str = field(default="hello", init=False)


@dataclass(frozen=True)
class PortraitRequest:
    """Choose a built-in portrait by name."""

    name: str
    type: str = field(default="portrait", init=False)


@dataclass(frozen=True)
class PortraitUpload:
    """One binary frame: the bytes of a PNG, JPEG or WebP image (decoded and checked later)."""

    data: bytes = field(repr=False)
    type: str = field(default="portrait_upload", init=False)


@dataclass(frozen=True)
class Offer:
    sdp: str = field(repr=False)
    type: str = field(default="offer", init=False)


@dataclass(frozen=True)
class Bye:
    type: str = field(default="bye", init=False)


@dataclass(frozen=True)
class Say:
    """Speak `text` (with `voice`, or the server's); `id` names it in the speaking/spoken events."""

    text: str
    voice: str | None = None
    id: str | None = None
    type: str = field(default="say", init=False)


@dataclass(frozen=True)
class Play:
    """Speak an audio clip: the bytes of a file av decodes (base64 on the wire)."""

    audio: bytes = field(repr=False)
    id: str | None = None
    type: str = field(default="play", init=False)


@dataclass(frozen=True)
class Clear:
    """Stop the speech that plays and drop the queued items (barge-in)."""

    type: str = field(default="clear", init=False)


ClientMessage = Hello | PortraitRequest | PortraitUpload | Offer | Bye | Say | Play | Clear


# --- server to client --------------------------------------------------------------------------


@dataclass(frozen=True)
class Disclosure:
    """What the server's frames carry to say they are synthetic (`[disclosure]`)."""

    mark: bool  # the visible label drawn into every frame
    watermark: bool  # the invisible watermark `avatar verify` finds


@dataclass(frozen=True)
class Welcome:
    session: str
    fps: int
    width: int
    height: int
    portraits: tuple[str, ...]
    disclosure: Disclosure | None = None  # the server always sends it; None leaves the key out
    type: str = field(default="welcome", init=False)


@dataclass(frozen=True)
class PortraitReply:
    width: int
    height: int
    face: tuple[int, int, int, int]  # (x, y, w, h) in pixels of the output frame
    name: str = ""
    ok: bool = True
    type: str = field(default="portrait", init=False)


@dataclass(frozen=True)
class Answer:
    sdp: str = field(repr=False)
    type: str = field(default="answer", init=False)


@dataclass(frozen=True)
class Stats:
    fps: float
    frames: int
    speaking: bool
    latency_ms: float | None = None
    extra: Mapping[str, int | float | bool] = field(default_factory=dict)  # more counters, sent as they are
    type: str = field(default="stats", init=False)


@dataclass(frozen=True)
class Speaking:
    """A speech item starts to be heard; `text` is a `say`'s text (the caption)."""

    id: str
    text: str | None = None
    type: str = field(default="speaking", init=False)


@dataclass(frozen=True)
class Spoken:
    """A speech item has been heard to its end, or `interrupted` (cleared, or never started)."""

    id: str
    interrupted: bool = False
    type: str = field(default="spoken", init=False)


@dataclass(frozen=True)
class Error:
    code: str
    message: str
    id: str | None = None  # the speech item a bad_speech is about
    type: str = field(default="error", init=False)

    def __post_init__(self) -> None:
        if self.code not in ERROR_CODES:
            raise ValueError(f"unknown error code {self.code!r}")


ServerMessage = Welcome | PortraitReply | Answer | Stats | Speaking | Spoken | Error


# --- parsing -------------------------------------------------------------------------------------


def _bad(message: str) -> ProtocolError:
    return ProtocolError(BAD_MESSAGE, message)


def _string(obj: dict[str, Any], key: str, max_chars: int, *, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise _bad(f"a {obj['type']!r} message needs a {key!r} field")
        return None
    if not isinstance(value, str):
        raise _bad(f"the {key!r} field of a {obj['type']!r} message must be a string")
    if len(value) > max_chars:
        raise _bad(f"the {key!r} field is too long ({len(value)} characters, at most {max_chars})")
    return value


def parse_client_message(
    frame: str | bytes,
    *,
    max_text_bytes: int | None = None,
    max_binary_bytes: int | None = None,
    max_clip_bytes: int | None = None,
) -> ClientMessage:
    """Parse one WebSocket frame from a client; raise ProtocolError("bad_message", ...) if unusable.

    A text frame (str) is a JSON object, at most `max_text_bytes` in UTF-8, except a `play`, whose
    audio may be `max_clip_bytes` (before base64); a binary frame (bytes) is a portrait upload of
    at most `max_binary_bytes`.
    """
    if isinstance(frame, bytes | bytearray | memoryview):
        data = bytes(frame)
        if max_binary_bytes is not None and len(data) > max_binary_bytes:
            raise _bad(f"the upload is too large ({len(data)} bytes, at most {max_binary_bytes})")
        if not data:
            raise ProtocolError(BAD_PORTRAIT, "the uploaded image is empty")
        return PortraitUpload(data)
    if not isinstance(frame, str):
        raise _bad("a message must be a text or a binary frame")
    limit = max_text_bytes
    if limit is not None and max_clip_bytes is not None:
        limit = max(limit, base64_chars(max_clip_bytes) + 1024)  # only a `play` may be this large
    if limit is not None and (
        len(frame) > limit  # cheap check first: characters <= bytes
        or len(frame.encode("utf-8", "surrogatepass")) > limit
    ):
        raise _bad(f"the message is too large (more than {limit} bytes)")
    try:
        obj = json.loads(frame)
    except (ValueError, RecursionError) as exc:
        raise _bad(f"the message is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _bad("a message must be a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise _bad("a message needs a string 'type' field")
    if max_text_bytes is not None and kind != "play" and len(frame) > max_text_bytes:
        raise _bad(f"the message is too large (more than {max_text_bytes} bytes)")
    if kind == "hello":
        return Hello(token=_string(obj, "token", MAX_TOKEN_CHARS, required=False))
    if kind == "portrait":
        name = _string(obj, "name", MAX_NAME_CHARS)
        assert name is not None
        if not name.strip():
            raise ProtocolError(BAD_PORTRAIT, "the portrait name is empty")
        return PortraitRequest(name=name)
    if kind == "offer":
        sdp = _string(obj, "sdp", MAX_SDP_CHARS)
        assert sdp is not None
        if not sdp.strip():
            raise ProtocolError(BAD_SDP, "the offer's SDP is empty")
        return Offer(sdp=sdp)
    if kind == "bye":
        return Bye()
    if kind == "say":
        text = _string(obj, "text", MAX_SAY_CHARS)
        assert text is not None
        return Say(text=text, voice=_string(obj, "voice", MAX_NAME_CHARS, required=False), id=_item_id(obj))
    if kind == "play":
        return Play(audio=_audio(obj, max_clip_bytes), id=_item_id(obj))
    if kind == "clear":
        return Clear()
    raise _bad(f"unknown message type {kind[:40]!r}; expected hello, portrait, offer, say, play, clear or bye")


def _item_id(obj: dict[str, Any]) -> str | None:
    item_id = _string(obj, "id", MAX_ID_CHARS, required=False)
    if item_id is not None and not item_id.strip():
        raise _bad("the 'id' field is empty")
    return item_id


def _audio(obj: dict[str, Any], max_clip_bytes: int | None) -> bytes:
    encoded = obj.get("audio")
    if not isinstance(encoded, str):
        raise _bad("a 'play' message needs an 'audio' field: the base64 of an audio file")
    if max_clip_bytes is not None and len(encoded) > base64_chars(max_clip_bytes):
        raise ProtocolError(BAD_SPEECH, f"the clip is larger than {max_clip_bytes} bytes")  # that item only
    try:
        data = base64.b64decode(encoded, validate=True)
    except (ValueError, binascii.Error):
        raise ProtocolError(BAD_SPEECH, "the 'audio' field is not base64") from None
    if not data:
        raise ProtocolError(BAD_SPEECH, "the audio clip is empty")
    return data


# --- dumping -------------------------------------------------------------------------------------


def to_dict(message: ServerMessage | ClientMessage) -> dict[str, Any]:
    """The JSON object of a message, `type` first (a PortraitUpload has none: it is a binary frame)."""
    if isinstance(message, PortraitUpload):
        raise TypeError("a portrait upload is sent as a binary frame, not as JSON")
    out: dict[str, Any] = {"type": message.type}
    if isinstance(message, Welcome):
        out.update(
            session=message.session,
            fps=message.fps,
            width=message.width,
            height=message.height,
            portraits=list(message.portraits),
        )
        if message.disclosure is not None:
            out["disclosure"] = {"mark": message.disclosure.mark, "watermark": message.disclosure.watermark}
    elif isinstance(message, PortraitReply):
        out.update(ok=message.ok, width=message.width, height=message.height, face=list(message.face))
        if message.name:
            out["name"] = message.name
    elif isinstance(message, Answer | Offer):
        out["sdp"] = message.sdp
    elif isinstance(message, Stats):
        out.update(fps=round(float(message.fps), 2), frames=int(message.frames), speaking=bool(message.speaking))
        if message.latency_ms is not None:
            out["latency_ms"] = round(float(message.latency_ms), 1)
        for key, value in message.extra.items():
            if key not in out and isinstance(value, int | float | bool):
                out[key] = value
    elif isinstance(message, Speaking):
        out["id"] = message.id
        if message.text is not None:
            out["text"] = message.text
    elif isinstance(message, Spoken):
        out.update(id=message.id, interrupted=message.interrupted)
    elif isinstance(message, Error):
        out.update(code=message.code, message=message.message)
        if message.id is not None:
            out["id"] = message.id
    elif isinstance(message, Say):
        out["text"] = message.text
        if message.voice is not None:
            out["voice"] = message.voice
        if message.id is not None:
            out["id"] = message.id
    elif isinstance(message, Play):
        out["audio"] = base64.b64encode(message.audio).decode("ascii")
        if message.id is not None:
            out["id"] = message.id
    elif isinstance(message, Hello):
        if message.token is not None:
            out["token"] = message.token
    elif isinstance(message, PortraitRequest):
        out["name"] = message.name
    return out


def dump(message: ServerMessage | ClientMessage) -> str:
    """The text frame of a message (clients' messages too, for tests and tools)."""
    return json.dumps(to_dict(message), separators=(",", ":"))
