"""``BACKBONES``: name -> builder ``(input_shape, **options) -> nn.Module``; see
:func:`~contrastlab.models.backbones.build_backbone`. ``input_shape`` is ``(C, H, W)`` for image
backbones, and what :data:`INPUT_KINDS` says for the others."""

from typing import Callable

from torch import nn

from contrastlab.core.registry import Registry

BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")

INPUT_SHAPES: dict[str, tuple[int, str]] = {
    "images": (3, "(C, H, W)"), "graphs": (1, "(F,) node features"), "skeleton sequences": (4, "(3, T, V, M)"),
}
"""Each kind of backbone input: the length of one sample's ``input_shape``, and its layout."""

INPUT_KINDS: dict[str, str] = {}
"""Backbone name -> the key of :data:`INPUT_SHAPES` it encodes, for those that do not encode
images (``gin``: graphs; ``bigru``: skeleton sequences)."""
