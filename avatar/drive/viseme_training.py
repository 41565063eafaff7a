"""Training of the viseme model from speech the project makes itself (avatar.drive.speech_data).

Every utterance is cut into one window per 10 ms hop (two hops apart), exactly as a live frame sees
its audio: `CONTEXT_S` ending `lookahead_s` after the frame's time; the label is the viseme and
jaw target at that time. Utterances spoken by the held-out voice variants are kept for the
evaluation. Seeded end to end: the same seed and counts give the same weights (on one CPU thread).

    .venv/bin/avatar train-visemes [-o avatar/drive/weights/visemes.pt] [--utterances 600] [--seed 1]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from avatar.config import SAMPLE_RATE_HZ
from avatar.drive.speech_data import Utterance, make_utterance, utterance_seed
from avatar.drive.viseme_model import CONTEXT_SAMPLES, WEIGHTS_PATH, VisemeNet, parameter_count, window_features
from avatar.drive.visemes import VISEMES

log = logging.getLogger(__name__)

HELD_OUT_VARIANTS = ("f4", "m6")  # voices never trained on: the evaluation's
WINDOW_STRIDE_HOPS = 2


@dataclass(frozen=True)
class WindowSet:
    features: np.ndarray  # (n, N_MELS + 1, N_FRAMES) float32
    classes: np.ndarray  # (n,) int64
    jaw: np.ndarray  # (n,) float32


def windows_of(utterances: Sequence[Utterance], lookahead_s: float, stride_hops: int = WINDOW_STRIDE_HOPS) -> WindowSet:
    """The live windows of each utterance's frames, with their labels."""
    ahead = round(lookahead_s * SAMPLE_RATE_HZ)
    past = CONTEXT_SAMPLES - ahead
    features, classes, jaws = [], [], []
    for u in utterances:
        audio = u.audio.astype(np.float32) / 32768.0
        padded = np.pad(audio, (past, ahead))
        hops = np.arange(0, len(u.classes), stride_hops)
        starts = hops * 160  # frame time t = 160 k samples; its window is [t - past, t + ahead)
        cut = padded[starts[:, None] + np.arange(CONTEXT_SAMPLES)[None, :]]
        features.append(window_features(cut))
        classes.append(u.classes[hops])
        jaws.append(u.jaw[hops])
    return WindowSet(np.concatenate(features), np.concatenate(classes).astype(np.int64), np.concatenate(jaws))


def held_out(u: Utterance) -> bool:
    return any(u.voice.endswith("+" + v) for v in HELD_OUT_VARIANTS)


def evaluate(net: VisemeNet, data: WindowSet) -> dict[str, float]:
    """Accuracy over all windows and per class (share of windows of a class labelled as it), jaw MAE."""
    net.eval()
    with torch.no_grad():
        logits, jaw = net(torch.from_numpy(data.features))
    predicted = logits.argmax(dim=1).numpy()
    out = {
        "accuracy": float((predicted == data.classes).mean()),
        "jaw_mae": float(np.abs(jaw.numpy() - data.jaw).mean()),
    }
    for k, name in enumerate(VISEMES):
        mask = data.classes == k
        if mask.any():
            out[f"recall_{name}"] = float((predicted[mask] == k).mean())
    return out


def train_visemes(
    output: Path = WEIGHTS_PATH,
    *,
    utterances: int = 600,
    seed: int = 1,
    epochs: int = 8,
    lookahead_s: float = 0.04,
    progress: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Make the data, train, evaluate on the held-out voices, save float16 weights; returns metrics."""
    say = progress or log.info
    torch.manual_seed(seed)
    started = time.perf_counter()
    made = [make_utterance(utterance_seed(seed, i)) for i in range(utterances)]
    train_set = windows_of([u for u in made if not held_out(u)], lookahead_s)
    test_set = windows_of([u for u in made if held_out(u)], lookahead_s, stride_hops=1)
    say(f"{len(made)} utterances, {len(train_set.classes)} training windows, {len(test_set.classes)} held out, "
        f"made in {time.perf_counter() - started:.0f} s")  # fmt: skip
    net = VisemeNet()
    counts = np.bincount(train_set.classes, minlength=len(VISEMES)).astype(np.float64)
    weights = torch.tensor((counts.sum() / np.maximum(counts, 1.0)) ** 0.5, dtype=torch.float32)
    weights = weights / weights.mean()
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=epochs)
    features = torch.from_numpy(train_set.features)
    classes = torch.from_numpy(train_set.classes)
    jaw = torch.from_numpy(train_set.jaw)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(classes), generator=generator)
        total = 0.0
        for batch in order.split(256):
            logits, jaw_hat = net(features[batch])
            loss = F.cross_entropy(logits, classes[batch], weight=weights) + 4.0 * F.mse_loss(jaw_hat, jaw[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
        schedule.step()
        metrics = evaluate(net, test_set)
        say(f"epoch {epoch + 1}/{epochs}: loss {total / len(classes):.3f}, held-out accuracy "
            f"{metrics['accuracy']:.3f}, jaw error {metrics['jaw_mae']:.3f}")  # fmt: skip
    metrics = evaluate(net, test_set)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state": {k: v.half() for k, v in net.state_dict().items()},
            "channels": 48,
            "hidden": 64,
            "lookahead_s": lookahead_s,
            "seed": seed,
            "utterances": utterances,
            "epochs": epochs,
            "metrics": metrics,
        },
        output,
    )
    say(f"{parameter_count(net)} weights saved to {output} ({output.stat().st_size / 1e3:.0f} KB)")
    return metrics
