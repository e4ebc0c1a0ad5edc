"""Frozen-backbone features, and the checks, standardisation and split every probe shares."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from contrastlab.data.preprocess import Normalize


@contextmanager
def frozen(backbone: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no autograd inside the block; every submodule's train/eval mode is
    restored afterwards (also when the block raises)."""
    modes = [module.training for module in backbone.modules()]
    backbone.eval()
    try:
        with torch.no_grad():
            yield backbone
    finally:
        for module, mode in zip(backbone.modules(), modes):
            module.training = mode


def encode(
    backbone: nn.Module,
    x: torch.Tensor,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Features of one batch; call inside :func:`frozen`.

    Args:
        x: ``(B, C, H, W)`` float, already normalised.
    Returns:
        ``(B, D)`` float32 on the CPU.
    """
    device = torch.device(device)
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        feats = backbone(x.to(device))
    if feats.dim() != 2:
        raise ValueError(f"the backbone must return (B, D) features, got shape {tuple(feats.shape)}")
    return feats.float().cpu()


def extract_features(
    backbone: nn.Module,
    images: torch.Tensor,
    normalize: Normalize,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Frozen features of ``images``: ``(N, C, H, W)`` uint8 -> ``(N, D)`` float32 on the CPU.

    The backbone runs in eval mode without autograd, ``batch_size`` images at a time on
    ``device`` (under autocast when ``autocast_dtype`` is given); its previous train/eval mode
    is restored afterwards.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or len(images) == 0:
        raise ValueError(
            f"images must be a non-empty uint8 tensor (N, C, H, W), "
            f"got {images.dtype} with shape {tuple(images.shape)}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    with frozen(backbone):
        return torch.cat([
            encode(backbone, normalize(chunk.to(device)), device, autocast_dtype)
            for chunk in images.split(batch_size)
        ])


def check_features(
    name: str,
    feats: torch.Tensor,
    per_sample: torch.Tensor | None = None,
    dim: int | None = None,
) -> None:
    """Raise ``ValueError`` unless ``feats`` is a non-empty ``(N, D)`` floating tensor with
    ``D == dim`` (when given) and ``per_sample`` (labels or targets) has ``N`` rows."""
    if feats.dim() != 2 or len(feats) == 0 or not feats.is_floating_point():
        raise ValueError(
            f"{name} must be a non-empty float tensor (N, D), got {feats.dtype} with shape {tuple(feats.shape)}"
        )
    if dim is not None and feats.shape[1] != dim:
        raise ValueError(f"{name} have dimension {feats.shape[1]}, expected {dim} like the train features")
    if per_sample is not None and per_sample.shape[0] != feats.shape[0]:
        raise ValueError(f"{name}: {feats.shape[0]} feature rows but {per_sample.shape[0]} labels/targets")


def standardize(train: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Standardise with ``train``'s per-feature mean and population std (a constant feature
    gets std 1, like scikit-learn's ``StandardScaler``).

    Args:
        train: ``(N, D)``; others: ``(M, D)`` each.
    Returns:
        ``(train, *others)`` standardised, same shapes.
    """
    mean = train.mean(dim=0)
    std = train.std(dim=0, unbiased=False)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return tuple((x - mean) / std for x in (train, *others))


def validation_split(
    n: int, val_fraction: float, seed: int, labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of ``range(n)`` into fit and validation indices.

    ``round(val_fraction * n)`` samples (at least 1, at most ``n - 1``) go to validation. With
    ``labels``: ``(n,)`` the split is stratified: every class's samples are spread evenly over
    ``[0, 1)`` in random order and validation takes the lowest positions, so each class gets
    close to ``val_fraction`` of its samples.

    Returns:
        ``(fit_index, val_index)``, 1-D int64, sorted.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if n < 2:
        raise ValueError(f"a validation split needs at least 2 samples, got {n}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    position = torch.zeros(n)
    if labels is not None:
        labels = labels.cpu()
        for label in labels.unique():
            members = order[labels[order] == label]
            position[members] = torch.arange(len(members)) / len(members)
    order = order[torch.argsort(position[order], stable=True)]
    num_val = min(max(round(val_fraction * n), 1), n - 1)
    return order[num_val:].sort().values, order[:num_val].sort().values
