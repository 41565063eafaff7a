"""The training loop: `train(config, data_dir, run_dir)` -> path of the last checkpoint.

One step: a batch of B clips of T frames; the generator makes the clips from the identity frame, the
audio windows and fresh noise; the critics learn real from fake (frame, sequence, sync), then the
generator learns to fool them while reconstructing the real frames (weighted L1). Adam for both
(lr from the config, betas 0.5/0.999). On CUDA the forward passes run under autocast (bfloat16 where
supported, else float16 with a gradient scaler); on the CPU in float32.

The run folder holds the checkpoints (see checkpoint.py), `metrics.jsonl` (one JSON object per logged
step) and `cache/` (the prepared clips). Running again on the same folder resumes from its newest
checkpoint and trains up to `train.steps`; batches are drawn from an RNG seeded by (seed, step), so a
resumed run sees the batches an uninterrupted one would have.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from avatar.config import AppConfig, TrainConfig
from avatar.generators.base import resolve_device
from avatar.generators.tgan import NOISE_STD, TganModel, describe
from avatar.train.checkpoint import TrainingState, latest_checkpoint, load_checkpoint, save_checkpoint
from avatar.train.dataset import Batch, TalkingFaces, sample_batch
from avatar.train.discriminators import SYNC_FRAMES, Discriminators, mouth_region
from avatar.train.losses import critic_loss, generator_adversarial_loss, reconstruction_loss

log = logging.getLogger(__name__)

BETAS = (0.5, 0.999)
MIN_SYNC_SHIFT = 3  # frames between a mouth chunk and the audio of an off-sync pair


def new_training_state(config: AppConfig, device: torch.device) -> TrainingState:
    torch.manual_seed(config.generator.seed)
    generator = TganModel(config.tgan, config.windows).to(device)
    discriminators = Discriminators(config.tgan).to(device)
    lr = config.train.learning_rate
    amp_fp16 = _amp_dtype(config.train, device) == torch.float16
    return TrainingState(
        generator=generator,
        discriminators=discriminators,
        optimizer_g=torch.optim.Adam(_trainable(generator), lr=lr, betas=BETAS),
        optimizer_d=torch.optim.Adam(discriminators.parameters(), lr=lr, betas=BETAS),
        scaler=torch.amp.GradScaler(device.type, enabled=amp_fp16),
    )


def _trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The weights the optimiser changes: not the frozen viseme conditioner's."""
    return [p for p in module.parameters() if p.requires_grad]


def _amp_dtype(train: TrainConfig, device: torch.device) -> torch.dtype | None:
    if not train.mixed_precision or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _autocast(train: TrainConfig, device: torch.device) -> AbstractContextManager[object]:
    dtype = _amp_dtype(train, device)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def _sync_offsets(clip_frames: int, rng: np.random.Generator) -> tuple[int, int]:
    """Start of the in-sync chunk, and of the audio for the off-sync pair (at least 3 frames away)."""
    k = min(SYNC_FRAMES, clip_frames)
    starts = np.arange(clip_frames - k + 1)
    a = int(rng.choice(starts))
    far = starts[np.abs(starts - a) >= MIN_SYNC_SHIFT]
    return a, int(rng.choice(far)) if far.size else -1


def _sync_chunks(batch: Batch, frames: torch.Tensor, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mouths [B, K, 3, h, w], windows in sync [B, K, S], windows off sync [B, K, S])."""
    k = SYNC_FRAMES
    mouths = mouth_region(frames[:, a : a + k])
    in_sync = batch.windows[:, a : a + k]
    if b >= 0:
        off_sync = batch.windows[:, b : b + k]
    else:  # clips too short to shift: pair with another clip's audio
        off_sync = in_sync.roll(1, dims=0)
    return mouths, in_sync, off_sync


def train_step(state: TrainingState, batch: Batch, config: AppConfig, rng: np.random.Generator) -> dict[str, float]:
    """One critic update and one generator update; returns the losses as floats.

    A critic whose weight is 0 is skipped entirely (its loss reads 0)."""
    train = config.train
    device = batch.frames.device
    g, d = state.generator, state.discriminators
    b, t = batch.frames.shape[:2]
    # Noise from the step's own RNG, so a resumed run repeats an uninterrupted one exactly.
    noise = torch.from_numpy(rng.standard_normal((b, t, config.tgan.noise_features), dtype=np.float32))
    noise = noise.to(device) * NOISE_STD
    a, shifted = _sync_offsets(t, rng)
    use_frame = train.frame_adv_weight > 0
    use_sequence = train.sequence_adv_weight > 0
    use_sync = train.sync_adv_weight > 0 and t >= SYNC_FRAMES
    flat_identity = batch.identity.unsqueeze(1).expand(-1, t, -1, -1, -1).flatten(0, 1)
    zero = torch.zeros((), device=device)
    losses = dict.fromkeys(("d_frame", "d_sequence", "d_sync", "g_frame", "g_sequence", "g_sync"), zero)

    # Critics.
    with _autocast(train, device):
        fake = g.forward_clip(batch.identity, batch.windows, noise)  # [B, T, 3, H, W]
        fake_d = fake.detach()
        if use_frame:
            losses["d_frame"] = critic_loss(
                d.frame(batch.frames.flatten(0, 1), flat_identity), d.frame(fake_d.flatten(0, 1), flat_identity)
            )
        if use_sequence:
            losses["d_sequence"] = critic_loss(
                d.sequence(batch.frames, batch.windows), d.sequence(fake_d, batch.windows)
            )
        if use_sync:
            real_mouths, in_sync, off_sync = _sync_chunks(batch, batch.frames, a, shifted)
            fake_mouths = mouth_region(fake_d[:, a : a + SYNC_FRAMES])
            real_logits = d.sync(real_mouths, in_sync)
            fake_logits = torch.cat([d.sync(real_mouths, off_sync), d.sync(fake_mouths, in_sync)])
            losses["d_sync"] = critic_loss(real_logits, fake_logits)
        loss_d = (
            train.frame_adv_weight * losses["d_frame"]
            + train.sequence_adv_weight * losses["d_sequence"]
            + train.sync_adv_weight * losses["d_sync"]
        )
    if use_frame or use_sequence or use_sync:
        state.optimizer_d.zero_grad(set_to_none=True)
        state.scaler.scale(loss_d).backward()
        state.scaler.step(state.optimizer_d)

    # Generator; the critics are frozen meanwhile (no gradients for their weights).
    d.requires_grad_(False)
    with _autocast(train, device):
        loss_l1 = reconstruction_loss(fake, batch.frames, train.lower_face_weight)
        if use_frame:
            losses["g_frame"] = generator_adversarial_loss(d.frame(fake.flatten(0, 1), flat_identity))
        if use_sequence:
            losses["g_sequence"] = generator_adversarial_loss(d.sequence(fake, batch.windows))
        if use_sync:
            fake_mouths = mouth_region(fake[:, a : a + SYNC_FRAMES])
            losses["g_sync"] = generator_adversarial_loss(d.sync(fake_mouths, batch.windows[:, a : a + SYNC_FRAMES]))
        loss_g = (
            train.l1_weight * loss_l1
            + train.frame_adv_weight * losses["g_frame"]
            + train.sequence_adv_weight * losses["g_sequence"]
            + train.sync_adv_weight * losses["g_sync"]
        )
    state.optimizer_g.zero_grad(set_to_none=True)
    state.scaler.scale(loss_g).backward()
    state.scaler.step(state.optimizer_g)
    state.scaler.update()
    d.requires_grad_(True)
    state.step += 1
    out = {"l1": float(loss_l1.detach()), "g": float(loss_g.detach()), "d": float(loss_d.detach())}
    out.update({k: float(v.detach()) for k, v in losses.items()})
    return out


def train(config: AppConfig, data_dir: Path, run_dir: Path, progress: bool = True) -> Path:
    """Train (or resume) in `run_dir` up to config.train.steps; returns the last checkpoint's path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.generator)
    train_cfg = config.train
    data = TalkingFaces(
        data_dir, config.tgan, config.video.fps, train_cfg.holdout_fraction, run_dir / "cache"
    )
    clips = data.train_clips(train_cfg.clip_frames)
    log.info(
        "training on %d clips (%.1f s), %d held out, on %s",
        len(clips),
        sum(c.duration_s for c in clips),
        len(data.holdout_paths),
        device,
    )
    state = new_training_state(config, device)
    log.info("generator: %s", describe(state.generator))
    last = latest_checkpoint(run_dir)
    if last is not None:
        load_checkpoint(last, state, config.tgan, device)
        log.info("resumed from %s (step %d)", last, state.step)
    if state.step >= train_cfg.steps:
        assert last is not None
        log.info("run already at step %d of %d", state.step, train_cfg.steps)
        return last
    state.generator.train()
    state.discriminators.train()
    metrics_path = run_dir / "metrics.jsonl"
    bar = tqdm(total=train_cfg.steps, initial=state.step, disable=not progress, unit="step", dynamic_ncols=True)
    started = time.perf_counter()
    with metrics_path.open("a", encoding="utf-8") as metrics_file:
        while state.step < train_cfg.steps:
            rng = np.random.default_rng([config.generator.seed, state.step])
            batch = sample_batch(clips, train_cfg.batch_size, train_cfg.clip_frames, config.windows, rng).to(device)
            losses = train_step(state, batch, config, rng)
            bar.update(1)
            bar.set_postfix(l1=f"{losses['l1']:.4f}", d=f"{losses['d']:.3f}")
            if state.step % train_cfg.log_every == 0 or state.step == train_cfg.steps:
                record = {"step": state.step, "time_s": round(time.perf_counter() - started, 3), **losses}
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
                log.info("step %d: %s", state.step, " ".join(f"{k}={v:.4f}" for k, v in losses.items()))
            if state.step % train_cfg.checkpoint_every == 0 or state.step == train_cfg.steps:
                last = save_checkpoint(run_dir, state, config.windows, config.video.fps)
                log.info("saved %s", last)
    bar.close()
    assert last is not None
    return last
