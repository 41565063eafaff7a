"""Lips against voice at the far end of a browser call, over several runs.

Each run is the extension test's scenario (tests/extension_check.py): the server, a call page in
headless Chromium that takes the "Talking portrait" camera with its voice and relays both to a far
peer, all inside a network namespace where only `lo` is up. The drive is tests/av_sync.py's
(syllables after silence, two real recordings of a human voice, a sentence). Per run it prints the
far end's onset offsets (lips minus voice, ms, > 0: the lips trail) on WebRTC's playout clock and on
the Web Audio clock, and their spread; then the spread of the per-run medians, which is what the
far end's jitter buffers add from run to run. One JSON line at the end holds every number.

    .venv/bin/python bench/call_sync.py --runs 5 [--mouth-shapes visemes]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from avatar.config import MOUTH_SHAPES  # noqa: E402
from tests.av_sync import sync_drive_wav  # noqa: E402
from tests.conftest import SENTENCE  # noqa: E402


def one_run(wav: Path, seconds: float, mouth_shapes: str | None) -> dict[str, Any]:
    """One extension scenario in its own loopback-only namespace; its result JSON."""
    check = f"tests/extension_check.py --wav {wav} --seconds {seconds:.1f}"
    if mouth_shapes:
        check += f" --mouth-shapes {mouth_shapes}"
    script = f"ip link set lo up && exec {sys.executable} {check}"
    proc = subprocess.run(["unshare", "-n", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=180)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"no result (rc {proc.returncode}): {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mouth-shapes", choices=MOUTH_SHAPES, help="default: the config's")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wav, seconds = sync_drive_wav(Path(tmp) / "mic.wav", SENTENCE)
        runs = []
        for k in range(args.runs):
            r = one_run(wav, seconds, args.mouth_shapes)
            playout, web = r["sync"], r["sync_web_audio"]
            row = {
                "playout_median_ms": playout["onset_median_ms"], "playout_iqr_ms": playout["onset_iqr_ms"],
                "web_audio_median_ms": web["onset_median_ms"], "onsets": playout["onset_onsets"],
                "frame_interval_p95_ms": playout["frame_interval_p95_ms"], "far_fps": r["far_fps"],
            }  # fmt: skip
            runs.append(row)
            print(f"run {k + 1}: " + ", ".join(f"{key} {value}" for key, value in row.items()), flush=True)
    medians = np.asarray([row["playout_median_ms"] for row in runs])
    web = np.asarray([row["web_audio_median_ms"] for row in runs])
    summary = {
        "mouth_shapes": args.mouth_shapes or "config default",
        "runs": len(runs),
        "playout_median_of_medians_ms": round(float(np.median(medians)), 1),
        "playout_medians_min_ms": round(float(medians.min()), 1),
        "playout_medians_max_ms": round(float(medians.max()), 1),
        "web_audio_median_of_medians_ms": round(float(np.median(web)), 1),
        "web_audio_medians_range_ms": round(float(web.max() - web.min()), 1),
        "per_run": runs,
    }
    print(f"far end, playout clock: median of per-run medians {summary['playout_median_of_medians_ms']} ms, "
          f"range {summary['playout_medians_min_ms']}..{summary['playout_medians_max_ms']} ms; "
          f"Web Audio clock: median {summary['web_audio_median_of_medians_ms']} ms, "
          f"range {summary['web_audio_medians_range_ms']} ms")  # fmt: skip
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
