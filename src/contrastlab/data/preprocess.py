"""Deterministic preprocessing shared by training views and evaluation."""

from __future__ import annotations

import torch


def channel_stats(images: torch.Tensor, max_images: int = 10_000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units of ``images``: ``(N, C, H, W)`` uint8.

    Uses at most ``max_images`` evenly spaced images; a constant channel gets std 1.
    """
    step = max(1, images.shape[0] // max_images)
    x = images[::step].float().div_(255)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3))
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return mean.tolist(), std.tolist()


class Normalize:
    """uint8 or [0, 1] float images -> standardised float: ``(x - mean) / std`` per channel."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}")
        self.mean = list(mean)
        self.std = list(std)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, C, H, W)``, uint8 or float in [0, 1]. Returns float32 (or x's float dtype)."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        if x.shape[1] != len(self.mean):
            raise ValueError(f"images have {x.shape[1]} channels, normalisation expects {len(self.mean)}")
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std
