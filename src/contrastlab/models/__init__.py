"""Backbones (``BACKBONES``, :func:`build_backbone`) and projection / prediction heads."""

from contrastlab.models.backbones import BACKBONES, build_backbone
from contrastlab.models.heads import MLPHead

__all__ = ["BACKBONES", "MLPHead", "build_backbone"]
