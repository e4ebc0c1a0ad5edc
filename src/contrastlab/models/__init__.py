"""Backbones (``BACKBONES``, :func:`build_backbone`)."""

from contrastlab.models.backbones import BACKBONES, build_backbone
from contrastlab.models import gin  # noqa: F401  (registers the graph encoder; torch_geometric is imported when one is built)

__all__ = ["BACKBONES", "build_backbone"]
