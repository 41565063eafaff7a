"""The temporal-GAN generator: layer plan, causality, streaming == offline, batching, checkpoints."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from avatar.config import AppConfig, PortraitConfig, TganConfig, VideoConfig, WindowConfig
from avatar.drive.viseme_model import VisemeModel
from avatar.drive.visemes import VISEMES
from avatar.errors import CheckpointError, GeneratorError
from avatar.generators import load_generator
from avatar.generators.tgan import (
    CHECKPOINT_FORMAT,
    TganGenerator,
    TganModel,
    draw_noise,
    face_crop_box,
    load_tgan,
    load_tgan_generator,
    num_levels,
    save_tgan,
)
from avatar.portrait import Portrait, load_builtin_portrait
from avatar.train.dataset import cut_windows
from avatar.windows import AudioWindow
from tests.talking_faces import TINY

WINDOWS = WindowConfig()
VIDEO = VideoConfig(width_px=256, height_px=256)
FPS = 25


VISEME_TINY = dataclasses.replace(TINY, visemes=True)


@pytest.fixture(scope="module")
def model() -> TganModel:
    torch.manual_seed(0)
    return TganModel(TINY).eval()


@pytest.fixture(scope="module")
def viseme_model() -> TganModel:
    torch.manual_seed(0)
    return TganModel(VISEME_TINY, WINDOWS).eval()


@pytest.fixture(params=["plain", "visemes"])
def each_model(request: pytest.FixtureRequest, model: TganModel, viseme_model: TganModel) -> TganModel:
    """The model without and with viseme conditioning."""
    return model if request.param == "plain" else viseme_model




@pytest.fixture(scope="module")
def portrait() -> Portrait:
    return load_builtin_portrait("astronaut", PortraitConfig(), VIDEO)


def audio_windows(audio: np.ndarray, frames: int, start: int = 0) -> list[AudioWindow]:
    cut = cut_windows(audio, np.arange(start, start + frames), FPS, WINDOWS)
    return [
        AudioWindow(frame_index=start + i, samples=cut[i], past_samples=WINDOWS.past_samples, speaking=True, fps=FPS)
        for i in range(frames)
    ]


@pytest.mark.parametrize(
    ("height", "width", "levels"), [(128, 96, 4), (128, 128, 4), (256, 256, 5), (64, 48, 3), (32, 32, 2)]
)
def test_layer_plan_follows_the_size(height: int, width: int, levels: int) -> None:
    assert num_levels(height, width) == levels
    config = dataclasses.replace(TINY, height_px=height, width_px=width)
    model = TganModel(config).eval()
    with torch.no_grad():
        frames = model.forward_clip(
            torch.zeros(2, 3, height, width), torch.zeros(2, 3, WINDOWS.total_samples), torch.zeros(2, 3, 4)
        )
    assert frames.shape == (2, 3, 3, height, width)
    assert frames.abs().max() <= 1.0


@torch.no_grad()
def test_streaming_equals_offline(each_model: TganModel, speech: np.ndarray) -> None:
    model = each_model
    t = 20
    identity = torch.rand(2, 3, TINY.height_px, TINY.width_px) * 2 - 1
    windows = torch.from_numpy(np.stack([cut_windows(speech, np.arange(s, s + t), FPS, WINDOWS) for s in (10, 30)]))
    noise = torch.stack([draw_noise(torch.Generator().manual_seed(s), t, TINY.noise_features) for s in (1, 2)])
    offline = model.forward_clip(identity, windows, noise)
    features = model.encode_identity(identity)
    audio_hidden, noise_hidden = None, None
    streamed = []
    for k in range(t):
        frame, audio_hidden, noise_hidden = model.step(
            identity, features, audio_hidden, noise_hidden, windows[:, k], noise[:, k]
        )
        streamed.append(frame)
    torch.testing.assert_close(torch.stack(streamed, dim=1), offline, atol=1e-5, rtol=1e-4)
    # In chunks with the states carried over (as `avatar eval` makes long clips): the same frames.
    first, audio_hidden, noise_hidden = model.decode_clip(identity, features, windows[:, :7], noise[:, :7])
    rest, _, _ = model.decode_clip(identity, features, windows[:, 7:], noise[:, 7:], audio_hidden, noise_hidden)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), offline, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_future_audio_never_changes_past_frames(each_model: TganModel, speech: np.ndarray) -> None:
    model = each_model
    t, k = 30, 12
    identity = torch.rand(1, 3, TINY.height_px, TINY.width_px) * 2 - 1
    noise = draw_noise(torch.Generator().manual_seed(0), t, TINY.noise_features).unsqueeze(0)
    start = 25  # into the speech
    changed = speech.copy()
    # Frame k's window ends at s_k + lookahead: change everything after it.
    end_k = round((start + k) * 16_000 / FPS) + WINDOWS.lookahead_samples
    changed[end_k:] = np.random.default_rng(0).integers(-20000, 20000, changed.size - end_k)

    def run(audio: np.ndarray) -> torch.Tensor:
        windows = torch.from_numpy(cut_windows(audio, np.arange(start, start + t), FPS, WINDOWS)).unsqueeze(0)
        return model.forward_clip(identity, windows, noise)[0]

    before, after = run(speech), run(changed)
    assert torch.equal(before[: k + 1], after[: k + 1])
    assert not torch.allclose(before[k + 1 :], after[k + 1 :])


def _save_tiny(model: TganModel, path: Path, step: int = 7) -> Path:
    return save_tgan(path, model, step, WINDOWS, FPS)


def _generator(model: TganModel, path: Path) -> TganGenerator:
    config = AppConfig(video=VIDEO, windows=WINDOWS)
    config = dataclasses.replace(config, generator=dataclasses.replace(config.generator, checkpoint=str(path)))
    return load_tgan_generator(config, device="cpu")


def test_batch_of_streams_equals_single_steps(
    each_model: TganModel, portrait: Portrait, speech: np.ndarray, tmp_path: Path
) -> None:
    model = each_model
    generator = _generator(model, _save_tiny(model, tmp_path / "m.safetensors"))
    seeds = (0, 1, 2)
    batched = [generator.new_stream(portrait, s) for s in seeds]
    single = [generator.new_stream(portrait, s) for s in seeds]
    starts = (20, 40, 60)
    for k in range(6):
        windows = [audio_windows(speech, 1, s + k)[0] for s in starts]
        together = generator.generate(batched, windows)
        apart = torch.cat([generator.generate([stream], [w]) for stream, w in zip(single, windows, strict=True)])
        torch.testing.assert_close(together, apart, atol=1e-5, rtol=1e-4)
    assert all(s.frame_index == 6 for s in batched + single)


def test_frames_are_pasted_into_the_portrait(model: TganModel, portrait: Portrait, speech: np.ndarray, tmp_path: Path):
    generator = _generator(model, _save_tiny(model, tmp_path / "m.safetensors"))
    stream = generator.new_stream(portrait, seed=3)
    idle = generator.idle_frame(stream)
    assert np.array_equal(idle, portrait.rgb)
    frames = generator.step([stream], audio_windows(speech, 1, 30))
    rgb = frames[0].rgb
    assert rgb.shape == (VIDEO.height_px, VIDEO.width_px, 3) and rgb.dtype == np.uint8
    x, y, w, h = stream.box
    outside = np.ones(rgb.shape[:2], bool)
    outside[max(y, 0) : y + h, max(x, 0) : x + w] = False
    assert np.array_equal(rgb[outside], portrait.rgb[outside])  # the picture outside the face stays
    assert not np.array_equal(rgb, portrait.rgb)  # an untrained model changes the face
    box = face_crop_box(portrait.landmarks, TINY.height_px, TINY.width_px)
    fx, fy, fw, fh = portrait.face_box
    assert box[0] <= fx and box[0] + box[2] >= fx + fw  # the crop holds the face
    assert box[1] <= fy and box[1] + box[3] >= fy + fh


def test_checkpoint_round_trip(each_model: TganModel, tmp_path: Path) -> None:
    model = each_model
    path = _save_tiny(model, tmp_path / "m.safetensors", step=42)
    loaded, info = load_tgan(path)
    assert info.config == model.config and info.step == 42 and info.windows == WINDOWS and info.fps == FPS
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    config = AppConfig(video=VIDEO, generator=dataclasses.replace(AppConfig().generator, name="tgan", device="cpu"))
    config = dataclasses.replace(config, generator=dataclasses.replace(config.generator, checkpoint=str(path)))
    assert isinstance(load_generator(config), TganGenerator)


def _write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def _metadata(config: TganConfig) -> dict[str, str]:
    return {
        "format": CHECKPOINT_FORMAT,
        "tgan_config": json.dumps(dataclasses.asdict(config)),
        "windows": json.dumps(dataclasses.asdict(WINDOWS)),
        "fps": "25",
        "step": "1",
    }


def test_bad_checkpoints_say_what_is_wrong(model: TganModel, tmp_path: Path) -> None:
    tensors = model.state_dict()
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_tgan(tmp_path / "nope.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_tgan(garbage)
    other = _write(tmp_path / "other.safetensors", {"x": torch.zeros(1)}, {"format": "something-else"})
    with pytest.raises(CheckpointError, match="not a tgan checkpoint"):
        load_tgan(other)
    no_config = _write(tmp_path / "nc.safetensors", tensors, {"format": CHECKPOINT_FORMAT})
    with pytest.raises(CheckpointError, match="no model config"):
        load_tgan(no_config)
    missing = dict(tensors)
    del missing["decoder.to_rgb.weight"]
    with pytest.raises(CheckpointError, match="missing tensor decoder.to_rgb.weight"):
        load_tgan(_write(tmp_path / "missing.safetensors", missing, _metadata(TINY)))
    # Tensors of a 64x48 model under a config that says 128x96 (one more layer) or wider layers.
    big = dataclasses.replace(TINY, height_px=128, width_px=96)
    with pytest.raises(CheckpointError, match=r"missing tensor .* for a 128x96 model"):
        load_tgan(_write(tmp_path / "levels.safetensors", tensors, _metadata(big)))
    wide = dataclasses.replace(TINY, identity_channels=16)
    with pytest.raises(CheckpointError, match=r"tensor .* has shape .* but the 64x48 model .* expects"):
        load_tgan(_write(tmp_path / "shape.safetensors", tensors, _metadata(wide)))
    good = _save_tiny(model, tmp_path / "good.safetensors")
    with pytest.raises(CheckpointError, match="checkpoint expects a 64x48 model but the config asks for 128x96"):
        load_tgan(good, expect=big)
    config = AppConfig(windows=WindowConfig(window_s=0.3))
    config = dataclasses.replace(config, generator=dataclasses.replace(config.generator, checkpoint=str(good)))
    with pytest.raises(CheckpointError, match="trained on 0.2 s windows"):
        load_tgan_generator(config)
    with pytest.raises(CheckpointError, match="no checkpoint is given"):
        load_tgan_generator(AppConfig())


@torch.no_grad()
def test_viseme_conditioning_is_the_viseme_models_reading(viseme_model: TganModel, speech: np.ndarray) -> None:
    windows = cut_windows(speech, np.arange(20, 45), FPS, WINDOWS)
    conditioning = viseme_model.conditioning(torch.from_numpy(windows).unsqueeze(0))[0]
    reading = VisemeModel.load().predict(windows, WINDOWS.past_samples)
    torch.testing.assert_close(conditioning[:, :-1], torch.from_numpy(reading.probabilities), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(conditioning[:, -1], torch.from_numpy(reading.jaw), atol=1e-5, rtol=1e-4)
    assert conditioning[:, :-1].argmax(dim=1).unique().numel() >= 3  # speech: several mouth shapes
    assert not any(p.requires_grad for p in viseme_model.viseme_conditioner.parameters())
    # The frames depend on it: another reading of the same audio makes other frames.
    identity = torch.rand(1, 3, TINY.height_px, TINY.width_px) * 2 - 1
    noise = draw_noise(torch.Generator().manual_seed(0), windows.shape[0], TINY.noise_features).unsqueeze(0)
    audio = torch.from_numpy(windows).unsqueeze(0)
    frames = viseme_model.forward_clip(identity, audio, noise)
    other = copy.deepcopy(viseme_model)
    other.viseme_conditioner.net.head[3].bias.add_(2.0 * torch.arange(len(VISEMES) + 1.0))
    assert not torch.allclose(other.forward_clip(identity, audio, noise), frames, atol=1e-4)


def test_a_checkpoint_keeps_the_viseme_weights_it_was_trained_with(viseme_model: TganModel, tmp_path: Path) -> None:
    trained = copy.deepcopy(viseme_model)
    with torch.no_grad():
        trained.viseme_conditioner.net.head[3].weight.mul_(0.5)  # not the shipped weights any more
        trained.viseme_conditioner.lookahead_samples.fill_(320)
    loaded, info = load_tgan(_save_tiny(trained, tmp_path / "v.safetensors"))
    assert info.config.visemes is True and loaded.viseme_conditioner is not None
    assert torch.equal(loaded.viseme_conditioner.net.head[3].weight, trained.viseme_conditioner.net.head[3].weight)
    assert int(loaded.viseme_conditioner.lookahead_samples) == 320
    assert not loaded.viseme_conditioner.net.head[3].weight.requires_grad
    with pytest.raises(GeneratorError, match="needs the audio windows"):
        TganModel(VISEME_TINY)


def test_checkpoints_from_before_viseme_conditioning_still_load(
    model: TganModel, viseme_model: TganModel, tmp_path: Path
) -> None:
    metadata = _metadata(TINY)
    older = dataclasses.asdict(TINY)
    del older["visemes"]
    metadata["tgan_config"] = json.dumps(older)
    loaded, info = load_tgan(_write(tmp_path / "old.safetensors", model.state_dict(), metadata))
    assert info.config == TINY and loaded.viseme_conditioner is None
    # A conditioned model's tensors under a plain model's config: said plainly.
    with pytest.raises(CheckpointError, match="unexpected tensor viseme_conditioner"):
        load_tgan(_write(tmp_path / "mixed.safetensors", viseme_model.state_dict(), _metadata(TINY)))
