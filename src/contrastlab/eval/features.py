"""Frozen-backbone features, and the checks, standardisation and split every probe shares."""

from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from contrastlab.data.base import ImageData
from contrastlab.data.dataset import Dataset
from contrastlab.data.loading import eval_batches
from contrastlab.data.preprocess import Normalize

# A long computation's phases: ``with phase("features of the test split (360 samples)"): ...``
# (e.g. :meth:`contrastlab.engine.progress.PhaseLog.phase` prints each with its time).
Phase = Callable[[str], AbstractContextManager]


def quiet_phase(what: str) -> AbstractContextManager:
    """The :data:`Phase` that reports nothing."""
    return nullcontext()


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
    data: Dataset | torch.Tensor,
    normalize: Normalize,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
    num_workers: int = 0,
) -> torch.Tensor:
    """Frozen features of every sample of ``data`` -> ``(N, D)`` float32 on the CPU.

    ``data``: a dataset of the protocol (:mod:`contrastlab.data.dataset`) whose eval-mode
    ``inputs`` are ``(B, C, H, W)`` uint8 images, or such images as one ``(N, C, H, W)`` uint8
    tensor. Batches of ``batch_size`` samples (loaded in ``num_workers`` processes for a
    streamed dataset) are normalised and encoded on ``device``, in eval mode without autograd
    (under autocast when ``autocast_dtype`` is given): memory is bounded by one batch; the
    backbone's previous train/eval mode is restored afterwards.
    """
    if torch.is_tensor(data):
        if data.dtype != torch.uint8 or data.dim() != 4 or len(data) == 0:
            raise ValueError(
                f"images must be a non-empty uint8 tensor (N, C, H, W), got {data.dtype} with shape {tuple(data.shape)}"
            )
        data = ImageData(name="images", images=data)
    if len(data) == 0:
        raise ValueError(f"{data.name}: cannot extract features of an empty dataset")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    with frozen(backbone):
        return gather_rows(len(data), (
            encode(backbone, normalize(batch["inputs"].to(device)), device, autocast_dtype)
            for batch in eval_batches(data, batch_size, num_workers=num_workers)
        ))


def gather_rows(n: int, chunks: Iterable[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(chunks)`` of ``(B_i, D)`` chunks, ``sum B_i == n``, written as they come
    into one ``(n, D)`` tensor allocated at the first chunk -> ``(n, D)``.

    No chunk outlives its batch, and the features exist once (a list of chunks and its
    ``torch.cat`` hold them twice). Chunks kept until the end pinned the trainer's glibc heap:
    it grew in steps of one batch's float input (24 MiB at 512 x 3 x 64 x 64), to 689 MiB (511
    MiB of it free) by the end of 20,000 streamed images; with this, 274 MiB (96 MiB free) in
    one run, but not in every run (see :func:`~contrastlab.data.loading.release_free_heap`).
    """
    out, filled = None, 0
    for chunk in chunks:
        if out is None:
            out = chunk.new_empty((n, *chunk.shape[1:]))
        out[filled:filled + len(chunk)] = chunk
        filled += len(chunk)
    if filled != n:
        raise ValueError(f"expected {n} rows, got {filled}")
    return out


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
