"""AUC-CL's loss (Sharma, Ji, Xu, Chen; ICLR 2024): contrastive learning as AUC maximisation.

Pair scores ``h`` in [0, 1] (``h = (1 + cos) / 2``) enter the square-loss min-max surrogate of
the AUC with scalars ``a``, ``b`` (the positive and negative score means) and the dual
``alpha >= 0``::

    L = mean_pos [(h+ - a)^2 - 2 alpha h+] + w * mean_anchor sum_j [(h-_j - b)^2 + 2 alpha h-_j]
        + 2 alpha m - alpha^2   (the dual terms)  + offset

Every term is a mean of per-pair quantities (no log of a sum over the batch), so with ``a, b,
alpha`` held as per-dataset scalars a mini-batch's loss and gradient are unbiased estimates of
the full-data ones; this is the method's batch-size robustness argument.

Two modes (:func:`auc_pairs`): ``paper``, our reading of the paper's objective (``h`` for both
kinds of pair, ``w = 1 / M`` so the negative term is the mean over the ``M`` negatives, margin
``m``, ``a, b`` learned by descent and ``alpha`` by projected ascent); ``official``, the CIFAR
code (``cifar/losses.py``): positives scored ``clamp(h - 0.5, 0, 1)`` (a built-in margin), each
anchor's negatives the other ``2B - 1`` embeddings *including its own positive view*, ``a = 10``,
``alpha = 1``, ``w = 1`` (a sum over the negatives), no dual terms, ``b`` learned, and the
constant ``offset = -2B``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

AUC_MODES = ("paper", "official")


def auc_pairs(z1: torch.Tensor, z2: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of the 2B-batch: ``pos: (2B,)`` for each embedding and its other view,
    ``neg: (2B, M)`` against its negatives (``M = 2B - 2`` in ``paper`` mode, ``2B - 1`` with the
    own positive in ``official`` mode); in at least float32.

    Args:
        z1, z2: ``(B, D)`` projections of the two views (L2-normalised here).
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be (B, D), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if mode not in AUC_MODES:
        raise ValueError(f"unknown AUC-CL mode '{mode}'; expected one of {', '.join(AUC_MODES)}")
    dtype = torch.promote_types(z1.dtype, torch.float32)
    z = F.normalize(torch.cat([z1, z2]).to(dtype), dim=1)
    n = z.shape[0]
    scores = 0.5 * (1.0 + z @ z.T)  # (2B, 2B)
    rows = torch.arange(n, device=z.device)
    partner = (rows + n // 2) % n
    pos = scores[rows, partner]
    keep = ~torch.eye(n, dtype=torch.bool, device=z.device)
    if mode == "official":
        return (pos - 0.5).clamp(0.0, 1.0), scores[keep].view(n, n - 1)
    keep[rows, partner] = False
    return pos, scores[keep].view(n, n - 2)


def auc_loss(pos: torch.Tensor, neg: torch.Tensor, a: torch.Tensor | float, b: torch.Tensor | float,
             alpha: torch.Tensor | float, margin: float | None = 0.0, neg_weight: float = 1.0,
             offset: float = 0.0) -> torch.Tensor:
    """The surrogate of the module docstring on scores ``pos: (N,)``, ``neg: (N, M)``.

    Args:
        a, b, alpha: scalars (tensors to learn them; ``alpha`` through :func:`ascent` to
            maximise over it); margin: ``m``, or ``None`` to leave out the dual terms
            ``2 alpha m - alpha^2`` (the official code); neg_weight: ``w``; offset: a constant.
    """
    if pos.dim() != 1 or neg.dim() != 2 or neg.shape[0] != pos.shape[0]:
        raise ValueError(f"expected pos: (N,) and neg: (N, M), got {tuple(pos.shape)} and {tuple(neg.shape)}")
    positive = ((pos - a) ** 2 - 2.0 * alpha * pos).mean()
    negative = ((neg - b) ** 2 + 2.0 * alpha * neg).sum(dim=1).mean()
    loss = positive + neg_weight * negative + offset
    return loss if margin is None else loss + 2.0 * alpha * margin - alpha**2


class _Ascent(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return -grad


def ascent(x: torch.Tensor) -> torch.Tensor:
    """``x`` unchanged, its gradient negated: a descent step on it is an ascent step on the loss
    (the dual variable of a min-max objective, stepped by the same optimiser as the rest)."""
    return _Ascent.apply(x)
