"""BatchNorm helpers for extra forward passes inside a training step."""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@contextmanager
def batch_statistics_only(module: nn.Module, *, composite: bool = False) -> Iterator[nn.Module]:
    """Inside the block, every BatchNorm layer of ``module`` that is in training mode
    normalises with the current batch's statistics and leaves its running statistics (and
    ``num_batches_tracked``) untouched; the layers' settings are restored afterwards.

    For auxiliary forward passes (InvCLR's penalty pass, virtual steps of meta-learning) that
    must not count as extra training batches.

    ``composite=True`` also computes every BatchNorm layer from elementary ops
    (:func:`composite_batch_norm`) instead of the native kernel. Use it for forward-mode passes
    whose tangent is back-propagated (reverse over forward): torch 2.13's native batch-norm
    tangent gives wrong reverse-mode gradients to everything upstream of the layer, silently.
    """
    layers = [m for m in module.modules() if isinstance(m, _BatchNorm)]
    tracking = [layer for layer in layers if layer.track_running_stats]
    for layer in tracking:
        layer.track_running_stats = False
    if composite:
        for layer in layers:
            layer.forward = types.MethodType(composite_batch_norm, layer)
    try:
        yield module
    finally:
        for layer in tracking:
            layer.track_running_stats = True
        if composite:
            for layer in layers:
                del layer.forward


def composite_batch_norm(layer: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """What ``layer(x)`` computes for ``x: (B, C, ...)``, without updating running statistics:
    batch statistics (biased variance) in training mode or without running statistics, the
    running ones otherwise; then the affine transform. Elementary ops only, so derivatives of
    any order and mode are those of the formula."""
    if x.dim() < 2 or x.shape[1] != layer.num_features:
        raise ValueError(f"{type(layer).__name__}({layer.num_features}) got input of shape {tuple(x.shape)}")
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if layer.training or layer.running_mean is None:
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dims, keepdim=True)
        var = (x - mean).pow(2).mean(dims, keepdim=True)
    else:
        mean, var = layer.running_mean.view(shape), layer.running_var.view(shape)
    y = (x - mean) * torch.rsqrt(var + layer.eps)
    if layer.affine:
        y = y * layer.weight.view(shape) + layer.bias.view(shape)
    return y
