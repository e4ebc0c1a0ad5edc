"""``BACKBONES``: name -> builder ``(input_shape: (C, H, W), **options) -> nn.Module``; see
:func:`~contrastlab.models.backbones.build_backbone`."""

from typing import Callable

from torch import nn

from contrastlab.core.registry import Registry

BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")
