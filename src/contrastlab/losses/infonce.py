"""NT-Xent / InfoNCE over a batch of paired views (SimCLR's loss), with the DCL/HCL/decoupled switch."""

from __future__ import annotations

import torch

from contrastlab.losses.contrastive import batch_info_nce, batch_pairs, contrastive_loss


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, kind: str = "infonce",
            tau_plus: float = 0.1, beta: float = 1.0, vmf_sigma: float | None = None) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy (or DCL / HCL / decoupled on the same negatives).

    For each of the 2B embeddings ``a`` with positive ``p(a)`` (the other view of the same
    image), ``L_a = -log exp(s_ap / t) / sum_{k != a} exp(s_ak / t)`` with cosine similarity
    ``s``; the denominator includes the positive (2B - 1 terms). Returns the mean over the
    anchors of this process. Under ``torch.distributed`` the negatives are gathered from every
    rank with gradients, so the loss averaged over ranks equals the loss of one process over
    the whole batch.

    ``"infonce"`` is computed on the full similarity matrix (:func:`batch_info_nce`: one
    matmul, the self-similarities masked, a fused cross-entropy); the others on the
    ``(pos, neg)`` of :func:`batch_pairs`. In at least float32, whatever the autocast.

    Args:
        z1, z2: ``(B, D)`` projections of the two views (normalised here).
        temperature: ``t > 0``.
        kind: ``"infonce"``, ``"dcl"``, ``"hcl"`` or ``"decoupled"`` (see :func:`contrastive_loss`).
    """
    if kind == "infonce":
        return batch_info_nce(z1, z2, temperature)
    return contrastive_loss(*batch_pairs(z1, z2), temperature, kind, tau_plus, beta, vmf_sigma)
