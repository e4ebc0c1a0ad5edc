"""Backbones (``BACKBONES``, :func:`build_backbone`)."""

from contrastlab.models.backbones import BACKBONES, build_backbone

__all__ = ["BACKBONES", "build_backbone"]
