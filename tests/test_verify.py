"""`avatar verify` on what the service really outputs: a fresh render and a recording of a live
session as a real aiortc client received it, both also after a re-encode at half size and 300 kbps;
real photographs; and files it cannot read (exit status 2, the other files still reported)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import pytest_asyncio
import torch

from avatar.disclosure.mark import VisibleMark
from avatar.disclosure.payload import Payload, session_number
from avatar.speech import synthesize_speech
from signaling.server import SignalingServer
from tests.label_check import label_contrast
from tests.test_server import TOKEN, server_config
from tests.video_transforms import encode_mp4
from tests.ws_client import Client

REPO = Path(__file__).resolve().parent.parent
IPTC_TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
pytestmark = pytest.mark.slow


def avatar(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "avatar", *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def verify(*files: Path) -> tuple[int, list[dict]]:
    done = avatar("verify", *files)
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return done.returncode, reports


def write_mp4(frames: list[np.ndarray], path: Path, *, bitrate_bps: int | None = None, scale: float = 1.0) -> Path:
    encode_mp4(frames, path, bitrate_bps=bitrate_bps, scale=scale)
    return path


def decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.fixture(scope="module")
def render(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("render")
    config = folder / "small.toml"
    config.write_text("[video]\nwidth_px = 256\nheight_px = 256\n")
    out = folder / "talk.mp4"
    sentence = "I am a talking portrait, and I say so."
    done = avatar("render", "--say", sentence, "-o", out, "--config", config, "--no-progress")
    assert done.returncode == 0, done.stderr
    return out


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live_recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """3 s of a live session's video as a real aiortc client decoded it, saved as MP4; and the
    session's id."""
    folder = tmp_path_factory.mktemp("live")
    wav = synthesize_speech("Hello, this is a live session.", folder / "hello.wav", lead_silence_s=0.5)
    server = SignalingServer(server_config())
    await server.start()
    try:
        async with Client(server.url) as client:
            welcome = await client.hello(TOKEN)
            assert welcome["disclosure"] == {"mark": True, "watermark": True}
            assert (await client.offer(wav))["type"] == "answer"
            await asyncio.sleep(3.0)
            frames = list(client.received.video_frames)
    finally:
        await server.aclose()
    assert len(frames) >= 50, len(frames)
    return write_mp4(frames, folder / "live.mp4"), welcome["session"]


def test_a_fresh_render_is_synthetic_by_both_marks(render: Path) -> None:
    status, [report] = verify(render)
    assert status == 0
    assert report["synthetic"] is True
    watermark, c2pa = report["watermark"], report["c2pa"]
    assert watermark["detected"] and watermark["score"] >= watermark["threshold"]
    assert c2pa["present"] and c2pa["valid"] and c2pa["source_type"] == IPTC_TRAINED
    assert c2pa["generator"].startswith("talking-portrait")
    # The watermark's payload and the credentials name the same render.
    assert watermark["payload"]["session"] == c2pa["watermark"]["session"]
    assert watermark["payload"]["service_id"] == c2pa["watermark"]["service_id"] == 1
    assert watermark["frames"] == len(decoded(render))


def test_every_frame_of_a_render_shows_the_label(render: Path) -> None:
    d = server_config().disclosure
    mark = VisibleMark(d.mark_text, d.mark_corner, 256, 256, torch.device("cpu"))
    frames = decoded(render)
    for frame in frames[:: max(1, len(frames) // 12)]:
        text, pill = label_contrast(frame, mark)
        assert text - pill > 0.4, (text, pill)


def test_a_render_re_encoded_at_half_size_and_300_kbps_is_still_synthetic(render: Path, tmp_path: Path) -> None:
    copy = write_mp4(decoded(render), tmp_path / "half.mp4", bitrate_bps=300_000, scale=0.5)
    status, [report] = verify(copy)
    assert status == 0
    assert report["synthetic"] is True and report["watermark"]["detected"]
    assert report["c2pa"]["present"] is False  # the credentials belonged to the original bytes


def test_a_tampered_render_keeps_its_watermark_and_loses_valid_credentials(render: Path, tmp_path: Path) -> None:
    original = bytes(render.read_bytes())
    box = original.find(b"mdat") - 4  # the media data: 4 bytes of size, then "mdat"
    size = int.from_bytes(original[box : box + 4], "big")
    # 16 bytes zeroed near the media data's end, where the frames before still decode (where the
    # zeros land depends on the frames: the first place whose file stays readable is used).
    for share in (0.9, 0.95, 0.85, 0.97, 0.8):
        data = bytearray(original)
        at = box + int(size * share)
        data[at : at + 16] = bytes(16)
        tampered = tmp_path / f"tampered_{share}.mp4"
        tampered.write_bytes(bytes(data))
        status, [report] = verify(tampered)
        if status == 0:
            break
    assert status == 0
    assert report["c2pa"]["present"] and not report["c2pa"]["valid"]
    assert report["synthetic"] is True  # the pixels still carry the watermark


def test_a_recording_of_a_live_session_is_synthetic(live_recording: tuple[Path, str], tmp_path: Path) -> None:
    recording, session_id = live_recording
    status, [report] = verify(recording)
    assert status == 0 and report["synthetic"] is True
    assert report["watermark"]["detected"]
    # The payload, when all 64 bits came through the live encoder, names this session.
    payload = report["watermark"]["payload"]
    assert payload is None or payload == Payload(1, session_number(session_id)).as_dict()
    assert report["c2pa"]["present"] is False  # a client's recording has no credentials: the watermark says it
    copy = write_mp4(decoded(recording), tmp_path / "half.mp4", bitrate_bps=300_000, scale=0.5)
    status, [report] = verify(copy)
    assert status == 0 and report["synthetic"] is True


def test_real_photographs_are_not_synthetic(tmp_path: Path) -> None:
    import skimage.data as data
    from PIL import Image

    folder = Path(data.__file__).parent
    photos = [folder / "astronaut.png", folder / "coffee.png", folder / "chelsea.png"]
    jpeg = tmp_path / "rocket.jpg"
    Image.fromarray(data.rocket()).save(jpeg, quality=80)
    clip = write_mp4([data.astronaut()[:256, :256]] * 50, tmp_path / "still-photo.mp4")
    status, reports = verify(*photos, jpeg, clip)
    assert status == 0 and len(reports) == 5
    for report in reports:
        assert report["synthetic"] is False, report
        assert report["watermark"]["payload"] is None and report["c2pa"]["present"] is False


def test_unreadable_files_are_errors_and_the_others_are_still_checked(render: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a video\n")
    audio = synthesize_speech("just a voice", tmp_path / "voice.wav")
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(render.read_bytes()[:2000])
    missing = tmp_path / "missing.mp4"
    status, reports = verify(text, audio, truncated, missing, render)
    assert status == 2
    assert [r["file"] for r in reports] == [str(p) for p in (text, audio, truncated, missing, render)]
    for report in reports[:4]:
        assert set(report) == {"file", "error"} and report["file"] in report["error"]
    assert reports[-1]["synthetic"] is True  # the last line is the last file's
