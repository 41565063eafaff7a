"""Loading a generator: device choice and the CPU thread setting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avatar.config import AppConfig, with_overrides
from avatar.errors import DeviceError, GeneratorError
from avatar.generators import GeneratorStream, load_generator, resolve_device
from avatar.windows import AudioWindow


def test_cpu_threads_are_set_where_the_generator_is_loaded() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)  # so the check below cannot pass by itself
        generator = load_generator(with_overrides(AppConfig(), generator={"device": "cpu", "cpu_threads": 1}))
        assert generator.device.type == "cpu"
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error given when no GPU is present")
def test_asking_for_cuda_without_one_is_a_clear_error() -> None:
    config = with_overrides(AppConfig(), generator={"device": "cuda"})
    with pytest.raises(DeviceError, match="no CUDA device"):
        resolve_device(config.generator)
    assert resolve_device(AppConfig().generator).type == "cpu"


def test_tgan_without_a_checkpoint_is_a_clear_error() -> None:
    config = with_overrides(AppConfig(), generator={"name": "tgan", "device": "cpu"})
    with pytest.raises(GeneratorError, match="checkpoint"):
        load_generator(config)


def test_a_step_refuses_mismatched_arguments(config: AppConfig) -> None:
    from avatar.portrait import default_portrait

    small = with_overrides(config, video={"width_px": 128, "height_px": 128})
    generator = load_generator(small)
    stream = generator.new_stream(default_portrait(small), seed=0)
    with pytest.raises(GeneratorError, match="1 streams but 0 audio windows"):
        generator.step([stream], [])

    class ForeignStream(GeneratorStream):
        frame_index = 0

    window = AudioWindow(frame_index=0, samples=np.zeros(small.windows.total_samples, np.float32),
                         past_samples=small.windows.past_samples, speaking=False, fps=small.video.fps)
    with pytest.raises(GeneratorError, match="another generator"):
        generator.step([ForeignStream()], [window])
    assert generator.step([], []) == []
