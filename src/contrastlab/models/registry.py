"""``BACKBONES``: name -> builder ``(input_shape, **options) -> nn.Module``; see
:func:`~contrastlab.models.backbones.build_backbone`. ``input_shape`` is ``(C, H, W)`` for image
backbones, ``(F,)`` (node features) for those listed in :data:`GRAPH_BACKBONES`."""

from typing import Callable

from torch import nn

from contrastlab.core.registry import Registry

BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")

GRAPH_BACKBONES: set[str] = set()
"""Names of the backbones that encode graphs (their ``input_shape`` is ``(F,)``)."""
