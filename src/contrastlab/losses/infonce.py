"""NT-Xent / InfoNCE over a batch of paired views (SimCLR's loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from contrastlab.engine.distributed import gather_with_grad, rank_and_world


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy.

    For each of the 2B embeddings ``a`` with positive ``p(a)`` (the other view of the same
    image), ``L_a = -log exp(s_ap / t) / sum_{k != a} exp(s_ak / t)`` with cosine similarity
    ``s``; the denominator includes the positive (2B - 1 terms). Returns the mean over the
    anchors of this process.

    Under ``torch.distributed`` the candidates are gathered from every rank with gradients,
    so the loss averaged over ranks equals the loss of one process over the whole batch.

    Args:
        z1, z2: ``(B, D)`` projections of the two views (normalised here).
        temperature: ``t > 0``.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be (B, D), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    dtype = torch.promote_types(z1.dtype, torch.float32)  # fp16/bf16 -> fp32, fp64 stays
    z1 = F.normalize(z1.to(dtype), dim=1)
    z2 = F.normalize(z2.to(dtype), dim=1)
    rank, _ = rank_and_world()
    b = z1.shape[0]
    all1, all2 = gather_with_grad(z1), gather_with_grad(z2)
    n = all1.shape[0]
    anchors = torch.cat([z1, z2])                       # (2B, D)
    candidates = torch.cat([all1, all2])                # (2N, D)
    logits = anchors @ candidates.T / temperature       # (2B, 2N)
    local = torch.arange(b, device=z1.device) + rank * b
    self_index = torch.cat([local, local + n])
    positive_index = torch.cat([local + n, local])
    rows = torch.arange(2 * b, device=z1.device)
    logits[rows, self_index] = float("-inf")
    return F.cross_entropy(logits, positive_index)
