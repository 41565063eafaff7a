"""Per-frame cost of the warp animator: ms per step and per frame, by output size and batch size.

Each configuration builds the animator, opens `batch` streams on the built-in portrait (different
seeds), warms up, then times `--steps` batched steps on windows of real espeak-ng speech (so the
mouth, blinks and head all move). Runs on the CPU, and on CUDA when one is available (or on the
devices given with --device). Prints one line per configuration and a JSON line at the end.

    .venv/bin/python bench/animator_cost.py [--sizes 256 512] [--batches 1 8] [--steps 30] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from avatar.audio import load_audio_file
from avatar.config import AppConfig, with_overrides
from avatar.generators.warp import WarpAnimator
from avatar.portrait import load_builtin_portrait
from avatar.speech import DEMO_SENTENCE, synthesize_speech
from avatar.windows import iter_clip_windows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--device", action="append", help="cpu, cuda, ... (default: cpu and cuda if present)")
    parser.add_argument(
        "--threads", type=int, nargs="+",
        help="torch intra-op threads to try on the CPU (default: 1 and torch's default)",
    )
    args = parser.parse_args()
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    default_threads = torch.get_num_threads()
    thread_counts = args.threads or sorted({1, default_threads})

    with tempfile.TemporaryDirectory() as tmp:
        samples = load_audio_file(synthesize_speech(DEMO_SENTENCE, Path(tmp) / "speech.wav"))
    print(f"torch {torch.__version__}, default {default_threads} CPU threads, devices {devices}")
    results = []
    runs = [(d, n) for d in devices for n in (thread_counts if d == "cpu" else [default_threads])]
    for device_name, threads in runs:
        device = torch.device(device_name)
        torch.set_num_threads(threads)
        for size in args.sizes:
            config = with_overrides(AppConfig(), video={"width_px": size, "height_px": size})
            portrait = load_builtin_portrait("astronaut", config.portrait, config.video)
            windows = list(iter_clip_windows(samples, config.windows, config.vad, config.video.fps))
            windows = windows[len(windows) // 10 :]  # skip the leading silence
            animator = WarpAnimator(config.warp, config.video, device)
            for batch in args.batches:
                streams = [animator.new_stream(portrait, seed) for seed in range(batch)]
                for k in range(3):
                    animator.step(streams, [windows[k % len(windows)]] * batch)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times = []
                for k in range(args.steps):
                    t0 = time.perf_counter()
                    animator.step(streams, [windows[(k + 3) % len(windows)]] * batch)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    times.append(time.perf_counter() - t0)
                ms = 1000.0 * np.array(times)
                row = {
                    "device": device_name, "threads": threads, "size": size, "batch": batch,
                    "ms_per_step_median": round(float(np.median(ms)), 2),
                    "ms_per_step_p90": round(float(np.percentile(ms, 90)), 2),
                    "ms_per_frame": round(float(np.median(ms)) / batch, 2),
                }
                results.append(row)
                print(
                    f"{device_name:5s} threads {threads} {size}x{size} batch {batch:2d}: "
                    f"{row['ms_per_step_median']:8.2f} ms/step "
                    f"(p90 {row['ms_per_step_p90']:.2f}), {row['ms_per_frame']:7.2f} ms/frame, "
                    f"{1000.0 / row['ms_per_frame']:6.1f} frames/s"
                )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
