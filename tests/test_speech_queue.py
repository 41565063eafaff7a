"""The speech queue (order, marks, clear), the clip decoder and the text checks; and a session
with a fake clock: speech takes the microphone's place while it plays (ducking), a presenter's
speech anchors the timeline, and the marks come when their samples are played out."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import wave

import numpy as np
import pytest
from media_doubles import LoudnessGenerator
from test_session import QueueTrack, make_session

from avatar.clock import FakeClock
from avatar.config import AppConfig, TtsConfig, VideoConfig
from avatar.engine import InferenceEngine
from avatar.errors import SpeechError
from avatar.session import AvatarSession
from avatar.speech import SpeechClip, check_text, decode_clip
from avatar.speech_queue import SpeechItem, SpeechMark, SpeechQueue


def clip(n48: int, value: int = 1000) -> SpeechClip:
    return SpeechClip(np.full(n48, value, np.int16), np.full(n48 // 3, value, np.int16))


def wav_bytes(samples: np.ndarray, rate: int = 48_000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return out.getvalue()


def test_items_play_in_the_order_asked_and_a_head_being_made_waits() -> None:
    q = SpeechQueue(max_items=3)
    a, b = SpeechItem("a", "first"), SpeechItem("b")
    q.add(a)
    q.add(b)
    b.clip = clip(960)
    assert not q.ready and q.take(960, 320, 0) is None  # a is still being made: b waits behind it
    a.clip = clip(1500, 7)
    s48, s16, marks = q.take(960, 320, 0)  # type: ignore[misc]
    assert marks == [SpeechMark("speaking", a, 0)] and np.all(s48 == 7) and np.all(s16 == 7)
    s48, _, marks = q.take(960, 320, 960)  # type: ignore[misc]
    assert np.all(s48[:540] == 7) and not s48[540:].any()  # a ends inside this packet: zeros after it
    assert marks == [SpeechMark("spoken", a, 960 + 540)]
    _, _, marks = q.take(960, 320, 1920)  # type: ignore[misc]
    assert marks == [SpeechMark("speaking", b, 1920), SpeechMark("spoken", b, 1920 + 960)]
    assert q.take(960, 320, 2880) is None and len(q) == 0


def test_a_full_queue_refuses_and_a_failed_item_leaves_it() -> None:
    q = SpeechQueue(max_items=2)
    a, b = SpeechItem("a"), SpeechItem("b")
    q.add(a)
    q.add(b)
    with pytest.raises(SpeechError, match="at most 2"):
        q.add(SpeechItem("c"))
    q.discard(a)
    b.clip = clip(960)
    assert q.ready and len(q) == 1


def test_clear_ends_the_playing_item_and_drops_the_queued_ones() -> None:
    q = SpeechQueue(max_items=4)
    a, b, c = SpeechItem("a"), SpeechItem("b"), SpeechItem("c")
    for item in (a, b, c):
        item.clip = clip(9600)
        q.add(item)
    q.take(960, 320, 0)
    marks = q.clear(960)
    assert [(m.item.id, m.kind, m.interrupted) for m in marks] == [("a", "spoken", True), ("b", "spoken", True),
                                                                   ("c", "spoken", True)]  # fmt: skip
    assert q.take(960, 320, 1920) is None


def test_decode_clip_gives_both_rates_of_the_same_length() -> None:
    ramp = (np.arange(48_000) % 2000 - 1000).astype(np.int16)
    c = decode_clip(wav_bytes(ramp), max_s=5)
    assert c.samples48.size == 3 * c.samples16.size and abs(c.duration_s - 1.0) < 0.01
    assert np.array_equal(c.samples48[:47_000], ramp[:47_000])  # 48 kHz mono passes through unchanged
    c8 = decode_clip(wav_bytes(ramp[::6], rate=8_000), max_s=5)
    assert abs(c8.duration_s - 1.0) < 0.01
    with pytest.raises(SpeechError, match="longer than 0.5 s"):
        decode_clip(wav_bytes(ramp), max_s=0.5)
    for bad in (b"", b"RIFF\x00\x00garbage" * 20):
        with pytest.raises(SpeechError):
            decode_clip(bad, max_s=5)


def test_check_text_refuses_empty_long_and_unknown_voices() -> None:
    tts = TtsConfig(max_text_chars=10)
    assert check_text("Hello", None, tts) == "en-us"
    assert check_text("Hello", "de", tts) == "de"
    for text, voice, reason in (("  ", None, "empty"), ("x" * 11, None, "too long"), ("Hi", "xx-nope", "unknown voice"),
                                ("Hi", "-w /etc/passwd", "not a voice name")):  # fmt: skip
        with pytest.raises(SpeechError, match=reason):
            check_text(text, voice, tts)
    listed = TtsConfig(command=("tts", "{out}"), voices=("anna", "ben"))
    assert check_text("Hi", "ben", listed) == "ben"
    with pytest.raises(SpeechError, match="anna, ben"):
        check_text("Hi", "carl", listed)
    assert check_text("Hi", "whatever", TtsConfig(command=("tts", "{out}"))) == "whatever"


@pytest.fixture
def small_config(config: AppConfig) -> AppConfig:
    return dataclasses.replace(config, video=VideoConfig(fps=25, width_px=64, height_px=64))


@pytest.fixture
async def engine(small_config: AppConfig):  # type: ignore[no-untyped-def]
    engine = InferenceEngine(LoudnessGenerator(64, 64, 25), small_config.video)
    await engine.start()
    yield engine
    await engine.aclose()


async def _listened(
    config: AppConfig, engine: InferenceEngine
) -> tuple[FakeClock, AvatarSession, list[SpeechMark]]:
    """A started session on a fake clock, and the speech marks it reports."""
    clock = FakeClock(start_s=10.0)
    session = make_session(config, engine, "speech", clock=clock)
    await session.start()
    marks: list[SpeechMark] = []
    session.on_speech = marks.append
    return clock, session, marks


async def test_speech_takes_the_microphones_place_while_it_plays(
    small_config: AppConfig, engine: InferenceEngine
) -> None:
    clock, session, marks = await _listened(small_config, engine)
    track = QueueTrack()
    session.attach_audio(track)
    try:
        for _ in range(10):  # the microphone: a steady tone
            await clock.advance(0.02)
            track.put_level(3000)
            await asyncio.sleep(0.005)
        speech = (np.arange(48_000 // 5) % 500 + 1).astype(np.int16)  # 200 ms, never 0
        item = await session.play(wav_bytes(speech), item_id="clip")
        start = session._pos48  # the next packet's first input sample
        for _ in range(20):
            await clock.advance(0.02)
            track.put_level(3000)
            await asyncio.sleep(0.005)
        audio = session.audio_track
        assert audio is not None
        played = audio._read(start, speech.size + 960)  # 200 ms: ten whole packets, then one more
        assert np.array_equal(played[: speech.size], speech)  # the clip, not the tone (ducked)
        assert np.all(played[speech.size :] == 3000)  # the microphone again
        assert [m.kind for m in marks] == ["speaking", "spoken"] and marks[0].item is item
        # Each mark came when its sample was played out (voice_lead_s ahead of its frames).
        offset = session.timeline.offset_s
        assert offset is not None
        lead = small_config.windows.voice_lead_used_s
        assert marks[0].sample48 == start and (start / 48_000 + offset - lead) <= clock.now_s()
    finally:
        await session.aclose()


async def test_a_presenter_s_speech_starts_the_timeline_and_rest_follows(
    small_config: AppConfig, engine: InferenceEngine
) -> None:
    clock, session, marks = await _listened(small_config, engine)
    try:
        await clock.advance(0.5)
        assert session.timeline.offset_s is None  # nothing to say yet: idle frames
        speech = np.full(48_000 // 5, 1200, np.int16)
        await session.play(wav_bytes(speech))
        await clock.advance(0.04)
        offset = session.timeline.offset_s
        assert offset is not None and offset == pytest.approx(clock.now_s() - 0.04 - 0.02 + session.delay_s, abs=0.041)
        for _ in range(25):
            await clock.advance(0.04)
            await asyncio.sleep(0.002)
        assert [m.kind for m in marks] == ["speaking", "spoken"]
        stats = session.stats()
        assert stats["speech_frames"] == 10 and stats["filled_frames"] > 0  # then silence: rest frames
    finally:
        await session.aclose()

