"""MetAug's margin-injected regulariser: generated features must be harder than the originals."""

from __future__ import annotations

import functools

import torch

from contrastlab.losses.oucl import check_score_matrices, to_unit_interval

MARGIN_TYPES = ("large", "small", "mean")


def margin_injection(orig_pos: torch.Tensor, orig_neg: torch.Tensor, gen_pos: torch.Tensor,
                     gen_neg: torch.Tensor, margin: str = "large", positive_scale: float = 1e-4,
                     detach_margins: bool = False, *, rescale: bool = True) -> torch.Tensor:
    """``positive_scale mean_{i,c}[gen_pos - xi_pos]_+ + mean_{i,c}[xi_neg - gen_neg]_+``, a scalar.

    Per anchor ``i``, ``p_min`` is the least similar original positive and ``n_max`` the most
    similar original negative. The boundaries are, by ``margin``: ``"large"`` (official default)
    ``xi_pos = min(p_min, n_max)``, ``xi_neg = max(p_min, n_max)``; ``"small"`` the two swapped;
    ``"mean"`` both ``(p_min + n_max) / 2``. The hinges push generated positives below
    ``xi_pos`` and generated negatives above ``xi_neg``: generated pairs become harder than the
    hardest original ones. Elements on the right side of their boundary get no gradient.

    Units: all four inputs are scores of the same kind as :func:`oucl`'s. With ``rescale``
    (default, as in ``oucl``) they are raw scores in ``[-1, 1]`` and are mapped
    ``s -> (s + 1) / 2`` here, so the hinges are measured in the official code's ``[0, 1]``
    units; pass ``rescale=False`` for scores already in those units (or any other common unit).

    ``detach_margins=False`` (official code) lets the gradient also flow through ``xi`` into the
    original scores that define it, so the regulariser can push e.g. the hardest original
    negative up; ``True`` treats the boundaries as constants (spec 1.13 item 7, a deviation).

    Args:
        orig_pos: ``(B, P)`` and orig_neg: ``(B, N)`` scores of the original features.
        gen_pos: ``(B, P')`` and gen_neg: ``(B, N')`` scores involving generated features.
        margin: one of :data:`MARGIN_TYPES`; positive_scale: ``>= 0``, weights only the
        positive hinge (``1e-4`` in the official code).
    Returns:
        A 0-dim tensor (float32 for half-precision inputs, otherwise the input dtype).
    """
    check_score_matrices(orig_pos=orig_pos, orig_neg=orig_neg, gen_pos=gen_pos, gen_neg=gen_neg)
    if margin not in MARGIN_TYPES:
        raise ValueError(f"unknown margin '{margin}'; expected one of {', '.join(MARGIN_TYPES)}")
    if positive_scale < 0:
        raise ValueError(f"positive_scale must be >= 0, got {positive_scale}")
    all_scores = (orig_pos, orig_neg, gen_pos, gen_neg)
    dtype = functools.reduce(torch.promote_types, (s.dtype for s in all_scores), torch.float32)
    orig_pos, orig_neg, gen_pos, gen_neg = (
        to_unit_interval(s.to(dtype)) if rescale else s.to(dtype) for s in all_scores
    )
    xi_pos, xi_neg = _boundaries(orig_pos.amin(dim=1), orig_neg.amax(dim=1), margin)
    if detach_margins:
        xi_pos, xi_neg = xi_pos.detach(), xi_neg.detach()
    positive_hinge = torch.relu(gen_pos - xi_pos[:, None]).mean()  # relu: no gradient at the boundary
    negative_hinge = torch.relu(xi_neg[:, None] - gen_neg).mean()
    return positive_scale * positive_hinge + negative_hinge


def _boundaries(p_min: torch.Tensor, n_max: torch.Tensor, margin: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(xi_pos, xi_neg)``, each ``(B,)``, from ``p_min, n_max: (B,)``."""
    low, high = torch.minimum(p_min, n_max), torch.maximum(p_min, n_max)
    if margin == "large":
        return low, high
    if margin == "small":
        return high, low
    middle = (p_min + n_max) / 2
    return middle, middle
