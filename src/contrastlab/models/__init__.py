"""Backbones (``BACKBONES``, :func:`build_backbone`)."""

from contrastlab.models.backbones import BACKBONES, build_backbone
from contrastlab.models.custom import as_backbone
from contrastlab.models import gin, sequence  # noqa: F401  (register the graph and sequence encoders; torch_geometric is imported when a gin is built)

__all__ = ["BACKBONES", "as_backbone", "build_backbone"]
