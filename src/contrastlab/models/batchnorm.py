"""BatchNorm helpers for extra forward passes inside a training step."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@contextmanager
def batch_statistics_only(module: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, every BatchNorm layer of ``module`` that is in training mode
    normalises with the current batch's statistics and leaves its running statistics (and
    ``num_batches_tracked``) untouched; the layers' settings are restored afterwards.

    For auxiliary forward passes (InvCLR's penalty pass, virtual steps of meta-learning) that
    must not count as extra training batches.
    """
    layers = [m for m in module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    for layer in layers:
        layer.track_running_stats = False
    try:
        yield module
    finally:
        for layer in layers:
            layer.track_running_stats = True
