"""BYOL's regression loss between online predictions and target projections."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``mean_i 2 - 2 cos(p_i, z_i)`` (= the squared distance of the normalised vectors).

    Args:
        p: ``(B, D)`` online predictions (gradients flow).
        z: ``(B, D)`` target projections; detached here (BYOL's stop-gradient).
    """
    if p.shape != z.shape or p.dim() != 2:
        raise ValueError(f"p and z must both be (B, D), got {tuple(p.shape)} and {tuple(z.shape)}")
    dtype = torch.promote_types(p.dtype, torch.float32)  # fp16/bf16 -> fp32, fp64 stays
    return (2 - 2 * F.cosine_similarity(p.to(dtype), z.detach().to(dtype), dim=1)).mean()
