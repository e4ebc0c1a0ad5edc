"""Representation diagnostics: alignment and uniformity (Wang & Isola, 2020), the singular
value spectrum, effective rank (Roy & Vetterli, 2007) and a 2-D PCA projection."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from contrastlab.eval.features import check_features


def alignment(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 2.0) -> float:
    """``mean_i ||z1_i - z2_i||^alpha`` of the L2-normalised pairs (0 = perfectly aligned).

    Args:
        z1, z2: ``(N, D)`` features of two views of the same ``N`` samples.
    """
    check_features("z1", z1, z2)
    check_features("z2", z2, dim=z1.shape[1])
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    return float((z1 - z2).norm(dim=1).pow(alpha).mean())


def uniformity(z: torch.Tensor, t: float = 2.0, chunk_size: int = 1024) -> float:
    """``log mean_{i<j} exp(-t ||z_i - z_j||^2)`` of the L2-normalised features, over the
    ``N (N - 1) / 2`` distinct pairs, ``chunk_size`` rows at a time (lower = more uniform).

    Args:
        z: ``(N, D)`` float, ``N >= 2``.
    """
    check_features("features", z)
    if len(z) < 2:
        raise ValueError(f"uniformity needs at least 2 samples, got {len(z)}")
    z = F.normalize(z.double(), dim=1)
    column = torch.arange(len(z), device=z.device)
    chunk_sums = []
    for start in range(0, len(z), chunk_size):
        rows = z[start:start + chunk_size]
        sq_dist = (2 - 2 * rows @ z.T).clamp_min(0)                      # (R, N)
        row = torch.arange(start, start + len(rows), device=z.device)
        later = column[None, :] > row[:, None]                            # pairs i < j only
        chunk_sums.append(torch.logsumexp((-t * sq_dist)[later], dim=0))
    num_pairs = len(z) * (len(z) - 1) / 2
    return float(torch.logsumexp(torch.stack(chunk_sums), dim=0)) - math.log(num_pairs)


def singular_values(feats: torch.Tensor) -> torch.Tensor:
    """Singular values, descending, of the column-centred ``feats``: ``(N, D)`` ->
    ``(min(N, D),)`` float64."""
    check_features("features", feats)
    x = feats.double()
    return torch.linalg.svdvals(x - x.mean(dim=0))


def effective_rank(feats: torch.Tensor) -> float:
    """``exp(H(p))`` with ``p = s / sum(s)`` the normalised singular values of the centred
    ``feats``: ``(N, D)``; between 1 and ``min(N, D)``, and 0 for constant features."""
    s = singular_values(feats)
    if s.sum() <= 0:
        return 0.0
    p = s / s.sum()
    entropy = -(p * p.clamp_min(1e-300).log()).sum()
    return float(entropy.exp())


def pca_projection(feats: torch.Tensor, dims: int = 2) -> torch.Tensor:
    """Coordinates of the centred ``feats``: ``(N, D)`` on their top ``dims`` principal
    axes: ``(N, dims)`` float32 (zero-padded when ``min(N, D) < dims``)."""
    check_features("features", feats)
    x = feats.double() - feats.double().mean(dim=0)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    coords = x @ vh[:dims].T
    return F.pad(coords, (0, dims - coords.shape[1])).float()
