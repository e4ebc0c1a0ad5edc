"""A log-sum-exp that can be differentiated in reverse mode through its forward-mode tangent.

torch 2.13's forward-mode formulas of ``logsumexp``, ``log_softmax``, ``softmax`` and
``cross_entropy`` modify a tensor that their backward has saved, so the tangent they produce
cannot itself be back-propagated ("modified by an inplace operation"). The meta-learning core's
exact meta-gradient (``second_order="jvp"``) needs exactly that (reverse over forward), so the
losses a meta-learned method can use are written with this composite instead, or switch to it
where their input carries a tangent (:func:`contrastlab.losses.contrastive.cross_entropy`, the
InfoNCE / NT-Xent reduction, keeps torch's fused cross-entropy otherwise).
"""

from __future__ import annotations

import torch


def logsumexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``log(sum(exp(x), dim))``, stable (the row maximum is factored out), with ``dim`` removed.

    The maximum is a detached shift: the value and every derivative are those of the plain
    log-sum-exp (the shift cancels), and every op is differentiable to any order in either mode.
    Rows that are all ``-inf`` give ``-inf``.
    """
    peak = x.detach().amax(dim, keepdim=True)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    return (x - peak).exp().sum(dim).log() + peak.squeeze(dim)


def log_softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x - logsumexp(x, dim)`` (see :func:`logsumexp`), same shape as ``x``."""
    return x - logsumexp(x, dim).unsqueeze(dim)
