"""The human-face check (avatar.face_check), measured: how many faces and painting stand-ins pass,
how many false faces (harvested HOG near-faces, random boxes, boxes on a cat's face) are refused,
and what the check costs per image.

    .venv/bin/python bench/face_check.py            # every case (several minutes on 2 cores)
    .venv/bin/python bench/face_check.py --quick    # a sample (about a minute)

The cases are described in tests/face_cases.py. Prints one table, then every case on the wrong
side; the numbers go in the issue note.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from avatar.face_check import face_evidence  # noqa: E402
from tests.face_cases import Case, negative_cases, positive_cases  # noqa: E402

_GROUPS = (("faces", True), ("paintings", True), ("non-faces", False), ("cat", False))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a sample of the cases")
    args = parser.parse_args()

    started = time.perf_counter()
    positives, missed = positive_cases(args.quick)
    negatives = negative_cases(args.quick)
    built_s = time.perf_counter() - started
    print(f"built {len(positives)} positive and {len(negatives)} negative cases in {built_s:.0f} s")
    face_evidence(positives[0].rgb, positives[0].landmarks)  # load the model before timing

    results: dict[str, list[tuple[Case, bool, float, float | None]]] = {group: [] for group, _ in _GROUPS}
    for case in positives + negatives:
        evidence = face_evidence(case.rgb, case.landmarks)
        results[case.group].append((case, evidence.human, evidence.seconds, evidence.cnn_confidence))

    print()
    print(f"{'set':<11} {'cases':>6} {'passed':>7} {'refused':>8} {'right':>7} {'median ms':>10} {'p95 ms':>7}")
    wrong = []
    for group, human in _GROUPS:
        rows = results[group]
        if not rows:
            continue
        passed = sum(1 for _, ok, _, _ in rows if ok)
        right = passed if human else len(rows) - passed
        ms = [1000.0 * seconds for _, _, seconds, _ in rows]
        print(
            f"{group:<11} {len(rows):>6} {passed:>7} {len(rows) - passed:>8} {100.0 * right / len(rows):>6.1f}%"
            f" {statistics.median(ms):>10.0f} {float(np.percentile(ms, 95)):>7.0f}"
        )
        wrong += [(group, case.name, confidence) for case, ok, _, confidence in rows if ok != human]
    print(f"\npositives the HOG detector does not find (not cases): {len(missed)}")
    print(f"cases on the wrong side: {len(wrong)}")
    for group, name, confidence in wrong:
        shown = "no CNN face" if confidence is None else f"CNN {confidence:+.2f}"
        print(f"  {group}: {name} ({shown})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
