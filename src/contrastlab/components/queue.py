"""A FIFO feature queue (MoCo's memory of past keys) that stays identical on every rank."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from contrastlab.core.distributed import all_gather_no_grad


class FeatureQueue(nn.Module):
    """``size`` L2-normalised ``dim``-vectors, oldest overwritten first.

    Under torch.distributed :meth:`push` enqueues the keys gathered from all ranks (in rank
    order), so every rank holds the same queue. The contents are buffers: they are saved in
    checkpoints and restored on resume.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"queue size and dim must be >= 1, got size={size}, dim={dim}")
        self.register_buffer("features", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, keys: torch.Tensor) -> None:
        """Enqueue ``keys``: ``(B, dim)``, normalised here; a batch larger than the queue
        keeps its last ``size`` rows."""
        keys = F.normalize(all_gather_no_grad(keys.detach()).to(self.features.dtype), dim=1)
        size = self.features.shape[0]
        keys = keys[-size:]
        positions = (self.pointer + torch.arange(keys.shape[0], device=keys.device)) % size
        self.features[positions] = keys
        self.pointer.copy_((self.pointer + keys.shape[0]) % size)
