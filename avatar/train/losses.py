"""Losses of the temporal GAN: non-saturating adversarial losses and a face-weighted L1.

Adversarial (the standard GAN loss of the paper, on logits):
  critic:    softplus(-D(real)) + softplus(D(fake))     = -log sigmoid(D(real)) - log(1 - sigmoid(D(fake)))
  generator: softplus(-D(fake))                          = -log sigmoid(D(fake))  (non-saturating)
Reconstruction: mean |generated - real| over pixels, with the rows of the lower half of the face crop
(mouth and jaw, see face_crop_box) weighted `lower_face_weight` times the upper half, normalised so the
weights average 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def critic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(-fake_logits).mean()


def face_weights(height_px: int, lower_face_weight: float, device: torch.device | None = None) -> torch.Tensor:
    """Per-row weights [H, 1]: 1 on the upper half, lower_face_weight on the lower; mean 1."""
    rows = torch.ones(height_px, 1, device=device)
    rows[height_px // 2 :] = lower_face_weight
    return rows / rows.mean()


def reconstruction_loss(generated: torch.Tensor, real: torch.Tensor, lower_face_weight: float) -> torch.Tensor:
    """Weighted L1 over [..., 3, H, W] frames in [-1, 1]."""
    weights = face_weights(real.shape[-2], lower_face_weight, real.device)
    return ((generated.float() - real.float()).abs() * weights).mean()
