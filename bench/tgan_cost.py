"""Cost of the temporal-GAN generator: one training step, and one streamed frame at batch 1, 8, 32.

For each model size (128x96, the paper's; 128x128; 256x256 unless --no-256) with the default widths
of TganConfig (untrained weights: cost does not depend on them):
- parameters of each module;
- one training step (critics + generator, all three critics) on a synthetic batch of B clips of T
  frames (default: the config's 8 x 16 on CUDA, 2 x 8 on the CPU, where the full batch takes long);
- streaming: `TganGenerator.generate` (the batched model step for N streams, face crops only) and
  `TganGenerator.step` (the same plus the paste into a 512x512 portrait and the copy to the CPU),
  per call and per frame, at N = 1, 8, 32.
Runs on CUDA when present (timed with synchronisation), else the CPU; each figure is the best of
--repeat runs. Prints a table, then one JSON line with every number.

    .venv/bin/python bench/tgan_cost.py [--device cpu] [--repeat 5] [--no-256]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from avatar.config import AppConfig, GeneratorConfig, TganConfig, TrainConfig, VideoConfig  # noqa: E402
from avatar.generators.tgan import TganModel, describe, load_tgan_generator, save_tgan  # noqa: E402
from avatar.portrait import default_portrait  # noqa: E402
from avatar.train.dataset import Batch  # noqa: E402
from avatar.train.loop import new_training_state, train_step  # noqa: E402
from avatar.windows import AudioWindow  # noqa: E402


def timed(fn: Callable[[], object], device: torch.device, repeat: int, warmup: int = 1) -> float:
    """Best (least) seconds of `fn` over `repeat` runs after `warmup` runs: on a shared machine the
    minimum is the least disturbed estimate of the cost itself."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    return min(times)


def step_flops(tgan: TganConfig) -> dict[str, float]:
    """GFLOP of one streamed frame and of the identity encoding (once per stream): load-independent."""
    from torch.utils.flop_counter import FlopCounterMode

    model = TganModel(tgan, AppConfig().windows).eval()
    identity = torch.zeros(1, 3, tgan.height_px, tgan.width_px)
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            features = model.encode_identity(identity)
        identity_flops = counter.get_total_flops()
        audio_hidden, noise_hidden = model.initial_hidden(1, torch.device("cpu"))
        windows = torch.zeros(1, AppConfig().windows.total_samples)
        counter = FlopCounterMode(display=False)
        with counter:
            model.step(identity, features, audio_hidden, noise_hidden, windows, torch.zeros(1, tgan.noise_features))
    return {"frame_gflop": counter.get_total_flops() / 1e9, "identity_gflop": identity_flops / 1e9}


def bench_size(
    height: int, width: int, device: torch.device, repeat: int, batch: int, frames: int, batches: list[int]
) -> dict[str, object]:
    tgan = TganConfig(height_px=height, width_px=width)
    config = AppConfig(
        video=VideoConfig(width_px=512, height_px=512),
        tgan=tgan,
        train=TrainConfig(batch_size=batch, clip_frames=frames),
        generator=GeneratorConfig(device=str(device)),
    )
    result: dict[str, object] = {"size": f"{height}x{width}", "params": describe(TganModel(tgan, config.windows))}
    result.update(step_flops(tgan))

    # One training step on random data of the right shapes.
    state = new_training_state(config, device)
    s = config.windows.total_samples
    data = Batch(
        identity=torch.rand(batch, 3, height, width) * 2 - 1,
        frames=torch.rand(batch, frames, 3, height, width) * 2 - 1,
        windows=(torch.randn(batch, frames, s) * 0.1),
    ).to(device)
    rng = np.random.default_rng(0)
    result["train_batch"] = f"{batch}x{frames}"
    result["train_step_s"] = timed(lambda: train_step(state, data, config, rng), device, max(2, repeat // 2))

    # Streaming through the FrameGenerator.
    with tempfile.TemporaryDirectory() as tmp:
        model = TganModel(tgan, config.windows)
        path = save_tgan(Path(tmp) / "bench.safetensors", model, 0, config.windows, config.video.fps)
        config = dataclasses.replace(config, generator=dataclasses.replace(config.generator, checkpoint=str(path)))
        generator = load_tgan_generator(config, device=device)
    portrait = default_portrait(config)
    window = AudioWindow(
        frame_index=0,
        samples=(np.random.default_rng(1).standard_normal(s) * 0.1).astype(np.float32),
        past_samples=config.windows.past_samples,
        speaking=True,
        fps=config.video.fps,
    )
    streaming = {}
    for n in batches:
        streams = [generator.new_stream(portrait, seed) for seed in range(n)]
        windows = [window] * n
        model_s = timed(lambda: generator.generate(streams, windows), device, repeat)  # noqa: B023
        full_s = timed(lambda: generator.step(streams, windows), device, repeat)  # noqa: B023
        streaming[str(n)] = {
            "model_step_ms": 1000 * model_s,
            "model_ms_per_frame": 1000 * model_s / n,
            "step_with_paste_ms": 1000 * full_s,
            "ms_per_frame": 1000 * full_s / n,
        }
    result["streaming"] = streaming
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-256", action="store_true", help="skip 256x256")
    parser.add_argument("--train-batch", type=int, default=None, help="clips per training step")
    parser.add_argument("--train-frames", type=int, default=None, help="frames per training clip")
    args = parser.parse_args()
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    defaults = TrainConfig()
    batch = args.train_batch or (defaults.batch_size if device.type == "cuda" else 2)
    frames = args.train_frames or (defaults.clip_frames if device.type == "cuda" else 8)
    sizes = [(128, 96), (128, 128)] + ([] if args.no_256 else [(256, 256)])
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {where}; torch {torch.__version__}")
    results = []
    for height, width in sizes:
        r = bench_size(height, width, device, args.repeat, batch, frames, [1, 8, 32])
        results.append(r)
        params = r["params"]
        assert isinstance(params, dict)
        print(
            f"\n{r['size']}: {params['total'] / 1e6:.2f} M parameters "
            f"(identity {params['identity_encoder'] / 1e6:.2f} M, audio {params['audio_encoder'] / 1e6:.2f} M, "
            f"decoder {params['decoder'] / 1e6:.2f} M)"
        )
        print(
            f"  one frame: {r['frame_gflop']:.2f} GFLOP; identity encoding per stream: {r['identity_gflop']:.2f} GFLOP"
        )
        print(f"  training step ({r['train_batch']} clips x frames): {r['train_step_s']:.3f} s")
        streaming = r["streaming"]
        assert isinstance(streaming, dict)
        for n, row in streaming.items():
            print(
                f"  stream batch {n:>2}: model {row['model_step_ms']:8.1f} ms "
                f"({row['model_ms_per_frame']:6.2f} ms/frame)"
                f"   with paste at 512x512 {row['step_with_paste_ms']:8.1f} ms ({row['ms_per_frame']:6.2f} ms/frame)"
            )
    print(json.dumps({"device": where, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
