"""MetAug's optimisation-driven unified contrastive loss (OUCL; Li et al., ICML 2022).

Works on similarity scores: ``positives: (B, P)`` between each anchor and all of its positives,
``negatives: (B, N)`` between each anchor and all of its negatives (raw cosine / dot scores
in ``[-1, 1]``). Every (positive, negative) pair of an anchor is contrasted at once.
"""

from __future__ import annotations

import torch

from contrastlab.losses.logsumexp import logsumexp


def oucl(positives: torch.Tensor, negatives: torch.Tensor, gamma: float = 16.0, *, circle: bool = False,
         circle_margin: float = 0.25, rescale: bool = True) -> torch.Tensor:
    """``(16 / gamma) mean_i log(1 + sum_p sum_n exp(gamma (s_n - s_p)))``, a scalar.

    Computed as ``softplus(LSE_n(gamma s_n) + LSE_p(-gamma s_p))`` per anchor, which never
    overflows (float32 is fine for ``gamma = 256`` and scores at +-1). The ``16 / gamma`` factor
    is the official code's normalisation (1 at its default ``gamma = 16``). With ``rescale`` the
    scores are first mapped ``s -> (s + 1) / 2`` into ``[0, 1]`` as the official code does, so
    ``gamma = 16`` equals an inverse temperature of 8 on the raw scores.

    ``circle=True`` switches on Circle-loss self-paced weights and margins (Sun et al., 2020)
    with ``m = circle_margin``: ``alpha_p = [1 + m - s_p]_+``, ``alpha_n = [s_n + m]_+`` (both
    detached, as in Circle loss), ``delta_p = 1 - m``, ``delta_n = m``; the negative logits become
    ``gamma alpha_n (s_n - delta_n)`` and the positive ones ``-gamma alpha_p (s_p - delta_p)``.
    The official code's defaults leave both off, and its "enabled" weight path overwrites the
    weights with 1, so whether the paper's OUCL uses this form is unverified: this is a switch,
    off by default to match the code.

    Args:
        positives: ``(B, P)`` scores, ``P >= 1``; negatives: ``(B, N)`` scores, ``N >= 1``.
        gamma: scale ``> 0``; circle_margin: ``m`` of the circle variant; rescale: map to [0, 1].
    Returns:
        A 0-dim tensor (float32 for half-precision inputs, otherwise the input dtype).
    """
    check_score_matrices(positives=positives, negatives=negatives)
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    dtype = torch.promote_types(torch.promote_types(positives.dtype, negatives.dtype), torch.float32)
    pos, neg = positives.to(dtype), negatives.to(dtype)
    if rescale:
        pos, neg = to_unit_interval(pos), to_unit_interval(neg)
    if circle:
        m = circle_margin
        alpha_pos = (1 + m - pos).detach().clamp_min(0)
        alpha_neg = (neg + m).detach().clamp_min(0)
        pos_logits = -gamma * alpha_pos * (pos - (1 - m))
        neg_logits = gamma * alpha_neg * (neg - m)
    else:
        pos_logits, neg_logits = -gamma * pos, gamma * neg
    pair_lse = logsumexp(neg_logits, dim=1) + logsumexp(pos_logits, dim=1)  # (B,)
    per_anchor = torch.logaddexp(torch.zeros_like(pair_lse), pair_lse)  # exact softplus
    return (16.0 / gamma) * per_anchor.mean()


def to_unit_interval(scores: torch.Tensor) -> torch.Tensor:
    """The official code's score map ``s -> (s + 1) / 2``: ``[-1, 1] -> [0, 1]``, any shape."""
    return (scores + 1) / 2


def check_score_matrices(**scores: torch.Tensor) -> None:
    """Raise a ``ValueError`` naming the argument unless every tensor is ``(B, K)`` with one ``B``.

    ``B >= 1`` and ``K >= 1`` (``K`` may differ between the tensors).
    """
    rows = None
    for name, value in scores.items():
        if value.dim() != 2 or 0 in value.shape:
            raise ValueError(f"{name} must be a (B >= 1, K >= 1) score matrix, got shape {tuple(value.shape)}")
        if rows is None:
            first_name, rows = name, value.shape[0]
        elif value.shape[0] != rows:
            raise ValueError(f"{name} has {value.shape[0]} anchors (rows) but {first_name} has {rows}")
