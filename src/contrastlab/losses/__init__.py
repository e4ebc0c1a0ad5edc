"""Losses: pure functions of tensors, no trainer state."""

from contrastlab.losses.infonce import nt_xent

__all__ = ["nt_xent"]
