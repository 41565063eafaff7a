"""A temporal-GAN checkpoint trained by `avatar train` serves live through the real server.

The README's path for a user with talking-face videos: train, then serve the checkpoint. A tiny model
is trained for a few steps on clips made here; the server loads it, and a real aiortc client gets
frames whose face region comes from the model while the rest of the portrait stays as it was.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from avatar.config import AppConfig, GeneratorConfig, TrainConfig, with_overrides
from avatar.portrait import default_portrait
from avatar.train.loop import train
from signaling.server import SignalingServer
from tests.talking_faces import TINY, make_clips
from tests.ws_client import Client


def served_config(checkpoint: Path) -> AppConfig:
    return with_overrides(
        AppConfig(tgan=TINY),
        generator={"name": "tgan", "checkpoint": str(checkpoint), "device": "cpu"},
        server={"host": "127.0.0.1", "port": 0},
        webrtc={"host_addresses": ["127.0.0.1"]},
        video={"width_px": 256, "height_px": 256},
    )


@pytest.mark.slow
async def test_trained_checkpoint_serves_live(speech_wav: Path, tmp_path: Path) -> None:
    make_clips(tmp_path / "videos", count=2, seconds=1.6)
    train_config = AppConfig(
        tgan=TINY,
        generator=GeneratorConfig(device="cpu"),
        train=TrainConfig(steps=3, batch_size=2, clip_frames=6, checkpoint_every=3, holdout_fraction=0.0),
    )
    checkpoint = train(train_config, tmp_path / "videos", tmp_path / "run", progress=False)

    config = served_config(checkpoint)
    server = SignalingServer(config)
    await server.start()
    try:
        async with Client(server.url) as client:
            welcome = await client.hello()
            assert welcome["type"] == "welcome" and (welcome["width"], welcome["height"]) == (256, 256)
            answer = await client.offer(speech_wav)
            assert answer["type"] == "answer"
            await asyncio.sleep(3.0)
            frames = list(client.received.video_frames)
            await client.send({"type": "bye"})
            assert await client.closed(5.0)
    finally:
        await server.aclose()

    assert len(frames) > 40, len(frames)
    assert frames[-1].shape == (256, 256, 3)
    portrait = default_portrait(config).rgb.astype(np.float32)
    last = frames[-1].astype(np.float32)
    x, y, w, h = default_portrait(config).face_box
    face = np.abs(last[y : y + h, x : x + w] - portrait[y : y + h, x : x + w]).mean()
    corner = np.abs(last[:32, :32] - portrait[:32, :32]).mean()
    print(f"face diff {face:.1f}, corner diff {corner:.2f}, frames {len(frames)}")
    # The barely trained model draws its own face into the face box; the background is the portrait's.
    assert face > 5.0, face
    assert corner < 3.0, corner
