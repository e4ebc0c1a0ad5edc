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

The official ImageNet code (DINO-style teacher and student heads, :func:`auc_dino_loss`) scores
a teacher's target distribution against the student's logits instead of two embeddings:
``H_ij = (1 + P_i . S_j) / 2`` (``P``: the teacher's softmax on one global view, ``S``: the
student's temperature-scaled, not softmax-ed, output on another view), positives ``H_ii``,
negatives ``H_ij, j != i``, and per (teacher view, student view) pair the surrogate with
``a = 10``, ``b = 0``, ``alpha = 1``, no dual terms, ``w = 32 / N`` and ``offset = 1``; the loss
is the mean over the pairs. These scores are not confined to [0, 1].
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


DINO_A, DINO_B, DINO_ALPHA, DINO_OFFSET = 10.0, 0.0, 1.0, 1.0


def dino_pairs(num_teacher: int, num_student: int) -> list[tuple[int, int]]:
    """``(u, v)`` for every teacher view ``u`` and student view ``v != u`` (the teacher's views
    are the student's first ``num_teacher``): ``num_teacher * (num_student - 1)`` pairs."""
    return [(u, v) for u in range(num_teacher) for v in range(num_student) if v != u]


def dino_scores(p: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``H = (1 + p @ s.T) / 2`` split into ``pos: (N,)`` (the diagonal, same image) and
    ``neg: (N, N - 1)`` (row ``i``: teacher image ``i`` against every other student image).

    Args:
        p: ``(N, K)`` teacher probabilities; s: ``(N, K)`` student logits.
    """
    if p.shape != s.shape or p.dim() != 2:
        raise ValueError(f"teacher and student outputs must both be (N, K), got {tuple(p.shape)} and {tuple(s.shape)}")
    h = 0.5 * (1.0 + p @ s.T)  # (N, N)
    n = h.shape[0]
    keep = ~torch.eye(n, dtype=torch.bool, device=h.device)
    return h.diagonal(), h[keep].view(n, n - 1)


def auc_dino_loss(teacher_probs: list[torch.Tensor], student_logits: list[torch.Tensor], neg_numerator: float = 32.0,
                  return_scores: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The official ImageNet AUC-CL loss: the mean over :func:`dino_pairs` of
    ``mean_i[(H_ii - 10)^2 - 2 H_ii] + (neg_numerator / N) mean_i sum_{j != i}[H_ij^2 + 2 H_ij] + 1``
    (:func:`auc_loss` with ``a = 10, b = 0, alpha = 1``, no dual terms, ``w = neg_numerator / N``,
    offset 1), in at least float32.

    Args:
        teacher_probs: per global view ``u``, ``(N, K)`` teacher probabilities (rows sum to 1;
            the caller detaches them); student_logits: per view ``v`` (the global views first,
            in the teacher's order), ``(N, K)`` student outputs divided by its temperature.
        neg_numerator: the negative weight's numerator (32 in the official code; ``N`` is this
            process's batch).
        return_scores: also return the mean positive and mean negative score over the pairs
            (detached).
    """
    if not teacher_probs or len(student_logits) <= len(teacher_probs):
        raise ValueError(f"expected at least one teacher view and more student views than teacher views, got "
                         f"{len(teacher_probs)} and {len(student_logits)}")
    dtype = torch.promote_types(student_logits[0].dtype, torch.float32)
    pairs = dino_pairs(len(teacher_probs), len(student_logits))
    total, pos_sum, neg_sum = 0.0, 0.0, 0.0
    for u, v in pairs:
        pos, neg = dino_scores(teacher_probs[u].to(dtype), student_logits[v].to(dtype))
        n = pos.shape[0]
        total = total + auc_loss(pos, neg, DINO_A, DINO_B, DINO_ALPHA, None, neg_numerator / n, DINO_OFFSET)
        if return_scores:
            pos_sum = pos_sum + pos.detach().mean()
            neg_sum = neg_sum + (neg.detach().mean() if neg.numel() else pos.new_zeros(()))
    loss = total / len(pairs)
    return (loss, pos_sum / len(pairs), neg_sum / len(pairs)) if return_scores else loss


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
