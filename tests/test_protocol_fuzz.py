"""Property-based fuzzing of the /ws protocol (DESIGN.md section 3) against a real running server.

One `SignalingServer` (256x256 at 25 fps, ICE on 127.0.0.1, a token, hello_timeout_s 2) runs with a
real healthy aiortc session on an event loop in a background thread; hypothesis drives examples from
the test's own thread through `asyncio.run_coroutine_threadsafe`.

Each example (all from 127.0.0.1, the fuzzing address) may first open a few silent connections
(pending: past `max_pending_per_address` the oldest is evicted) and a few "knocks" (hellos with any
token, one connection each), then one connection that sends the frames hypothesis drew: in lock-step
(each after the reply to the one before) or pipelined (all at once, the replies read in order). The
replies are checked against the protocol:

1. Every reply is a JSON text object whose `type` is welcome/portrait/answer/stats/error (or the
   speaking/spoken events of speech items); every error has a known code, never `internal`, and a
   non-empty message for a person; every frame the server cannot use gets an error reply (never
   silence), and an error other than bad_portrait and bad_speech is followed by the server closing
   the socket. A say, play or clear the parser takes has no reply of its own: its events, or a
   bad_speech naming its id, come when they come, and are checked for their form only. The exact
   reply is predicted by `expected`, a restatement of the protocol written from DESIGN.md section
   3 and the documented limits of signaling/messages.py.
   Two WebSocket-level refusals close without a JSON error, as RFC 6455 and the server's frame cap
   have it: a text frame that is not UTF-8 (1007) and a frame over the cap aiohttp enforces before
   buffering (1009).
2. After each example a fresh client from 127.0.0.2 (never throttled: it only sends the right token)
   says hello and gets welcome; the server is back to just the healthy client and its session.
3. The healthy session (made with a real offer before the fuzzing) keeps receiving video frames
   throughout (sampled every second, checked per window after the run), and at the end the server
   holds exactly that one session.

Wrong tokens from 127.0.0.1 are throttled by the server (`rate_limited` after three failures, for a
doubling back-off); each example draws whether the test forgives its address first, so both the
throttled and the unthrottled hello paths are exercised and a `rate_limited` is only accepted where
the address may really be locked out.

The tests after the fuzz test reproduce the server bugs it found (now fixed), each minimal.

Network safety: offers only ever carry the 127.0.0.1 candidates of a real aiortc offer made here
(`_safe_sdp` rejects any other text mentioning a candidate), so the server's ICE checks stay on
loopback; every connection goes to the server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import gc
import io
import json
import os
import struct
import threading
import time
import warnings
import zlib
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from avatar.config import AppConfig, with_overrides
from signaling import messages as m
from signaling.server import SignalingServer
from tests.test_server import server_config
from tests.ws_client import Client, ws_url

pytestmark = pytest.mark.slow

TOKEN = "letmein"
MAX_UPLOAD = 1_000_000
TEXT_LIMIT = 65_536  # server.max_text_message_bytes (the default)
PLAY_LIMIT = m.base64_chars(MAX_UPLOAD) + 1024  # a `play` text frame: the base64 of a clip of MAX_UPLOAD
FRAME_CAP = max(TEXT_LIMIT, m.base64_chars(MAX_UPLOAD)) + 2048  # what aiohttp refuses before buffering (server.py)
FUZZ_ADDRESS = "127.0.0.1"
CHECK_ADDRESS = "127.0.0.2"
REPLY_TIMEOUT_S = 5.0  # no reply within this: a hang or a silent drop (the slowest reply takes < 1 s)
CLOSE_TIMEOUT_S = 5.0  # a closing error must be followed by the close within this
EXAMPLES = int(os.environ.get("PROTOCOL_FUZZ_EXAMPLES", "80"))  # more for a longer hunt
SERVER_TYPES = frozenset({"welcome", "portrait", "answer", "stats", "error", "speaking", "spoken"})

T = TypeVar("T")


def fuzz_config() -> AppConfig:
    """tests/test_server.py's server_config(), with this file's token and a short hello timeout."""
    return with_overrides(
        server_config(),
        server={
            "token": TOKEN,
            "hello_timeout_s": 2.0,
            "offer_timeout_s": 30.0,  # longer than any example: no offer timeout fires mid-example
            "max_text_message_bytes": TEXT_LIMIT,
        },
        portrait={"max_bytes": MAX_UPLOAD},
    )


# --------------------------------------------------------------------------------------------------
# Frames and what the protocol says about each


@dataclass(frozen=True)
class Frame:
    """One client frame: text (str), binary (bytes), or bytes sent as a text frame (`not_utf8`)."""

    label: str
    data: str | bytes = field(repr=False)
    not_utf8: bool = False

    def __repr__(self) -> str:
        data = self.data
        kind = "bytes" if isinstance(data, bytes) else "chars"
        shown = repr(data) if len(data) <= 200 else f"{data[:100]!r} ... {data[-40:]!r} ({len(data)} {kind})"
        return f"Frame({self.label}{', as text' if self.not_utf8 else ''}: {shown})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # how hypothesis prints a failing example
        printer.text(repr(self))


@dataclass(frozen=True)
class Kind:
    """What a frame is to the protocol: a usable message, a parse-level error, or a WebSocket refusal."""

    what: str  # hello | portrait | upload | offer | bye | speech | error | close
    value: Any = None  # the token, name or SDP; the error code; the close code


def classify(frame: Frame) -> Kind:
    """The protocol's reading of one frame, from DESIGN.md section 3 and the limits of messages.py."""
    data = frame.data
    if frame.not_utf8:
        assert isinstance(data, bytes)
        return Kind("close", 1009 if len(data) > FRAME_CAP else 1007)
    if isinstance(data, bytes):
        if len(data) > FRAME_CAP:
            return Kind("close", 1009)
        if len(data) > MAX_UPLOAD:
            return Kind("error", m.BAD_MESSAGE)
        if not data:
            return Kind("error", m.BAD_PORTRAIT)
        return Kind("upload")
    size = len(data.encode("utf-8"))
    if size > FRAME_CAP:
        return Kind("close", 1009)
    if size > PLAY_LIMIT:
        return Kind("error", m.BAD_MESSAGE)
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return Kind("error", m.BAD_MESSAGE)
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        return Kind("error", m.BAD_MESSAGE)
    if size > TEXT_LIMIT and obj["type"] != "play":  # only a play may be larger
        return Kind("error", m.BAD_MESSAGE)

    def string(key: str, limit: int) -> str | None:
        value = obj.get(key)
        if value is None or (isinstance(value, str) and len(value) <= limit):
            return value
        raise ValueError

    try:
        if obj["type"] == "hello":
            return Kind("hello", string("token", m.MAX_TOKEN_CHARS))
        if obj["type"] == "portrait":
            name = string("name", m.MAX_NAME_CHARS)
            if name is None:
                return Kind("error", m.BAD_MESSAGE)
            return Kind("portrait", name) if name.strip() else Kind("error", m.BAD_PORTRAIT)
        if obj["type"] == "offer":
            sdp = string("sdp", m.MAX_SDP_CHARS)
            if sdp is None:
                return Kind("error", m.BAD_MESSAGE)
            return Kind("offer", sdp) if sdp.strip() else Kind("error", m.BAD_SDP)
    except ValueError:
        return Kind("error", m.BAD_MESSAGE)
    if obj["type"] == "bye":
        return Kind("bye")
    try:
        return _speech_kind(obj, string)
    except ValueError:
        return Kind("error", m.BAD_MESSAGE)


def _speech_kind(obj: dict[str, Any], string: Any) -> Kind:
    """say / play / clear: parse-level errors, or a speech item (its outcome comes later, if ever:
    speaking/spoken events, or a bad_speech naming the item's id)."""

    def item_id() -> None:
        value = string("id", m.MAX_ID_CHARS)
        if value is not None and not value.strip():
            raise ValueError

    if obj["type"] == "say":
        if string("text", m.MAX_SAY_CHARS) is None:
            raise ValueError
        string("voice", m.MAX_NAME_CHARS)
        item_id()
        return Kind("speech")
    if obj["type"] == "play":
        audio = obj.get("audio")
        if not isinstance(audio, str):
            raise ValueError
        if len(audio) > m.base64_chars(MAX_UPLOAD):
            return Kind("error", m.BAD_SPEECH)
        try:
            decoded = base64.b64decode(audio, validate=True)
        except (ValueError, binascii.Error):
            return Kind("error", m.BAD_SPEECH)
        if not decoded:
            return Kind("error", m.BAD_SPEECH)
        item_id()
        return Kind("speech")
    if obj["type"] == "clear":
        return Kind("speech")
    return Kind("error", m.BAD_MESSAGE)


PRE, WELCOMED, ACTIVE = "pre-hello", "welcomed", "active"


def expected(kind: Kind, state: str, *, may_be_throttled: bool, valid_offer: str, portraits: list[str]) -> set[str]:
    """The outcomes the protocol allows for one frame: "welcome", "portrait", "answer", "error:CODE"
    or "close:CODE" (closed without a reply)."""
    if kind.what == "close":
        return {f"close:{kind.value}"}
    if kind.what == "error":
        return {f"error:{kind.value}"}
    if state == PRE:
        if kind.what != "hello":
            return {"error:bad_message"}  # the first message must be a hello
        allowed = {"welcome"} if kind.value == TOKEN else {"error:unauthorized"}
        return allowed | ({"error:rate_limited"} if may_be_throttled else set())
    if kind.what == "hello":
        return {"error:bad_message"}  # hello was already received
    if kind.what == "bye":
        return {"close:1000"}
    if kind.what == "speech":
        return {"none"}  # no reply of its own: its events (or a bad_speech with its id) come later
    if kind.what == "portrait":
        if state == ACTIVE:
            return {"error:bad_portrait"}  # only before Start
        return {"portrait"} if kind.value in portraits else {"error:bad_portrait"}
    if kind.what == "upload":
        return {"error:bad_portrait"} if state == ACTIVE else {"portrait", "error:bad_portrait"}
    if kind.what == "offer":
        if state == ACTIVE:
            return {"error:bad_message"}  # only one offer per session
        return {"answer"} if kind.value == valid_offer else {"answer", "error:bad_sdp"}
    raise AssertionError(kind)


# --------------------------------------------------------------------------------------------------
# Strategies


ODD_STRINGS = [
    "",
    " ",
    "\t\r\n",
    "\x00",
    "\ud800",
    "\udfff",
    "a\ud800b",
    "\udc80\ud800",
    "\ud83d\ude00",  # a surrogate pair as two code points
    "\u202e",
    "\ufeff",
    "\u2028",
    "\U0001f600",
    "null",
    "NaN",
    '"',
    "\\",
    "{}",
    "%s%n%x",
    "../../../etc/passwd",
    "astronaut",
    " astronaut",
    "ASTRONAUT",
    "astronaut\x00",
    "astronaut\ud800",
    TOKEN,
    TOKEN + " ",
    " " + TOKEN,
    TOKEN.upper(),
    TOKEN + "\x00",
    TOKEN + "\ud800",
    TOKEN[:-1],
    "A" * 200,
    "A" * 201,
    "A" * 4096,
    "A" * 4097,
    "\u00e9" * 4096,  # 4096 characters, 8192 bytes
    "\ud800" * 300,
]
KNOWN_TYPES = ["hello", "portrait", "offer", "bye", "welcome", "answer", "stats", "error", "say", "play", "clear"]

characters = st.characters() | st.characters(categories=["Cs"])  # lone surrogates too


def _pick(values: list[T]) -> st.SearchStrategy[T]:
    """One of `values`, drawn by index: hypothesis then never writes the (long) values into reprs."""

    def value_at(index: int) -> T:
        return values[index]

    return st.sampled_from(range(len(values))).map(value_at)


def _named(name: str, strategy: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """`strategy` under a short name (hypothesis would otherwise repeat its whole repr at every use)."""

    def draw_it(draw: st.DrawFn) -> T:
        return draw(strategy)

    draw_it.__name__ = draw_it.__qualname__ = name
    return st.composite(draw_it)()


odd_text = _named("odd_text", st.one_of(_pick(ODD_STRINGS), st.text(characters, max_size=30)))
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN and infinities too: Python's json writes and reads them
    odd_text,
)
json_values = _named(
    "json_values",
    st.recursive(
        json_scalars,
        lambda children: st.lists(children, max_size=3) | st.dictionaries(odd_text, children, max_size=3),
        max_leaves=8,
    ),
)
extras = _named("extras", st.dictionaries(odd_text, json_values, max_size=3))


def _message(required: dict[str, st.SearchStrategy[Any]], optional: dict[str, st.SearchStrategy[Any]]) -> Any:
    core = st.fixed_dictionaries(required, optional=optional)
    return st.builds(lambda extra, fields: {**extra, **fields}, extras, core)


def _json_text(obj: Any, ascii_only: bool) -> str:
    text = json.dumps(obj, ensure_ascii=ascii_only)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates can only travel escaped
        text = json.dumps(obj)
    return text


def _png(width: int, height: int, body: bytes = b"") -> bytes:
    """A PNG signature, an IHDR with any dimensions (CRC right) and `body` (chunks or garbage)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + body + chunk(b"IEND", b"")


def _image(mode: str, size: tuple[int, int], fmt: str, **options: Any) -> bytes:
    rng = np.random.default_rng(len(mode) + size[0])
    base = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    image = base.convert(mode) if mode != "RGB" else base
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def small_images() -> list[bytes]:
    """Tiny real images of many modes and formats (none has a face)."""
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate
    return [
        _image("RGB", (1, 1), "PNG"),
        _image("L", (1, 300), "PNG"),
        _image("1", (9, 7), "PNG"),
        _image("LA", (8, 8), "PNG"),
        _image("P", (8, 8), "PNG", transparency=0),
        _image("RGBA", (300, 2), "PNG"),
        _image("I;16", (8, 8), "PNG"),
        _image("RGB", (16, 16), "JPEG", quality=50),
        _image("L", (16, 16), "JPEG"),
        _image("CMYK", (16, 16), "JPEG"),
        _image("RGB", (16, 16), "JPEG", exif=exif.tobytes()),
        _image("RGB", (16, 16), "JPEG", progressive=True),
        _image("RGB", (8, 8), "WEBP"),
        _image("RGBA", (8, 8), "WEBP", lossless=True),
        _image("RGB", (8, 8), "GIF"),
        _image("RGB", (8, 8), "BMP"),
        _image("RGB", (8, 8), "TIFF"),
    ]


MAGICS = [
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    b"\xff\xd8\xff\xe1\xff\xffExif\x00\x00",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"RIFF\xff\xff\xff\xffWEBPVP8L",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"\x00\x00\x00\x0cjP  ",
]
SDP_LINES = [
    "v=0",
    "o=- 0 0 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0 1",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111",
    "m=video 9 UDP/TLS/RTP/SAVPF 96",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    "c=IN IP4 127.0.0.1",
    "a=mid:0",
    "a=mid:1",
    "a=sendrecv",
    "a=sendonly",
    "a=recvonly",
    "a=inactive",
    "a=rtcp-mux",
    "a=rtpmap:111 opus/48000/2",
    "a=rtpmap:96 VP8/90000",
    "a=rtpmap:x",
    "a=ice-ufrag:abcd",
    "a=ice-pwd:abcdefghijklmnopqrstuvwx",
    "a=fingerprint:sha-256 00:11:22",
    "a=fingerprint:sha-256",
    "a=setup:actpass",
    "a=setup:bogus",
    "a=ssrc:1 cname:x",
    "a=ssrc-group:FID 1",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
    "m=audio",
    "m=",
    "a=",
    "=",
]


def _safe_sdp(sdp: str, valid_offer: str) -> bool:
    """Only the real offer's own 127.0.0.1 candidates may appear: no text may point ICE elsewhere."""
    rest = sdp
    for line in valid_offer.splitlines():
        if "candidate" in line:
            rest = rest.replace(line, "")
    return "candidate" not in rest.lower() and ".local" not in rest.lower()


def frames_strategy(valid_offer: str, face_jpeg: bytes) -> st.SearchStrategy[Frame]:
    """Every kind of client frame; `valid_offer` is a real aiortc offer, `face_jpeg` a real face."""
    offer_lines = valid_offer.split("\r\n")

    @st.composite
    def mutated_offer(draw: st.DrawFn) -> str:
        lines = list(offer_lines)
        for _ in range(draw(st.integers(1, 3))):
            op = draw(st.sampled_from(["truncate", "delete", "duplicate", "replace", "insert", "swap", "newlines"]))
            i = draw(st.integers(0, len(lines) - 1))
            if op == "truncate":
                text = "\r\n".join(lines)
                lines = text[: draw(st.integers(0, len(text)))].split("\r\n")
            elif op == "delete":
                del lines[i]
            elif op == "duplicate":
                lines.insert(i, lines[i])
            elif op == "replace":
                lines[i] = draw(st.sampled_from(SDP_LINES) | odd_text)
            elif op == "insert":
                lines.insert(i, draw(st.sampled_from(SDP_LINES) | odd_text))
            elif op == "swap":
                old, new = draw(
                    st.sampled_from(
                        [
                            ("a=recvonly", "a=sendrecv"),
                            ("a=sendrecv", "a=recvonly"),
                            ("a=sendrecv", "a=inactive"),
                            ("m=audio", "m=video"),
                            ("m=video", "m=audio"),
                            ("a=fingerprint:", "a=fingerprint:x"),
                            ("a=ice-ufrag:", "a=ice-ufrag-"),
                            ("UDP/TLS/RTP/SAVPF", "RTP/AVP"),
                            ("opus/48000/2", "opus/0/0"),
                            ("VP8/90000", "VP8/-1"),
                        ]
                    )
                )
                lines = [line.replace(old, new) for line in lines]
            else:
                lines = "\n".join(lines).split("\r\n") if draw(st.booleans()) else [" ".join(lines)]
            if not lines:
                lines = [""]
        return "\r\n".join(lines)

    garbage_sdp = st.builds(
        lambda parts, sep: sep.join(parts),
        st.lists(st.sampled_from(SDP_LINES) | odd_text, max_size=12),
        st.sampled_from(["\r\n", "\n", "\r", ""]),
    )
    sdps = _named(
        "sdps",
        st.one_of(
            _pick([valid_offer]),
            mutated_offer(),
            mutated_offer(),
            garbage_sdp,
            odd_text,
            json_values,
        ).filter(lambda s: not isinstance(s, str) or _safe_sdp(s, valid_offer)),
    )
    tokens = _named("tokens", st.one_of(st.just(TOKEN), st.just(TOKEN), odd_text, json_values))
    names = _named("names", st.one_of(st.just("astronaut"), odd_text, json_values))
    types = _named("types", st.one_of(st.sampled_from(KNOWN_TYPES), odd_text, json_values))
    messages = st.one_of(
        _message({"type": st.just("hello")}, {"token": tokens}),
        _message({"type": st.just("portrait")}, {"name": names}),
        _message({"type": st.just("offer")}, {"sdp": sdps}),
        _message({"type": st.just("bye")}, {}),
        _message({}, {"type": types, "token": tokens, "name": names, "sdp": sdps}),
        json_values,
    )
    json_frames = st.builds(lambda obj, ascii_only: Frame("json", _json_text(obj, ascii_only)), messages, st.booleans())

    bye_prefix = '{"type":"bye","pad":"'
    raw = _pick(
        [
            "",
            " ",
            "{",
            "{not json",
            "[]",
            "null",
            "42",
            '"hello"',
            '{"type":',
            '{"type":"hello"',
            '{"type":"hello",}',
            "{'type':'hello'}",
            '{"type":"hello"}{"type":"hello"}',
            "\ufeff" + json.dumps({"type": "hello", "token": TOKEN}),
            json.dumps({"type": "hello", "token": TOKEN}) + " \n",
            '{"type":"hello","type":"bye"}',
            '{"type":"bye","type":"hello","token":"' + TOKEN + '"}',
            '{"type":"hello","token":"\\ud800"}',
            '{"type":"portrait","name":"\\udfff"}',
            '{"type":"offer","sdp":"\\u0000"}',
            '{"type":"offer","sdp":1e400}',
            '{"type":"hello","token":' + "1" * 5000 + "}",
            "[" * 100_000,
            '{"a":' * 30_000,
            bye_prefix + "x" * (TEXT_LIMIT - len(bye_prefix) - 2) + '"}',  # exactly at the limit: a bye
            bye_prefix + "x" * (TEXT_LIMIT - len(bye_prefix) - 1) + '"}',  # one byte over
            bye_prefix + "\u00e9" * (TEXT_LIMIT // 2) + '"}',  # fewer characters than the limit, more bytes
            json.dumps({"type": "offer", "sdp": "x" * 70_000}),
            "x" * (FRAME_CAP + 1000),
        ]
    )
    text_frames = st.one_of(
        raw.map(lambda text: Frame("text", text)),
        st.text(st.characters(exclude_categories=["Cs"]), max_size=200).map(lambda text: Frame("text", text)),
    )
    not_utf8 = st.one_of(
        _pick(
            [
                b"\xed\xa0\x80",  # a lone surrogate, encoded
                b'{"type":"hello","token":"\xed\xa0\x80"}',
                b"\xff",
                b"\xc0\x80",  # overlong NUL
                b"\xf4\x90\x80\x80",  # beyond U+10FFFF
                json.dumps({"type": "hello", "token": TOKEN}).encode()[:-1] + b"\xe2\x82",  # cut in a character
            ]
        ),
        st.binary(min_size=1, max_size=64).filter(lambda b: not _is_utf8(b)),
    ).map(lambda data: Frame("not-utf8", data, not_utf8=True))

    images = [face_jpeg, *small_images()]

    @st.composite
    def damaged_image(draw: st.DrawFn) -> Frame:
        data = bytearray(draw(_pick(images)))
        op = draw(st.sampled_from(["pristine", "truncate", "flip", "header", "tail"]))
        if op == "truncate":
            del data[draw(st.integers(0, len(data) - 1)) :]
        elif op == "flip":
            for _ in range(draw(st.integers(1, 8))):
                data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
        elif op == "header":
            del data[draw(st.sampled_from([2, 3, 8, 16, 33, 64, 200])) :]
        elif op == "tail":
            data += draw(st.binary(max_size=64))
        return Frame(f"image:{op}", bytes(data))

    dimensions = st.sampled_from([0, 1, 2, 256, 65_535, 65_536, 2**31 - 1, 2**31, 2**32 - 1])
    binary_frames = st.one_of(
        st.binary(max_size=2000).map(lambda data: Frame("binary", data)),
        st.builds(lambda magic, tail: Frame("magic", magic + tail), st.sampled_from(MAGICS), st.binary(max_size=200)),
        damaged_image(),
        damaged_image(),
        st.builds(
            lambda w, h, body: Frame("png-ihdr", _png(w, h, body)), dimensions, dimensions, st.binary(max_size=40)
        ),
        _pick(
            [
                Frame("empty", b""),
                Frame("upload-limit", b"\xff\xd8\xff" + b"\x00" * (MAX_UPLOAD - 3)),
                Frame("over-upload-limit", b"\xff\xd8\xff" + b"\x00" * (MAX_UPLOAD - 2)),
                Frame("over-frame-cap", b"\x89PNG" + b"\x00" * (FRAME_CAP + 500)),
            ]
        ),
    )
    hello = Frame("hello", json.dumps({"type": "hello", "token": TOKEN}))
    offer = Frame("offer", json.dumps({"type": "offer", "sdp": valid_offer}))
    builtin = Frame("portrait", json.dumps({"type": "portrait", "name": "astronaut"}))
    offers = st.builds(lambda sdp: Frame("offer", json.dumps({"type": "offer", "sdp": sdp})), sdps)
    return st.one_of(
        json_frames,
        json_frames,
        json_frames,
        text_frames,
        not_utf8,
        binary_frames,
        binary_frames,
        offers,
        st.sampled_from([hello, offer, builtin]),
    )


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# --------------------------------------------------------------------------------------------------
# The server, the healthy session and one example, on a loop in a background thread


class FuzzFailure(AssertionError):
    pass


@dataclass
class Transcript:
    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.lines.append(line[:300])

    def fail(self, why: str) -> FuzzFailure:
        return FuzzFailure(why + "\n  transcript:\n    " + "\n    ".join(self.lines))


def _speech_outcome(message: dict[str, Any]) -> bool:
    """An event of an earlier say/play/clear: speaking, spoken, or a bad_speech naming its item."""
    if message["type"] in ("speaking", "spoken"):
        return True
    return message["type"] == "error" and message.get("code") == m.BAD_SPEECH and "id" in message


def check_server_message(text: str | bytes, transcript: Transcript) -> dict[str, Any]:
    """Property 1 for one message: a JSON object of a known type; errors well-formed, never internal."""
    if not isinstance(text, str):
        raise transcript.fail(f"the server sent a binary frame: {text[:80]!r}")
    try:
        message = json.loads(text)
    except ValueError:
        raise transcript.fail(f"the server sent text that is not JSON: {text[:200]!r}") from None
    if not isinstance(message, dict) or message.get("type") not in SERVER_TYPES:
        raise transcript.fail(f"the server sent an unknown message: {text[:200]!r}")
    kind = message["type"]
    if kind == "error":
        code, human = message.get("code"), message.get("message")
        if code not in m.ERROR_CODES or code == m.INTERNAL:
            raise transcript.fail(f"error code {code!r} answered client input: {text[:300]}")
        if not isinstance(human, str) or not human.strip():
            raise transcript.fail(f"an error without a message for a person: {text[:300]}")
    elif kind in ("speaking", "spoken"):
        ok = isinstance(message.get("id"), str) and bool(message["id"])
        if kind == "spoken" and not isinstance(message.get("interrupted"), bool):
            ok = False
        if not ok:
            raise transcript.fail(f"a malformed {kind}: {text[:300]}")
    elif kind == "welcome":
        ok = isinstance(message.get("session"), str) and message["session"]
        ok = ok and (message.get("fps"), message.get("width"), message.get("height")) == (25, 256, 256)
        if not ok or not isinstance(message.get("portraits"), list):
            raise transcript.fail(f"a malformed welcome: {text[:300]}")
    elif kind == "portrait":
        face = message.get("face")
        ok = message.get("ok") is True and (message.get("width"), message.get("height")) == (256, 256)
        if not ok or not (isinstance(face, list) and len(face) == 4 and all(isinstance(v, int) for v in face)):
            raise transcript.fail(f"a malformed portrait reply: {text[:300]}")
    elif kind == "answer":
        if not isinstance(message.get("sdp"), str) or "m=video" not in message["sdp"]:
            raise transcript.fail(f"a malformed answer: {text[:300]}")
    elif kind == "stats":
        if not {"fps", "frames", "speaking"} <= set(message):
            raise transcript.fail(f"stats without fps, frames, speaking: {text[:300]}")
    return message


@dataclass
class ThrottleModel:
    """What the test knows of the fuzzing address's failed tokens (AuthThrottle: 3 free failures).

    `known`: the address was forgiven at the start of the example, so failures count from 0 and a
    `rate_limited` is wrong until a fourth failure; otherwise earlier examples may have locked it.
    """

    known: bool
    failures: int = 0

    def may_be_throttled(self) -> bool:
        return not self.known or self.failures > 3

    def saw(self, outcome: str) -> None:
        if outcome == "error:unauthorized":
            self.failures += 1
        elif outcome == "welcome":
            self.failures = 0


class Harness:
    """The event loop thread, the server, the healthy session; `run(coro)` from the test's thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-server-loop", daemon=True)
        self.thread.start()
        self.srv: SignalingServer | None = None
        self.healthy: Client | None = None
        self.valid_offer = ""
        self.face_jpeg = b""
        self.portraits: list[str] = []
        self.samples: list[tuple[float, int]] = []  # (monotonic time, healthy video frames)
        self.healthy_messages: list[str | bytes] = []
        self.healthy_closed: str | None = None
        self.examples = 0
        self.outcomes: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise FuzzFailure(f"the example did not finish within {timeout:g} s (a hang)") from None

    # -- setup and teardown (on the loop) ---------------------------------------------------------

    async def start(self) -> None:
        self.srv = SignalingServer(fuzz_config())
        await self.srv.start()
        self.portraits = list(self.srv.backend.portrait_names)
        out = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(self.srv.backend.default_portrait().rgb)).save(out, "JPEG", quality=90)
        self.face_jpeg = out.getvalue()
        self.valid_offer = await self._make_offer()
        candidates = [line for line in self.valid_offer.splitlines() if line.startswith("a=candidate")]
        assert candidates and all(" 127.0.0.1 " in line for line in candidates), candidates
        self.healthy = await Client(self.srv.url).__aenter__()
        assert (await self.healthy.hello(TOKEN))["type"] == "welcome"
        answer = await self.healthy.offer(None)
        assert answer["type"] == "answer", answer
        self._tasks.append(asyncio.ensure_future(self._drain_healthy()))
        self._tasks.append(asyncio.ensure_future(self._sample_healthy()))
        deadline = time.monotonic() + 20
        while len(self.healthy.received.video_times) < 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert len(self.healthy.received.video_times) >= 10, "the healthy session receives no video"

    async def _make_offer(self) -> str:
        from aiortc import RTCPeerConnection
        from aiortc.mediastreams import AudioStreamTrack

        pc = RTCPeerConnection()
        try:
            pc.addTransceiver(AudioStreamTrack(), direction="sendrecv")
            pc.addTransceiver("video", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            return str(pc.localDescription.sdp)
        finally:
            await pc.close()

    async def _drain_healthy(self) -> None:
        """Read the healthy client's socket (it gets stats only) so nothing backs up."""
        assert self.healthy is not None and self.healthy.ws is not None
        try:
            async for text in self.healthy.ws:
                self.healthy_messages.append(text)
        except ConnectionClosed as exc:
            self.healthy_closed = repr(exc)
        else:
            self.healthy_closed = f"closed ({self.healthy.ws.close_code} {self.healthy.ws.close_reason!r})"

    async def _sample_healthy(self) -> None:
        assert self.healthy is not None
        while True:
            self.samples.append((time.monotonic(), len(self.healthy.received.video_times)))
            await asyncio.sleep(1.0)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        if self.healthy is not None:
            await self.healthy.close()
        if self.srv is not None:
            await self.srv.aclose()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()

    # -- one example (on the loop) ----------------------------------------------------------------

    async def example(
        self, idle: int, knocks: list[Frame], frames: list[Frame], *, forgive: bool, pipelined: bool
    ) -> None:
        """`idle` silent connections stay open while each knock (a hello) goes on a connection of its
        own and then `frames` on one more, all from the fuzzing address; then the checks."""
        assert self.srv is not None
        self.examples += 1
        if forgive:
            self.srv.admission.throttle.succeeded(FUZZ_ADDRESS)
        throttle = ThrottleModel(known=forgive)
        transcript = Transcript()
        url = ws_url(self.srv.url)
        idlers: list[ClientConnection] = []
        try:
            for _ in range(idle):
                idlers.append(await connect(url, local_addr=(FUZZ_ADDRESS, 0), open_timeout=10))
            transcript.add(f"{idle} idle connections open")
            for sequence in [*([knock] for knock in knocks), frames]:
                async with connect(url, local_addr=(FUZZ_ADDRESS, 0), max_size=None, open_timeout=10) as ws:
                    transcript.add("-- a new connection")
                    await self._fuzz(ws, sequence, throttle, transcript, pipelined=pipelined and sequence is frames)
            await asyncio.gather(
                *(self._check_idle(ws, f"idle connection {i}", transcript) for i, ws in enumerate(idlers))
            )
        finally:
            for ws in idlers:
                await ws.close()
        await self._check_alive(transcript)
        await self._settle(transcript)

    async def _check_idle(self, ws: ClientConnection, name: str, transcript: Transcript) -> None:
        """A connection that never spoke may be evicted (pending per address) or time out (hello):
        either way with an error `timeout` before the close, never a silent close."""
        try:
            text = await asyncio.wait_for(ws.recv(), 0.3)
        except TimeoutError:
            return
        except ConnectionClosed:
            raise transcript.fail(f"{name} was closed without a reply ({ws.close_code})") from None
        message = check_server_message(text, transcript)
        transcript.add(f"{name} got {json.dumps(message)[:200]}")
        self.outcomes["idle:" + str(message.get("code"))] = self.outcomes.get("idle:" + str(message.get("code")), 0) + 1
        if (message["type"], message.get("code")) != ("error", m.TIMEOUT):
            raise transcript.fail(f"{name} got {message}")
        if not await self._closes(ws, PRE, transcript):
            raise transcript.fail(f"{name} was not closed after its timeout error")

    async def _fuzz(
        self,
        ws: ClientConnection,
        frames: list[Frame],
        throttle: ThrottleModel,
        transcript: Transcript,
        *,
        pipelined: bool = False,
    ) -> None:
        """Send `frames` one by one, each after the reply to the one before (or all at once when
        `pipelined`), and check each reply against the protocol, in order."""
        sender: asyncio.Task[None] | None = None
        if pipelined:
            transcript.add("(pipelined: every frame is sent without waiting for replies)")
            sender = asyncio.ensure_future(self._send_all(ws, frames))
        try:
            await self._check_replies(ws, frames, throttle, transcript, send=not pipelined)
        finally:
            if sender is not None:
                sender.cancel()
                with contextlib.suppress(BaseException):
                    await sender

    @staticmethod
    async def _send(ws: ClientConnection, frame: Frame) -> None:
        with contextlib.suppress(ConnectionClosed):  # the close (and any reply before it) is read later
            await ws.send(frame.data, text=True if frame.not_utf8 else None)

    async def _send_all(self, ws: ClientConnection, frames: list[Frame]) -> None:
        for frame in frames:
            await self._send(ws, frame)

    async def _check_replies(
        self, ws: ClientConnection, frames: list[Frame], throttle: ThrottleModel, transcript: Transcript, *, send: bool
    ) -> None:
        state = PRE
        answered_at = 0.0
        may_have_closed = False  # a rejected portrait before hello ends the session; after it, never
        for frame in frames:
            kind = classify(frame)
            allowed = expected(
                kind,
                state,
                may_be_throttled=throttle.may_be_throttled(),
                valid_offer=self.valid_offer,
                portraits=self.portraits,
            )
            transcript.add(f"[{state}] {'sent' if send else 'then'} {frame!r}; allowed {sorted(allowed)}")
            if send:
                await self._send(ws, frame)
            if allowed == {"none"}:
                continue
            outcome, message = await self._next_reply(ws, state, transcript)
            transcript.add(f"    got {outcome}: {json.dumps(message)[:200] if message else ''}")
            if outcome == "close:1000" and may_have_closed:
                transcript.add("    (the rejected portrait ended the session)")
                return
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
            throttle.saw(outcome)
            if outcome not in allowed:
                late_ice_failure = (
                    state == ACTIVE
                    and outcome == "close:1000"
                    and ws.close_reason == "connection closed"
                    and time.monotonic() - answered_at > 3.0
                )  # our offer's candidates are gone: the server's ICE gives up after a few seconds
                if late_ice_failure:
                    return
                if outcome.startswith("close:"):
                    raise transcript.fail(f"the server closed without a reply ({outcome}; allowed {sorted(allowed)})")
                raise transcript.fail(f"{outcome} is not what the protocol allows here ({sorted(allowed)})")
            if outcome.startswith("close:"):
                return
            may_have_closed = outcome == "error:bad_portrait" and state == PRE
            if outcome == "welcome":
                state = WELCOMED
            elif outcome == "answer":
                state, answered_at = ACTIVE, time.monotonic()
            elif outcome.startswith("error:") and outcome not in ("error:bad_portrait", "error:bad_speech"):
                if not await self._closes(ws, state, transcript):
                    raise transcript.fail(f"{outcome} was not followed by the server closing the socket")
                return

    async def _next_reply(
        self, ws: ClientConnection, state: str, transcript: Transcript
    ) -> tuple[str, dict[str, Any] | None]:
        """The next message but stats ("welcome", "error:CODE", ...), or "close:CODE" when none came."""
        try:
            async with asyncio.timeout(REPLY_TIMEOUT_S):
                while True:
                    message = check_server_message(await ws.recv(), transcript)
                    if _speech_outcome(message):
                        transcript.add(f"    (a speech item's outcome: {json.dumps(message)[:120]})")
                        continue
                    if message["type"] != "stats":
                        break
                    if state != ACTIVE:
                        raise transcript.fail("stats arrived before the offer was answered")
        except ConnectionClosed:
            return f"close:{ws.close_code}", None
        except TimeoutError:
            raise transcript.fail(f"no reply within {REPLY_TIMEOUT_S:g} s (a hang or a silent drop)") from None
        if message["type"] == "error":
            return f"error:{message['code']}", message
        return str(message["type"]), message

    async def _closes(self, ws: ClientConnection, state: str, transcript: Transcript) -> bool:
        """Whether the server closes the socket within CLOSE_TIMEOUT_S (only stats may come first)."""
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                while True:
                    message = check_server_message(await ws.recv(), transcript)
                    if _speech_outcome(message):
                        continue  # an earlier speech item's event, sent before the close
                    if message["type"] != "stats" or state != ACTIVE:
                        raise transcript.fail(f"after a closing error the server sent {json.dumps(message)[:200]}")
        except ConnectionClosed:
            transcript.add(f"    closed ({ws.close_code} {ws.close_reason!r})")
            return True
        except TimeoutError:
            return False

    async def _check_alive(self, transcript: Transcript) -> None:
        """Property 2: a fresh client (from an address never throttled) says hello and is welcomed."""
        assert self.srv is not None
        async with connect(ws_url(self.srv.url), local_addr=(CHECK_ADDRESS, 0), open_timeout=10) as ws:
            await ws.send(json.dumps({"type": "hello", "token": TOKEN}))
            try:
                reply = json.loads(await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT_S))
            except (ConnectionClosed, TimeoutError) as exc:
                raise transcript.fail(f"after the example a fresh client got no welcome ({exc!r})") from None
            if reply.get("type") != "welcome":
                raise transcript.fail(f"after the example a fresh client got {reply}")
            await ws.send(json.dumps({"type": "bye"}))
            try:
                await asyncio.wait_for(ws.wait_closed(), CLOSE_TIMEOUT_S)
            except TimeoutError:
                raise transcript.fail("bye did not close the fresh client's socket") from None

    async def _settle(self, transcript: Transcript) -> None:
        """The server is back to just the healthy client and its session."""
        assert self.srv is not None
        deadline = time.monotonic() + 10
        while (self.srv.clients, self.srv.active_sessions) != (1, 1) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if (self.srv.clients, self.srv.active_sessions) != (1, 1):
            raise transcript.fail(
                f"10 s after the example the server still has {self.srv.clients} clients and "
                f"{self.srv.active_sessions} sessions (expected 1 and 1: the healthy one)"
            )

    async def final_state(self) -> dict[str, Any]:
        assert self.srv is not None and self.healthy is not None
        return {
            "active_sessions": self.srv.active_sessions,
            "clients": self.srv.clients,
            "frames": len(self.healthy.received.video_times),
            "samples": list(self.samples),
        }


@pytest.fixture(scope="module")
def harness() -> Any:
    h = Harness()
    try:
        h.run(h.start(), 120)
        yield h
    finally:
        with contextlib.suppress(Exception):
            h.run(h.stop(), 60)
        h.close()


# --------------------------------------------------------------------------------------------------
# The properties


# The event loop thread (aiortc, websockets) draws from the global `random` while hypothesis generates
# an example in this thread, which hypothesis takes for a strategy using `random`.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
def test_protocol_fuzz(harness: Harness) -> None:
    frames = frames_strategy(harness.valid_offer, harness.face_jpeg)
    hello = Frame("hello", json.dumps({"type": "hello", "token": TOKEN}))
    offer = Frame("offer", json.dumps({"type": "offer", "sdp": harness.valid_offer}))
    builtin = Frame("portrait", json.dumps({"type": "portrait", "name": "astronaut"}))
    face = Frame("upload", harness.face_jpeg)
    # How a sequence starts: nothing (messages before hello), or a good start into each state.
    prefixes = st.sampled_from([[], [hello], [hello], [hello, builtin], [hello, face], [hello, offer], [hello, offer]])
    knock = st.builds(lambda token: Frame("knock", json.dumps({"type": "hello", "token": token})), odd_text)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        print_blob=True,
        report_multiple_bugs=False,  # shrink one failure (each hang costs REPLY_TIMEOUT_S per try)
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(
        idle=st.sampled_from([0, 0, 0, 0, 0, 0, 0, 1, 8, 9]),
        knocks=st.sampled_from([0, 0, 0, 0, 0, 0, 0, 0, 0, 4]).flatmap(
            lambda n: st.lists(knock, min_size=n, max_size=n)
        ),
        forgive=st.sampled_from([True, True, True, False]),
        pipelined=st.booleans(),
        prefix=prefixes,
        sequence=st.lists(frames, max_size=6),
    )
    def example(
        idle: int, knocks: list[Frame], forgive: bool, pipelined: bool, prefix: list[Frame], sequence: list[Frame]
    ) -> None:
        harness.run(harness.example(idle, knocks, [*prefix, *sequence], forgive=forgive, pipelined=pipelined))

    started = time.monotonic()
    example()
    elapsed = time.monotonic() - started
    state = harness.run(harness.final_state())
    print(f"{harness.examples} examples in {elapsed:.1f} s; outcomes {dict(sorted(harness.outcomes.items()))}")

    # Property 3: the healthy session kept receiving video all along, and is the only one left.
    assert harness.healthy_closed is None, f"the healthy client's socket closed: {harness.healthy_closed}"
    unexpected = [t for t in harness.healthy_messages if json.loads(t).get("type") != "stats"]
    assert not unexpected, f"the healthy client got {unexpected[:3]}"
    samples = state["samples"]
    window = 3  # samples are a second apart
    for i in range(len(samples) - window):
        (t0, n0), (t1, n1) = samples[i], samples[i + window]
        assert n1 >= n0 + 10, f"the healthy session got {n1 - n0} video frames in {t1 - t0:.1f} s during the fuzzing"
    assert (state["active_sessions"], state["clients"]) == (1, 1), state


# --------------------------------------------------------------------------------------------------
# Reproductions of what the fuzzing found (fixed since)


@pytest.mark.parametrize(
    "rejected", [b"", json.dumps({"type": "portrait", "name": " "})], ids=["empty-upload", "blank-name"]
)
def test_a_rejected_portrait_keeps_the_session(harness: Harness, rejected: str | bytes) -> None:
    async def scenario() -> None:
        assert harness.srv is not None
        async with connect(ws_url(harness.srv.url), local_addr=(CHECK_ADDRESS, 0), open_timeout=10) as ws:
            await ws.send(json.dumps({"type": "hello", "token": TOKEN}))
            assert json.loads(await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT_S))["type"] == "welcome"
            await ws.send(rejected)
            reply = json.loads(await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT_S))
            assert (reply["type"], reply.get("code")) == ("error", "bad_portrait"), reply
            await ws.send(json.dumps({"type": "portrait", "name": "astronaut"}))
            try:
                reply = json.loads(await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT_S))
            except ConnectionClosed as exc:
                raise AssertionError(f"the rejected portrait ended the session ({exc})") from None
            assert reply["type"] == "portrait" and reply["ok"] is True, reply

    harness.run(scenario())


def test_a_session_ended_at_once_leaves_no_unawaited_coroutine(harness: Harness) -> None:
    async def scenario() -> None:
        assert harness.srv is not None
        async with connect(ws_url(harness.srv.url), local_addr=(CHECK_ADDRESS, 0), open_timeout=10) as ws:
            for message in (
                {"type": "hello", "token": TOKEN},
                {"type": "offer", "sdp": harness.valid_offer},
                {"type": "bye"},
            ):
                await ws.send(json.dumps(message))
            assert json.loads(await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT_S))["type"] == "welcome"
            assert json.loads(await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT_S))["type"] == "answer"
            await asyncio.wait_for(ws.wait_closed(), CLOSE_TIMEOUT_S)
        deadline = time.monotonic() + 10
        while harness.srv.clients > 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        harness.run(scenario())
        gc.collect()
    never_awaited = [str(w.message) for w in caught if "was never awaited" in str(w.message)]
    assert not never_awaited, never_awaited
