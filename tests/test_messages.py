import json

import pytest

from signaling import messages as m


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"type":"hello"}', m.Hello()),
        ('{"type":"hello","token":"s3cret"}', m.Hello(token="s3cret")),
        ('{"type":"portrait","name":"astronaut"}', m.PortraitRequest(name="astronaut")),
        ('{"type":"offer","sdp":"v=0\\r\\n"}', m.Offer(sdp="v=0\r\n")),
        ('{"type":"bye"}', m.Bye()),
        ('{"type":"bye","extra":[1,2]}', m.Bye()),  # unknown keys are ignored
    ],
)
def test_parse_client_messages(text: str, expected: m.ClientMessage) -> None:
    assert m.parse_client_message(text) == expected


@pytest.mark.parametrize(
    "message",
    [
        m.Hello(),
        m.Hello(token="t"),
        m.PortraitRequest(name="astronaut"),
        m.Offer(sdp="v=0\r\no=- 1 1 IN IP4 x\r\n"),
        m.Bye(),
    ],
)
def test_client_round_trip(message: m.ClientMessage) -> None:
    assert m.parse_client_message(m.dump(message)) == message


def test_binary_frame_is_an_upload() -> None:
    parsed = m.parse_client_message(b"\x89PNG....")
    assert isinstance(parsed, m.PortraitUpload) and parsed.data == b"\x89PNG...."
    with pytest.raises(TypeError):
        m.dump(parsed)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            m.Welcome(session="abc", fps=25, width=512, height=512, portraits=("astronaut",)),
            {"type": "welcome", "session": "abc", "fps": 25, "width": 512, "height": 512, "portraits": ["astronaut"]},
        ),
        (
            m.PortraitReply(width=512, height=512, face=(1, 2, 3, 4)),
            {"type": "portrait", "ok": True, "width": 512, "height": 512, "face": [1, 2, 3, 4]},
        ),
        (m.Answer(sdp="v=0"), {"type": "answer", "sdp": "v=0"}),
        (
            m.Stats(fps=24.987, frames=100, speaking=True, latency_ms=91.24),
            {"type": "stats", "fps": 24.99, "frames": 100, "speaking": True, "latency_ms": 91.2},
        ),
        (m.Stats(fps=25, frames=0, speaking=False), {"type": "stats", "fps": 25.0, "frames": 0, "speaking": False}),
        (
            m.Stats(fps=25, frames=3, speaking=False, extra={"stalls": 2, "fps": 1.0, "late": 0.5}),
            {"type": "stats", "fps": 25.0, "frames": 3, "speaking": False, "stalls": 2, "late": 0.5},
        ),
        (m.Error(m.BUSY, "full"), {"type": "error", "code": "busy", "message": "full"}),
    ],
)
def test_dump_server_messages(message: m.ServerMessage, expected: dict) -> None:
    assert json.loads(m.dump(message)) == expected


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", m.BAD_MESSAGE),
        ("", m.BAD_MESSAGE),
        ("[1, 2]", m.BAD_MESSAGE),
        ('"hello"', m.BAD_MESSAGE),
        ("{}", m.BAD_MESSAGE),
        ('{"type": 3}', m.BAD_MESSAGE),
        ('{"type": "dance"}', m.BAD_MESSAGE),
        ('{"type": "welcome"}', m.BAD_MESSAGE),  # a server message is not a client message
        ('{"type": "hello", "token": 5}', m.BAD_MESSAGE),
        ('{"type": "hello", "token": "' + "x" * (m.MAX_TOKEN_CHARS + 1) + '"}', m.BAD_MESSAGE),
        ('{"type": "portrait"}', m.BAD_MESSAGE),
        ('{"type": "portrait", "name": ["a"]}', m.BAD_MESSAGE),
        ('{"type": "portrait", "name": "  "}', m.BAD_PORTRAIT),
        ('{"type": "offer"}', m.BAD_MESSAGE),
        ('{"type": "offer", "sdp": null}', m.BAD_MESSAGE),
        ('{"type": "offer", "sdp": {"a": 1}}', m.BAD_MESSAGE),
        ('{"type": "offer", "sdp": ""}', m.BAD_SDP),
        ('{"type": "offer", "sdp": "' + "x" * (m.MAX_SDP_CHARS + 1) + '"}', m.BAD_MESSAGE),
        ("[" * 100_000, m.BAD_MESSAGE),  # deep nesting must not crash the parser
        (b"", m.BAD_PORTRAIT),
    ],
)
def test_bad_input_gets_its_code(frame: str | bytes, code: str) -> None:
    with pytest.raises(m.ProtocolError) as info:
        m.parse_client_message(frame)
    assert info.value.code == code
    assert info.value.message  # a person can read it


def test_size_limits_text_and_binary_apart() -> None:
    text = json.dumps({"type": "offer", "sdp": "v=0 " + "a" * 2000})
    assert isinstance(m.parse_client_message(text, max_text_bytes=len(text)), m.Offer)
    with pytest.raises(m.ProtocolError) as info:
        m.parse_client_message(text, max_text_bytes=len(text) - 1)
    assert info.value.code == m.BAD_MESSAGE
    with pytest.raises(m.ProtocolError) as info:
        m.parse_client_message(b"x" * 101, max_binary_bytes=100)
    assert info.value.code == m.BAD_MESSAGE
    # The text limit does not bound uploads, nor the upload limit text.
    assert isinstance(m.parse_client_message(b"x" * 101, max_text_bytes=100, max_binary_bytes=200), m.PortraitUpload)
    with pytest.raises(m.ProtocolError):
        m.parse_client_message(text, max_text_bytes=100, max_binary_bytes=len(text) * 2)
    # Non-ASCII text counts in UTF-8 bytes; a lone surrogate counts too and is no crash.
    wide = json.dumps({"type": "hello", "token": "é" * 60}, ensure_ascii=False)
    with pytest.raises(m.ProtocolError):
        m.parse_client_message(wide, max_text_bytes=len(wide) + 10)
    lone = '{"type":"hello","token":"\ud800"}'
    assert m.parse_client_message(lone, max_text_bytes=100) == m.Hello(token="\ud800")


def test_unknown_error_code_is_a_bug() -> None:
    with pytest.raises(ValueError):
        m.Error("oops", "x")
    with pytest.raises(ValueError):
        m.ProtocolError("oops", "x")
