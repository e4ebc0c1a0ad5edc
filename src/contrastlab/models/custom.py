"""A user's own ``nn.Module`` as a backbone: what the methods need of it is ``out_dim``."""

from __future__ import annotations

import torch
from torch import nn


def as_backbone(module: nn.Module, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """``module`` with an integer ``out_dim`` attribute (the width of its ``(B, out_dim)``
    features), which every method reads to size its heads.

    A module that already has one is returned as it is. Otherwise ``input_shape`` (one sample's
    shape, e.g. ``(3, 32, 32)``) is needed: ``out_dim`` is read from the output of one forward
    pass on two zero samples, in eval mode without gradients (the module's mode is restored).

    Raises:
        ValueError: no ``out_dim`` and no ``input_shape``, or an output that is not ``(B, D)``.
    """
    if isinstance(getattr(module, "out_dim", None), int):
        return module
    if input_shape is None:
        raise ValueError(f"{type(module).__name__} has no integer out_dim attribute; give input_shape "
                         "(one sample's shape, e.g. (3, 32, 32)) to infer it from a forward pass")
    was_training = module.training
    parameter = next(module.parameters(), None)
    probe = torch.zeros(2, *input_shape, device=parameter.device if parameter is not None else None)
    try:
        with torch.no_grad():
            out = module.eval()(probe)
    finally:
        module.train(was_training)
    if not torch.is_tensor(out) or out.dim() != 2:
        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ValueError(f"{type(module).__name__} must map (B, *input_shape) to features (B, D), got {shape}; "
                         "flatten or pool its output")
    module.out_dim = int(out.shape[1])
    return module
