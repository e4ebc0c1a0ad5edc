"""Barlow Twins' redundancy-reduction loss on the cross-correlation of two views."""

from __future__ import annotations

import torch

from contrastlab.core.distributed import gather_with_grad

EPS = 1e-5  # as BatchNorm1d(affine=False), which the reference implementation uses


def cross_correlation(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """``C = z1n^T z2n / N``: ``(D, D)``, where each view is standardised per dimension over
    the batch (biased variance + 1e-5, as BatchNorm; constant dimensions give 0, not NaN).

    Args:
        z1, z2: ``(B, D)`` local views; under torch.distributed both are gathered from every rank
            with gradients, so ``N = world * B`` and every rank gets the same ``C``.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be (B, D), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    dtype = torch.promote_types(z1.dtype, torch.float32)
    z1, z2 = gather_with_grad(z1.to(dtype)), gather_with_grad(z2.to(dtype))
    if z1.shape[0] < 2:
        raise ValueError(f"cross_correlation standardises over the batch and needs >= 2 samples, got {z1.shape[0]}")

    def standardise(z: torch.Tensor) -> torch.Tensor:
        return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + EPS)

    return standardise(z1).T @ standardise(z2) / z1.shape[0]


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051) -> torch.Tensor:
    """``sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2`` with ``C`` from :func:`cross_correlation`.

    Under torch.distributed every rank computes the loss of the whole gathered batch, so each
    returns the same value; the gather's backward sums the gradient of that value over ranks
    (world x the gradient) and DDP's average divides it back: the result equals one process
    over the whole batch.

    Args:
        z1, z2: ``(B, D)`` projector outputs of the two views.
    """
    c = cross_correlation(z1, z2)
    diagonal = torch.diagonal(c)
    off_diagonal = c.pow(2).sum() - diagonal.pow(2).sum()
    return (1 - diagonal).pow(2).sum() + lambd * off_diagonal
