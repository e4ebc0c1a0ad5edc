"""Difficulty-based debiasing (Jang & Wang, CVPR 2023; official code Taeuk-Jang/WCL ``main-wctr.py``).

A second, "biased" encoder is trained with :func:`debiased_triplet_loss`, linear in the squared
distances, so every negative pulls equally and the many easy ones dominate (the encoder
amplifies the easy, biased similarities). The main encoder's DCL estimator then weighs each
negative by how much harder the main encoder finds it than the biased one
(:func:`difficulty_weights`).

Both functions take cosine similarities in SimCLR's 2B-batch convention
(:func:`~contrastlab.losses.contrastive.batch_pairs`): ``pos: (N,)`` anchor-positive,
``neg: (N, M)`` anchor-negative.
"""

from __future__ import annotations

import torch


def debiased_triplet_loss(pos: torch.Tensor, neg: torch.Tensor, tau_plus: float) -> torch.Tensor:
    """The biased encoder's loss on squared distances ``D = 2 - 2 s`` of unit vectors:
    ``mean_a [D+_a - (sum_j D_aj - tau_plus M D+_a) / (1 - tau_plus)]``, i.e. the positive
    distance weighted ``1 + tau_plus M / (1 - tau_plus)`` and each negative ``-1 / (1 - tau_plus)``
    (no margin, no hinge: unbounded below, bounded on the sphere since ``D <= 4``)."""
    if not 0.0 <= tau_plus < 1.0:
        raise ValueError(f"tau_plus must be in [0, 1), got {tau_plus}")
    if pos.dim() != 1 or neg.dim() != 2 or neg.shape[0] != pos.shape[0]:
        raise ValueError(f"expected pos: (N,) and neg: (N, M), got {tuple(pos.shape)} and {tuple(neg.shape)}")
    d_pos, d_neg = 2.0 - 2.0 * pos, 2.0 - 2.0 * neg
    m = neg.shape[1]
    negatives = (d_neg.sum(dim=1) - tau_plus * m * d_pos) / (1.0 - tau_plus)
    return (d_pos - negatives).mean()


def difficulty_weights(neg_main: torch.Tensor, neg_biased: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-negative weights in ``[1, 2)``, detached: ``w = 1 + e_d / (e_b + e_d + 1e-6)`` where
    ``e = exp(s / t)`` of each encoder, L2-normalised along each anchor's row of negatives.

    A negative the main encoder finds more similar (harder) than the biased encoder does tends
    to 2, one the biased encoder finds harder to 1; equal encoders give 1.5 everywhere.

    Args:
        neg_main, neg_biased: ``(N, M)`` anchor-negative similarities of the two encoders over
            the same negatives; temperature: ``t > 0``.
    """
    if neg_main.shape != neg_biased.shape or neg_main.dim() != 2:
        raise ValueError(f"expected two (N, M) similarity tensors, got {tuple(neg_main.shape)} and "
                         f"{tuple(neg_biased.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    with torch.no_grad():
        dtype = torch.promote_types(neg_main.dtype, torch.float32)
        main, biased = (_row_normalised_exp(s.to(dtype) / temperature) for s in (neg_main, neg_biased))
        return (1.0 + main / (biased + main + 1e-6)).to(neg_main.dtype)


def _row_normalised_exp(logits: torch.Tensor) -> torch.Tensor:
    """``exp(x) / |exp(x)|_2`` per row, with the row maximum factored out (the ratio is exact)."""
    e = (logits - logits.amax(dim=1, keepdim=True)).exp()
    return e / e.norm(dim=1, keepdim=True)
