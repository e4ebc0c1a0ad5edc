"""Test-time feature averaging (InvCLR): ``h(x) = (1/M) sum_m f(t(x, alpha_m))`` over fresh
draws of a view pipeline, with the backbone frozen."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from contrastlab.data.dataset import Batch, Dataset, batch_to
from contrastlab.data.loading import eval_batches
from contrastlab.eval.features import encode, frozen

# A view pipeline: (batch, generator) -> (B, C, H, W) float normalised view.
View = Callable[[dict[str, torch.Tensor], torch.Generator], torch.Tensor]


def view_batches(
    data: Dataset,
    batch_size: int,
    device: str | torch.device = "cpu",
    index: torch.Tensor | None = None,
) -> Iterator[Batch]:
    """The batches a :data:`View` is called with, ``batch_size`` eval-mode samples of ``data``
    at a time (the samples ``index``: ``(n,)`` int64 in that order; default all of them), on
    ``device``: ``{"inputs": (B, C, H, W) uint8, "index": (B,) positions in data, "labels": (B,)
    and "targets": (B, T) when data has them, extras}``."""
    for batch in eval_batches(data, batch_size, index):
        yield batch_to(batch, torch.device(device))


def averaged_features(
    backbone: nn.Module,
    data: Dataset,
    view: View,
    num_views: int,
    generator: torch.Generator,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Frozen features of ``data`` averaged over ``num_views`` independent draws of ``view``.

    Per chunk of ``batch_size`` samples, the view is called ``num_views`` times with
    ``generator`` (so the result is deterministic given the generator's state) and the
    eval-mode features of the draws are summed in draw order, then divided by ``num_views``.

    Returns:
        ``(N, D)`` float32 on the CPU.
    """
    if isinstance(num_views, bool) or not isinstance(num_views, int) or num_views < 1:
        raise ValueError(f"num_views must be an integer >= 1, got {num_views!r}")
    chunks = []
    with frozen(backbone):
        for batch in view_batches(data, batch_size, device):
            total = encode(backbone, view(batch, generator), device, autocast_dtype)
            for _ in range(num_views - 1):
                total += encode(backbone, view(batch, generator), device, autocast_dtype)
            chunks.append(total / num_views)
    return torch.cat(chunks)
