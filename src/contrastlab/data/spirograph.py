"""Spirograph (InvCLR, Foster et al. 2021): a differentiable synthetic image generator.

Each 3 x 32 x 32 image is a hypotrochoid drawn with Gaussian strokes. Four factors of
interest are the regression targets, ``(m, b, sigma, f_r)``; six nuisance parameters
``alpha = (h, b_r, f_g, b_g, f_b, b_b)`` change the image but not the targets. Every
parameter is an independent uniform (ranges below). Training re-renders the same targets
with fresh nuisance parameters for each contrastive view (:class:`SpirographViews`), and
InvCLR differentiates the representation w.r.t. those parameters. This module registers the
view kind ``spirograph`` (``augment.views[i].kind``) and the preset ``spirograph``
(``augment.preset``) with :mod:`contrastlab.data.augment`.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from contrastlab.data.augment import ViewPreset, register_preset, register_view_kind
from contrastlab.data.base import ImageData
from contrastlab.data.files import generated_split_size
from contrastlab.data.perturbation import check_strengths, register_perturbation
from contrastlab.data.preprocess import Normalize
from contrastlab.data.registry import DATASETS

FACTOR_NAMES = ("m", "b", "sigma", "f_r")
FACTOR_LOW = (2.0, 0.1, 0.25, 0.4)
FACTOR_HIGH = (5.0, 1.1, 1.0, 1.0)

NUISANCE_NAMES = ("h", "b_r", "f_g", "b_g", "f_b", "b_b")
NUISANCE_LOW = (0.5, 0.0, 0.4, 0.0, 0.4, 0.0)
NUISANCE_HIGH = (2.5, 0.6, 1.0, 0.6, 1.0, 0.6)

IMAGE_SIZE = 32
NUM_POINTS = 40  # points t_j on the curve, linspace(0, 2 pi) inclusive
GRID_EXTENT = 6.0  # pixel coordinates are linspace(-6, 6, 32)
RENDER_CHUNK = 2048  # samples rendered at once (bounds the intermediate memory)
DEFAULT_SIZE = {"train": 10_000, "test": 2_000}
SPLIT_STREAM = {"train": 0, "test": 1}  # train and test use different generator seeds


def _uniform(
    n: int, generator: torch.Generator, low: Sequence[float], high: Sequence[float], names: tuple[str, ...]
) -> torch.Tensor:
    """``(n, len(names))`` float32 draws, column k ~ U(low[k], high[k])."""
    if len(low) != len(names) or len(high) != len(names):
        raise ValueError(
            f"expected {len(names)} bounds for {names}, got low={list(low)}, high={list(high)}"
        )
    lo = torch.tensor(low, dtype=torch.float32)
    hi = torch.tensor(high, dtype=torch.float32)
    if (lo > hi).any():
        raise ValueError(f"need low <= high for every one of {names}, got low={list(low)}, high={list(high)}")
    return lo + (hi - lo) * torch.rand(n, len(names), generator=generator)


def sample_factors(n: int, generator: torch.Generator) -> torch.Tensor:
    """Targets ``(n, 4)`` float32: ``(m, b, sigma, f_r)`` from the spec's uniforms."""
    return _uniform(n, generator, FACTOR_LOW, FACTOR_HIGH, FACTOR_NAMES)


def sample_nuisance(
    n: int,
    generator: torch.Generator,
    low: Sequence[float] | None = None,
    high: Sequence[float] | None = None,
) -> torch.Tensor:
    """Nuisance ``(n, 6)`` float32: ``(h, b_r, f_g, b_g, f_b, b_b)``.

    ``low`` / ``high`` (6 floats each) replace the spec's ranges, e.g. to shift the
    background colour or ``h`` at test time in robustness studies.
    """
    return _uniform(
        n,
        generator,
        NUISANCE_LOW if low is None else low,
        NUISANCE_HIGH if high is None else high,
        NUISANCE_NAMES,
    )


def _check_render_inputs(factors: torch.Tensor, nuisance: torch.Tensor) -> None:
    expected = (("factors", factors, len(FACTOR_NAMES)), ("nuisance", nuisance, len(NUISANCE_NAMES)))
    for name, value, width in expected:
        if value.dim() != 2 or value.shape[1] != width or not value.is_floating_point():
            raise ValueError(
                f"render: {name} must be a float tensor (B, {width}), "
                f"got {value.dtype} with shape {tuple(value.shape)}"
            )
    if factors.device != nuisance.device:
        raise ValueError(f"render: factors are on {factors.device} but nuisance on {nuisance.device}")
    if factors.shape[0] != nuisance.shape[0]:
        raise ValueError(
            f"render: {factors.shape[0]} factor rows but {nuisance.shape[0]} nuisance rows; expected one each"
        )


def _render_chunk(factors: torch.Tensor, nuisance: torch.Tensor) -> torch.Tensor:
    """``factors: (B, 4)``, ``nuisance: (B, 6)`` -> ``(B, 3, 32, 32)`` in [0, 1]."""
    m, b, sigma, f_r = factors[:, :, None].unbind(1)  # each (B, 1)
    h, b_r, f_g, b_g, f_b, b_b = nuisance[:, :, None].unbind(1)
    t = torch.linspace(0, 2 * math.pi, NUM_POINTS, dtype=factors.dtype, device=factors.device)
    inner = (m - h) * t / b
    x = (m - h) * torch.cos(t) + h * torch.cos(inner)  # (B, 40), compared with the row coordinate
    y = (m - h) * torch.sin(t) - h * torch.sin(inner)  # (B, 40), compared with the column coordinate
    grid = torch.linspace(-GRID_EXTENT, GRID_EXTENT, IMAGE_SIZE, dtype=factors.dtype, device=factors.device)
    # exp(-(du^2 + dv^2) / sigma) factorises into a row term times a column term.
    row = torch.exp(-((grid[None, :, None] - x[:, None, :]) ** 2) / sigma[:, :, None])  # (B, 32, 40)
    col = torch.exp(-((grid[None, :, None] - y[:, None, :]) ** 2) / sigma[:, :, None])  # (B, 32, 40)
    intensity = torch.bmm(row, col.transpose(1, 2)) / NUM_POINTS  # (B, 32, 32)
    intensity = intensity / (intensity.amax(dim=(1, 2), keepdim=True) + 1e-8)
    foreground = torch.cat([f_r, f_g, f_b], dim=1)[:, :, None, None]  # (B, 3, 1, 1)
    background = torch.cat([b_r, b_g, b_b], dim=1)[:, :, None, None]
    c = intensity[:, None]
    return c * foreground + (1 - c) * background


def render(factors: torch.Tensor, nuisance: torch.Tensor) -> torch.Tensor:
    """Render Spirograph images (spec 3.8), batched and differentiable.

    Args:
        factors: ``(B, 4)`` float ``(m, b, sigma, f_r)``.
        nuisance: ``(B, 6)`` float ``(h, b_r, f_g, b_g, f_b, b_b)``, same device.

    Returns:
        ``(B, 3, 32, 32)`` in [0, 1], dtype and device of ``factors`` (float32 or float64).
    """
    _check_render_inputs(factors, nuisance)
    nuisance = nuisance.to(factors.dtype)
    chunks = zip(factors.split(RENDER_CHUNK), nuisance.split(RENDER_CHUNK))
    return torch.cat([_render_chunk(f, a) for f, a in chunks])


def render_uint8(factors: torch.Tensor, nuisance: torch.Tensor) -> torch.Tensor:
    """Like :func:`render`, quantised chunk by chunk to ``(B, 3, 32, 32)`` uint8 (low peak memory)."""
    _check_render_inputs(factors, nuisance)
    chunks = zip(factors.split(RENDER_CHUNK), nuisance.split(RENDER_CHUNK))
    return torch.cat([render(f, a).mul(255).round_().to(torch.uint8) for f, a in chunks])


@DATASETS.register(
    "spirograph", "Spirograph: generated curves, 4 regression targets, 6 nuisance parameters (InvCLR)"
)
def load(split: str, root: str | None = None, size: int | None = None, seed: int = 0) -> ImageData:
    """Generate a Spirograph split: ``size`` images (default 10,000 train / 2,000 test).

    Deterministic for a given ``seed``; train and test come from different random streams.
    ``targets`` are ``(N, 4)`` float32 ``(m, b, sigma, f_r)``; ``extras["nuisance"]`` is the
    ``(N, 6)`` float32 nuisance the stored images were rendered with.
    """
    size = generated_split_size("spirograph", split, root, size, DEFAULT_SIZE)
    generator = torch.Generator().manual_seed(2 * seed + SPLIT_STREAM[split])
    factors = sample_factors(size, generator)
    nuisance = sample_nuisance(size, generator)
    return ImageData(
        name="spirograph",
        images=render_uint8(factors, nuisance),
        targets=factors,
        target_names=FACTOR_NAMES,
        extras={"nuisance": nuisance},
        kind="spirograph",
    )


class SpirographViews:
    """A contrastive view of Spirograph: re-render the batch's targets with fresh nuisance.

    Same interface as :class:`contrastlab.data.augment.ViewPipeline`; reads
    ``batch["targets"]`` only (``batch["inputs"]``, the stored images, are not used). ``low`` /
    ``high`` override the nuisance ranges (see :func:`sample_nuisance`).
    """

    continuous_parameters = ("nuisance",)  # params paths that ``apply`` is differentiable in

    def __init__(
        self, normalize: Normalize, low: Sequence[float] | None = None, high: Sequence[float] | None = None
    ) -> None:
        self.normalize = normalize
        self.low = low
        self.high = high

    @staticmethod
    def _targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "targets" not in batch:
            raise ValueError("SpirographViews needs batch['targets'] (B, 4): the Spirograph factors")
        return batch["targets"]

    def sample(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``{"nuisance": (B, 6)}`` float32 on CPU, drawn with ``generator``."""
        n = self._targets(batch).shape[0]
        return {"nuisance": sample_nuisance(n, generator, self.low, self.high)}

    def apply(self, batch: dict[str, torch.Tensor], params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Render ``batch["targets"]`` with ``params["nuisance"]`` and normalise:
        ``(B, 3, 32, 32)`` float on the targets' device, differentiable w.r.t. the nuisance."""
        targets = self._targets(batch)
        images = render(targets, params["nuisance"].to(targets.device))
        return self.normalize(images)

    def __call__(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        return self.apply(batch, self.sample(batch, generator))


# Robustness to test-time nuisance: the perturbation of Spirograph views, which
# contrastlab.eval.robustness.perturbation_for finds through register_perturbation.
BACKGROUND = tuple(NUISANCE_NAMES.index(name) for name in ("b_r", "b_g", "b_b"))


@register_perturbation(SpirographViews)
class BackgroundShift:
    """Spirograph: re-render the test targets with fresh nuisance whose background colour
    ranges ``(b_r, b_g, b_b)`` are shifted up by the strength ``s``: U(low + s, high + s); the
    other nuisance keeps its training range. ``s = 0`` is a fresh draw from the training
    distribution; ``s`` may go up to :attr:`max_strength`, where the colour reaches 1."""

    name = "Spirograph background shift"
    max_strength = 1.0 - max(NUISANCE_HIGH[i] for i in BACKGROUND)

    def __init__(self, normalize: Normalize) -> None:
        self.normalize = normalize

    def __call__(self, strength: float) -> SpirographViews:
        check_strengths([strength], self)
        low, high = list(NUISANCE_LOW), list(NUISANCE_HIGH)
        for i in BACKGROUND:
            low[i] += strength
            high[i] += strength
        return SpirographViews(self.normalize, low, high)


def spirograph_view(
    transforms: Sequence[dict], size: int | None, image_shape: tuple[int, int, int], normalize: Normalize
) -> SpirographViews:
    """The ``spirograph`` view kind (a :data:`~contrastlab.data.augment.ViewFactory`): a fresh
    rendering of the batch's targets, for 3 x 32 x 32 Spirograph data, with no transforms."""
    if transforms:
        raise ValueError("spirograph views re-render the targets and take no transforms, got "
                         f"{[t['name'] for t in transforms]}")
    if tuple(image_shape) != (3, IMAGE_SIZE, IMAGE_SIZE) or size not in (None, IMAGE_SIZE):
        raise ValueError(f"spirograph views render 3 x {IMAGE_SIZE} x {IMAGE_SIZE} images, got images of shape "
                         f"{tuple(image_shape)} and size={size}")
    return SpirographViews(normalize)


register_view_kind("spirograph", spirograph_view)
register_preset("spirograph", ViewPreset("Spirograph: re-render the targets with fresh nuisance", kind="spirograph"))
