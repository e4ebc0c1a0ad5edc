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
        """``x``: ``(B, C, H, W)``, uint8 or float in [0, 1]. Returns float32 (or x's float dtype).
        An empty normalisation (``mean == []``, data that are not images) returns ``x`` as it is."""
        if not self.mean:
            return x
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        if x.shape[1] != len(self.mean):
            raise ValueError(f"images have {x.shape[1]} channels, normalisation expects {len(self.mean)}")
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std


# sRGB (D65) -> CIE XYZ: the linear-light primaries' matrix; each row sums to the D65 white point.
SRGB_TO_XYZ = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
D65_WHITE = (0.95047, 1.0, 1.08883)  # X_n, Y_n, Z_n
LAB_EPSILON = (6 / 29) ** 3  # below it the Lab transfer function f is linear
# Midpoints and half-ranges of L in [0, 100], a in [-86.183, 98.233], b in [-107.857, 94.478]:
# MetAug's (and CMC's) standardisation of Lab images.
LAB_MEAN = (50.0, 6.025, -6.6895)
LAB_STD = (50.0, 92.208, 101.1675)


def srgb_to_linear(c: torch.Tensor) -> torch.Tensor:
    """Inverse sRGB companding of values in [0, 1], any shape (differentiable everywhere: each
    branch only sees the values in its own range)."""
    linear = c / 12.92
    power = ((c.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4
    return torch.where(c <= 0.04045, linear, power)


def lab_transfer(t: torch.Tensor) -> torch.Tensor:
    """CIE's ``f(t)``: ``t^(1/3)`` above ``(6/29)^3``, else ``t / (3 (6/29)^2) + 4/29``."""
    linear = t / (3 * (6 / 29) ** 2) + 4 / 29
    cube_root = t.clamp_min(LAB_EPSILON) ** (1 / 3)
    return torch.where(t > LAB_EPSILON, cube_root, linear)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB (D65) -> CIE L*a*b*: ``rgb: (..., 3, H, W)`` float in [0, 1] -> ``(..., 3, H, W)``
    with ``L`` in [0, 100] and ``a, b`` roughly in [-110, 100], in ``rgb``'s dtype.

    Inverse sRGB companding, the sRGB -> XYZ matrix, division by the D65 white, then
    ``L = 116 f(Y) - 16``, ``a = 500 (f(X) - f(Y))``, ``b = 200 (f(Y) - f(Z))``. Batched and
    differentiable (autograd and forward mode).
    """
    if rgb.dim() < 3 or rgb.shape[-3] != 3 or not rgb.is_floating_point():
        raise ValueError(f"rgb_to_lab needs float (..., 3, H, W) images, got {rgb.dtype} with shape {tuple(rgb.shape)}")
    matrix = torch.tensor(SRGB_TO_XYZ, dtype=rgb.dtype, device=rgb.device)
    white = torch.tensor(D65_WHITE, dtype=rgb.dtype, device=rgb.device).view(3, 1, 1)
    xyz = torch.einsum("ij,...jhw->...ihw", matrix, srgb_to_linear(rgb)) / white
    fx, fy, fz = lab_transfer(xyz).unbind(-3)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=-3)


class LabNormalize(Normalize):
    """uint8 or [0, 1] float sRGB images -> standardised CIE Lab: ``(lab - LAB_MEAN) / LAB_STD``.

    Same call contract as :class:`Normalize` (``mean``/``std`` are in Lab units)."""

    def __init__(self) -> None:
        super().__init__(list(LAB_MEAN), list(LAB_STD))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, 3, H, W)`` uint8 or float in [0, 1]. Returns float32 (or x's float dtype)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"Lab normalisation needs RGB (B, 3, H, W) images, got shape {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        return super().__call__(rgb_to_lab(x))
