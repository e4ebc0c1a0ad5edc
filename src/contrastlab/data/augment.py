"""Batched, parameterised augmentations for contrastive views.

Every transform splits randomness from computation:

* ``sample(n, generator) -> dict[str, Tensor]`` draws per-sample parameters on the CPU with
  ``generator`` (reproducible whatever device trains);
* ``apply(x, params) -> x'`` transforms ``x: (B, C, H, W)`` float in [0, 1] with batched tensor
  ops on ``x``'s device, differentiable w.r.t. every parameter listed in the transform's
  ``continuous`` attribute (InvCLR sets ``requires_grad`` on them). The 0/1 indicators
  (``apply``, ``flip``) are parameters too, but not differentiable ones.

A :class:`ViewPipeline` chains transforms and normalises. Views are described as plain data in
the recipe's schema (``{"count", "size", "kind", "transforms": [{"name", **arguments}]}``, the
``augment.views`` entries, validated by :mod:`contrastlab.data.view_config`): :data:`TRANSFORMS` maps
each transform name to its class, :data:`VIEW_KINDS` each view kind to the factory that builds
it (``transforms`` here; datasets register their own, e.g. Spirograph's re-rendering), and
:data:`PRESETS` the named presets that :func:`preset_views` expands into two views.
:func:`build_pipelines` turns view descriptions into pipelines.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from contrastlab.data.preprocess import Normalize

Params = dict[str, torch.Tensor]

GRAY_WEIGHTS = (0.299, 0.587, 0.114)
RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.321], [0.211, -0.523, 0.311]], dtype=torch.float64
)
YIQ_TO_RGB = torch.linalg.inv(RGB_TO_YIQ)


class Transform(Protocol):
    name: str  # key of this transform's parameters in a pipeline's params
    continuous: tuple[str, ...]  # the differentiable parameters
    set_by_view: tuple[str, ...]  # constructor arguments the view supplies (the crop's output size)

    def sample(self, n: int, generator: torch.Generator) -> Params: ...

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor: ...


class TransformArgumentError(ValueError):
    """A transform's constructor argument is out of range; ``argument`` names it (the config
    prefixes it with the transform's dotted key)."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(message)
        self.argument = argument


def _check_probability(argument: str, name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise TransformArgumentError(argument, f"{name} must be a probability in [0, 1], got {p}")


def _check_range(argument: str, name: str, low: float, high: float, min_value: float = 0.0) -> None:
    if not min_value <= low <= high:
        raise TransformArgumentError(
            argument, f"{name} must be a range ({min_value} <= low <= high), got ({low}, {high})"
        )


def _bernoulli(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """``(n,)`` float32 0/1 indicators, 1 with probability ``p``."""
    return (torch.rand(n, generator=generator) < p).float()


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    """``(n,)`` float32 draws from U(low, high)."""
    return low + (high - low) * torch.rand(n, generator=generator)


def _per_sample(value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A ``(B,)`` parameter as ``(B, 1, 1, 1)`` on ``x``'s device and dtype."""
    return value.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def _mix(indicator: torch.Tensor, transformed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``a * transformed + (1 - a) * x`` with the ``(B,)`` 0/1 indicator ``a``."""
    return torch.lerp(x, transformed, _per_sample(indicator, x))


def gray(x: torch.Tensor) -> torch.Tensor:
    """Luma ``0.299 R + 0.587 G + 0.114 B``: ``(B, 3, H, W)`` -> ``(B, 1, H, W)``; 1 channel is kept."""
    if x.shape[1] == 1:
        return x
    r, g, b = GRAY_WEIGHTS
    return r * x[:, 0:1] + g * x[:, 1:2] + b * x[:, 2:3]


def _check_channels(name: str, x: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{name}: expected images (B, 1 or 3, H, W), got shape {tuple(x.shape)}")


class RandomResizedCropFlip:
    """Random resized crop (torchvision's box distribution) and horizontal flip, folded into
    one affine sampling grid and one bilinear ``grid_sample`` call.

    Parameters (per sample): ``center: (n, 2)`` crop centre ``(x, y)`` in normalised image
    coordinates [-1, 1]; ``size: (n, 2)`` crop ``(width, height)`` as fractions of the image;
    ``flip: (n,)`` 0/1. The box is continuous (no rounding to pixels). When none of 10 draws
    fits inside the image, the box is the whole image (torchvision instead centre-crops at the
    clamped ratio; the two agree for square images).
    """

    name = "crop"
    continuous = ("center", "size")
    set_by_view = ("size",)  # a view's output side, not a transform argument in a recipe
    attempts = 10

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_prob: float = 0.5,
    ) -> None:
        """``size``: output side; ``ratio`` bounds the box's width / height in image fractions
        (in pixels too for square inputs)."""
        if size <= 0:
            raise TransformArgumentError("size", f"crop size must be positive, got {size}")
        _check_range("scale", "crop scale", *scale, min_value=1e-6)
        if scale[1] > 1:
            raise TransformArgumentError("scale", f"crop scale must lie in (0, 1], got {scale}")
        _check_range("ratio", "crop ratio", *ratio, min_value=1e-6)
        _check_probability("flip_prob", "flip probability", flip_prob)
        self.size, self.scale, self.ratio = size, tuple(scale), tuple(ratio)
        self.flip_prob = flip_prob

    def sample(self, n: int, generator: torch.Generator) -> Params:
        area = _uniform(n * self.attempts, *self.scale, generator).view(n, self.attempts)
        log_ratio = _uniform(n * self.attempts, *map(math.log, self.ratio), generator).view(n, self.attempts)
        width = torch.sqrt(area * log_ratio.exp())  # fractions of the image: w h = area, w / h = ratio
        height = torch.sqrt(area / log_ratio.exp())
        fits = (width <= 1) & (height <= 1)
        first = fits.float().argmax(dim=1, keepdim=True)
        found = fits.any(dim=1)
        width = torch.where(found, width.gather(1, first).squeeze(1), 1.0)
        height = torch.where(found, height.gather(1, first).squeeze(1), 1.0)
        size = torch.stack([width, height], dim=1)
        center = (1 - size) * (2 * torch.rand(n, 2, generator=generator) - 1)
        return {"center": center, "size": size, "flip": _bernoulli(n, self.flip_prob, generator)}

    def sampling_grid(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """``(B, size, size, 2)`` input coordinates of the output pixels, on ``x``'s device.

        The same grid as ``F.affine_grid`` (``align_corners=False``) with
        ``theta = [[w s, 0, c_x], [0, h, c_y]]``, where ``s = 1 - 2 flip``; the box is axis-aligned,
        so the grid is built by broadcasting (about 9x faster than affine_grid's bmm on CPU).
        """
        center = params["center"].to(device=x.device, dtype=x.dtype)
        size = params["size"].to(device=x.device, dtype=x.dtype)
        sign = 1 - 2 * params["flip"].to(device=x.device, dtype=x.dtype)
        base = (2 * torch.arange(self.size, device=x.device, dtype=x.dtype) + 1) / self.size - 1
        grid_x = center[:, 0, None, None] + (size[:, 0] * sign)[:, None, None] * base  # (B, 1, size)
        grid_y = center[:, 1, None, None] + size[:, 1, None, None] * base[:, None]  # (B, size, 1)
        return torch.stack(torch.broadcast_tensors(grid_x, grid_y), dim=-1)

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        """``x: (B, C, H, W)`` -> ``(B, C, size, size)``: one bilinear ``grid_sample``."""
        grid = self.sampling_grid(params, x)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class ColorJitter:
    """InvCLR's colour distortion (spec 3.3), applied with probability ``prob``.

    In this fixed order: brightness ``clip(b x)``, contrast ``clip(c x + (1 - c) mean(gray x))``,
    saturation ``clip(s x + (1 - s) gray(x))``, hue: rotate the YIQ chroma plane by
    ``2 pi h`` (not clipped). Factors b, c, s ~ U(max(0, 1 - m), 1 + m) with magnitudes
    ``brightness``, ``contrast``, ``saturation``; h ~ U(-hue, hue). One-channel images get
    brightness and contrast only. The YIQ -> RGB matrix is the exact inverse (the official
    code's 3-decimal inverse is off by up to 2.8e-3, so its zero rotation is not the identity).

    Parameters (per sample): ``brightness``, ``contrast``, ``saturation``, ``hue``: ``(n,)``;
    ``apply: (n,)`` 0/1.
    """

    name = "jitter"
    continuous = ("brightness", "contrast", "saturation", "hue")
    set_by_view: tuple[str, ...] = ()

    def __init__(
        self, brightness: float, contrast: float, saturation: float, hue: float, prob: float = 0.8
    ) -> None:
        magnitudes = {"brightness": brightness, "contrast": contrast, "saturation": saturation, "hue": hue}
        for field, value in magnitudes.items():
            if value < 0:
                raise TransformArgumentError(field, f"jitter {field} magnitude must be >= 0, got {value}")
        _check_probability("prob", "jitter probability", prob)
        self.magnitudes = {"brightness": brightness, "contrast": contrast, "saturation": saturation}
        self.hue, self.prob = hue, prob

    @classmethod
    def from_strength(cls, strength: float, prob: float = 0.8) -> "ColorJitter":
        """SimCLR's jitter of strength s: magnitudes (0.8 s, 0.8 s, 0.8 s, 0.2 s)."""
        return cls(0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength, prob)

    def sample(self, n: int, generator: torch.Generator) -> Params:
        params = {key: _uniform(n, max(0.0, 1 - m), 1 + m, generator) for key, m in self.magnitudes.items()}
        params["hue"] = _uniform(n, -self.hue, self.hue, generator)
        params["apply"] = _bernoulli(n, self.prob, generator)
        return params

    @staticmethod
    def hue_matrices(hue: torch.Tensor) -> torch.Tensor:
        """``hue: (B,)`` fractions of a turn -> ``(B, 3, 3)`` RGB maps ``T_yiq^-1 R(2 pi h) T_yiq``."""
        to_yiq = RGB_TO_YIQ.to(device=hue.device, dtype=hue.dtype)
        to_rgb = YIQ_TO_RGB.to(device=hue.device, dtype=hue.dtype)
        angle = 2 * math.pi * hue
        cos, sin = torch.cos(angle), torch.sin(angle)
        one, zero = torch.ones_like(angle), torch.zeros_like(angle)
        rotation = torch.stack(
            [
                torch.stack([one, zero, zero], dim=1),
                torch.stack([zero, cos, -sin], dim=1),
                torch.stack([zero, sin, cos], dim=1),
            ],
            dim=1,
        )
        return to_rgb @ rotation @ to_yiq

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        """``x: (B, C, H, W)``, C in {1, 3} -> same shape."""
        _check_channels("ColorJitter", x)
        # lerp(a, b, w) = w b + (1 - w) a; in-place clamps save allocations (autograd-safe here).
        out = (_per_sample(params["brightness"], x) * x).clamp_(0, 1)
        mean = gray(out).mean(dim=(1, 2, 3), keepdim=True)
        out = torch.lerp(mean, out, _per_sample(params["contrast"], x)).clamp_(0, 1)
        if x.shape[1] == 3:
            out = torch.lerp(gray(out), out, _per_sample(params["saturation"], x)).clamp_(0, 1)
            hue = self.hue_matrices(params["hue"].to(device=x.device, dtype=x.dtype))
            out = torch.bmm(hue, out.flatten(2)).view_as(x)
        return _mix(params["apply"], out, x)


class RandomGrayscale:
    """Replace the image by its luma on every channel with probability ``prob``.

    Parameters: ``apply: (n,)`` 0/1. One-channel images are returned unchanged.
    """

    name = "gray"
    continuous: tuple[str, ...] = ()
    set_by_view: tuple[str, ...] = ()

    def __init__(self, prob: float) -> None:
        _check_probability("prob", "grayscale probability", prob)
        self.prob = prob

    def sample(self, n: int, generator: torch.Generator) -> Params:
        return {"apply": _bernoulli(n, self.prob, generator)}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        """``x: (B, C, H, W)``, C in {1, 3} -> same shape."""
        _check_channels("RandomGrayscale", x)
        return _mix(params["apply"], gray(x), x)


class GaussianBlur:
    """Gaussian blur with a per-sample sigma, applied with probability ``prob``.

    A separable convolution (a weighted sum of k shifted copies per axis, which beats grouped
    ``conv2d`` with per-sample kernels on CPU) with reflect padding; the kernel side is about 10% of
    the image side, odd, at least 3 (``kernel_size`` overrides it). Parameters:
    ``sigma: (n,)`` ~ U(sigma range), ``apply: (n,)`` 0/1.
    """

    name = "blur"
    continuous = ("sigma",)
    set_by_view: tuple[str, ...] = ()

    def __init__(
        self, prob: float, sigma: tuple[float, float] = (0.1, 2.0), kernel_size: int | None = None
    ) -> None:
        _check_probability("prob", "blur probability", prob)
        _check_range("sigma", "blur sigma", *sigma, min_value=1e-6)
        if kernel_size is not None and (kernel_size < 1 or kernel_size % 2 == 0):
            raise TransformArgumentError(
                "kernel_size", f"blur kernel_size must be a positive odd integer, got {kernel_size}"
            )
        self.prob, self.sigma, self.kernel_size = prob, tuple(sigma), kernel_size

    def sample(self, n: int, generator: torch.Generator) -> Params:
        return {"sigma": _uniform(n, *self.sigma, generator), "apply": _bernoulli(n, self.prob, generator)}

    def side(self, height: int, width: int) -> int:
        """Kernel side for an image of ``height x width``."""
        if self.kernel_size is not None:
            return self.kernel_size
        return max(3, int(0.1 * min(height, width)) | 1)

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        """``x: (B, C, H, W)`` -> same shape."""
        b, c, h, w = x.shape
        k = self.side(h, w)
        if k // 2 >= min(h, w):
            raise ValueError(f"GaussianBlur: kernel side {k} too large for {h}x{w} images")
        offsets = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
        sigma = params["sigma"].to(device=x.device, dtype=x.dtype).view(-1, 1)
        kernel = torch.softmax(-(offsets**2) / (2 * sigma**2), dim=1)  # (B, k), normalised Gaussian
        padded = F.pad(x, [k // 2] * 4, mode="reflect")  # (B, C, H + k - 1, W + k - 1)
        rows = sum(kernel[:, t, None, None, None] * padded[:, :, t : t + h, :] for t in range(k))
        out = sum(kernel[:, t, None, None, None] * rows[:, :, :, t : t + w] for t in range(k))
        return _mix(params["apply"], out, x)


class Solarize:
    """Invert pixels at or above ``threshold`` (``x -> 1 - x``) with probability ``prob``.

    Parameters: ``apply: (n,)`` 0/1.
    """

    name = "solarize"
    continuous: tuple[str, ...] = ()
    set_by_view: tuple[str, ...] = ()

    def __init__(self, prob: float, threshold: float = 0.5) -> None:
        _check_probability("prob", "solarize probability", prob)
        if not 0.0 <= threshold <= 1.0:
            raise TransformArgumentError("threshold", f"solarize threshold must lie in [0, 1], got {threshold}")
        self.prob, self.threshold = prob, threshold

    def sample(self, n: int, generator: torch.Generator) -> Params:
        return {"apply": _bernoulli(n, self.prob, generator)}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        """``x: (B, C, H, W)`` -> same shape."""
        return _mix(params["apply"], torch.where(x >= self.threshold, 1 - x, x), x)


# On CPU a view is made in even chunks of at most about this many values per image tensor: with
# glibc's default malloc, full-batch temporaries are returned to the OS and page-faulted back on
# every op, which doubles the time of a 256-image CIFAR batch.
CPU_CHUNK_VALUES = 2**18


def _rows(params: dict[str, Params], start: int, count: int) -> dict[str, Params]:
    """Per-sample parameters of samples ``start .. start + count - 1``."""
    return {name: {k: v[start : start + count] for k, v in p.items()} for name, p in params.items()}


class ViewPipeline:
    """Transforms in order, then normalisation: one contrastive view.

    Reads ``batch["inputs"]``: ``(B, C, H, W)`` uint8 images. A pipeline made by
    :meth:`crop_at_decode` instead reads ``batch["inputs"][slot]``, the ``(B, C, s, s)`` uint8
    crops that the dataset took when decoding with :attr:`decode_crop` (``s = decode_crop.size``).
    Other batch keys are not read.

    Attributes:
        transforms: the transforms applied on the device, in order.
        normalize: the final per-channel standardisation.
        slot: ``None`` (the whole images) or the index of this view's crops in ``batch["inputs"]``.
        decode_crop: the :class:`RandomResizedCropFlip` the dataset applies at decode time, or
            ``None`` (the crop, if any, is one of :attr:`transforms`).
    """

    def __init__(
        self,
        transforms: Sequence[Transform],
        normalize: Normalize,
        *,
        slot: int | None = None,
        decode_crop: RandomResizedCropFlip | None = None,
    ) -> None:
        names = [t.name for t in transforms]
        if len(set(names)) != len(names):
            raise ValueError(f"ViewPipeline: transform names must be unique, got {names}")
        if (slot is None) != (decode_crop is None):
            raise ValueError("ViewPipeline: slot and decode_crop go together (see crop_at_decode)")
        self.transforms = list(transforms)
        self.normalize = normalize
        self.slot, self.decode_crop = slot, decode_crop

    def crop_at_decode(self, slot: int) -> "ViewPipeline":
        """This view for a dataset that takes the leading crop when decoding.

        Returns a pipeline with the same transforms but the first (a
        :class:`RandomResizedCropFlip`, exposed as ``decode_crop`` with its ``size``, ``scale``,
        ``ratio`` and ``flip_prob`` for the dataset) that reads ``batch["inputs"][slot]``. Applied
        to crops taken with the same crop parameters it gives the same view as this pipeline.
        """
        if self.decode_crop is not None:
            raise ValueError(f"crop_at_decode: this pipeline already reads decode-time crops (slot {self.slot})")
        if not self.transforms or not isinstance(self.transforms[0], RandomResizedCropFlip):
            raise ValueError(
                "crop_at_decode: the view must start with a 'crop' transform, got "
                f"{[t.name for t in self.transforms]}"
            )
        return ViewPipeline(self.transforms[1:], self.normalize, slot=slot, decode_crop=self.transforms[0])

    @property
    def continuous_parameters(self) -> tuple[str, ...]:
        """Dotted paths (``"jitter.hue"``: ``params["jitter"]["hue"]``) of the parameters that
        ``apply`` is differentiable in."""
        return tuple(f"{t.name}.{key}" for t in self.transforms for key in t.continuous)

    def inputs(self, batch: dict[str, Any]) -> torch.Tensor:
        """The uint8 images this view is made from: ``(B, C, H, W)``, or this slot's crops."""
        inputs = batch["inputs"]
        if self.slot is not None:
            if not isinstance(inputs, (list, tuple)) or not -len(inputs) <= self.slot < len(inputs):
                got = f"{len(inputs)} crops" if isinstance(inputs, (list, tuple)) else type(inputs).__name__
                raise ValueError(f"ViewPipeline: batch['inputs'] must be a list of per-view crops with "
                                 f"slot {self.slot}, got {got}")
            inputs = inputs[self.slot]
        if not torch.is_tensor(inputs) or inputs.dtype != torch.uint8 or inputs.dim() != 4:
            where = "batch['inputs']" if self.slot is None else f"batch['inputs'][{self.slot}]"
            got = f"{inputs.dtype} with shape {tuple(inputs.shape)}" if torch.is_tensor(inputs) else repr(inputs)
            raise ValueError(f"ViewPipeline: {where} must be uint8 (B, C, H, W), got {got}")
        if self.decode_crop is not None and tuple(inputs.shape[2:]) != (self.decode_crop.size,) * 2:
            raise ValueError(f"ViewPipeline: batch['inputs'][{self.slot}] must hold {self.decode_crop.size}-pixel "
                             f"crops, got shape {tuple(inputs.shape)}")
        return inputs

    def sample(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Params]:
        """``{transform name: its per-sample parameters}``, drawn on the CPU with ``generator``."""
        n = self.inputs(batch).shape[0]
        return {t.name: t.sample(n, generator) for t in self.transforms}

    def apply(self, batch: dict[str, Any], params: dict[str, Params]) -> torch.Tensor:
        """The view ``(B, C, H', W')`` float32, normalised, on the inputs' device."""
        images = self.inputs(batch)
        missing = [t.name for t in self.transforms if t.name not in params]
        if missing:
            raise ValueError(f"ViewPipeline: params lack {missing}; got {sorted(params)}")
        if images.device.type != "cpu" or images.numel() <= CPU_CHUNK_VALUES:
            return self._apply(images, params)
        chunks = -(-images.numel() // CPU_CHUNK_VALUES)  # ceil
        step = -(-len(images) // chunks)  # even chunks
        parts = [self._apply(images[i : i + step], _rows(params, i, step)) for i in range(0, len(images), step)]
        return torch.cat(parts)

    def _apply(self, images: torch.Tensor, params: dict[str, Params]) -> torch.Tensor:
        x = images.float().div_(255)
        for t in self.transforms:
            x = t.apply(x, params[t.name])
        return self.normalize(x)

    def __call__(self, batch: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
        return self.apply(batch, self.sample(batch, generator))


# ---------------------------------------------------------------- views from plain data

TRANSFORMS: dict[str, type] = {
    cls.name: cls for cls in (RandomResizedCropFlip, ColorJitter, RandomGrayscale, GaussianBlur, Solarize)
}
"""Transform name (``augment.views[i].transforms[j].name``) -> its class; the other keys of a
transform entry are that class's constructor arguments, except those in its ``set_by_view``."""

ViewFactory = Callable[[Sequence[Mapping[str, Any]], "int | None", tuple[int, int, int], Normalize], Any]
"""``(transforms, size, image_shape, normalize) -> one view pipeline`` (an object with
``sample(batch, generator)``, ``apply(batch, params)``, ``continuous_parameters``)."""


def transforms_view(
    transforms: Sequence[Mapping[str, Any]], size: int | None, image_shape: tuple[int, int, int], normalize: Normalize
) -> ViewPipeline:
    """The ``transforms`` view kind: each ``{"name": ..., **arguments}`` of ``transforms`` built
    from :data:`TRANSFORMS`, in order. ``size`` (default: the image height) is the output side
    of the crop; without a crop the view keeps the input size and ``size`` must be ``None``."""
    built = []
    for spec in transforms:
        cls = TRANSFORMS[spec["name"]]
        by_view = {argument: size or image_shape[1] for argument in cls.set_by_view}
        built.append(cls(**{k: v for k, v in spec.items() if k != "name"}, **by_view))
    if size is not None and not any(type(t).set_by_view for t in built):
        raise ValueError(f"size={size} needs a 'crop' transform (without one the view keeps the input size)")
    return ViewPipeline(built, normalize)


VIEW_KINDS: dict[str, ViewFactory] = {"transforms": transforms_view}
"""View kind (``augment.views[i].kind``) -> its factory. ``transforms`` is the generic kind;
datasets register their own (:func:`register_view_kind`)."""


VIEW_TRANSFORMS: dict[str, dict[str, type]] = {"transforms": TRANSFORMS}
"""View kind -> the table of the transforms its views list (a kind without one takes none)."""


def register_view_kind(name: str, factory: ViewFactory, transforms: dict[str, type] | None = None) -> None:
    """Make ``augment.views[i].kind: name`` build its views with ``factory`` (e.g. Spirograph's
    re-rendering with fresh nuisance, which takes no transforms; graphs' augmentations, whose
    table ``transforms`` maps each name to its class)."""
    if name in VIEW_KINDS:
        raise ValueError(f"view kind '{name}' is registered twice")
    VIEW_KINDS[name] = factory
    if transforms is not None:
        VIEW_TRANSFORMS[name] = transforms


def build_pipelines(
    views: Sequence[Mapping[str, Any]], *, image_shape: tuple[int, int, int], normalize: Normalize
) -> list:
    """One pipeline per view, in order: view ``i`` stands for ``views[i]["count"]`` pipelines.

    Args:
        views: ``{"count": int, "size": int | None, "kind": str, "transforms": [{"name", ...}]}``
            each (the ``augment.views`` schema, values already validated).
        image_shape: ``(C, H, W)`` of the input images (``(F,)``: node features of graphs).
        normalize: the final standardisation, one mean per channel (images).
    """
    if len(image_shape) == 3 and len(normalize.mean) != image_shape[0]:
        raise ValueError(f"normalisation has {len(normalize.mean)} channels but images have {image_shape[0]}")
    pipelines = []
    for i, view in enumerate(views):
        if view["kind"] not in VIEW_KINDS:
            raise ValueError(f"views[{i}]: unknown view kind '{view['kind']}'; available: {', '.join(VIEW_KINDS)}")
        factory = VIEW_KINDS[view["kind"]]
        try:
            pipelines += [factory(view["transforms"], view["size"], image_shape, normalize)
                          for _ in range(view["count"])]
        except ValueError as err:
            raise ValueError(f"views[{i}]: {err}") from None
    return pipelines


SIMCLR_JITTER = (0.8, 0.8, 0.8, 0.2)  # brightness, contrast, saturation, hue per unit strength
BYOL_JITTER = (0.4, 0.4, 0.2, 0.1)  # BYOL's factors exactly, at strength 1


@dataclass(frozen=True)
class ViewPreset:
    """One row of :data:`PRESETS`: the defaults of the ``augment`` preset fields. The per-view
    pairs are (view 1, view 2). A preset of another ``kind`` than ``transforms`` is its
    ``views`` (in the ``augment.views`` schema), or when it lists none two views of that kind
    without transforms (the other fields are unused)."""

    summary: str
    jitter: bool = True  # colour jitter (brightness and contrast only on one channel)
    crop_scale: tuple[float, float] = (0.08, 1.0)
    flip_prob: float = 0.5
    jitter_strength: float = 0.0
    jitter_per_unit: tuple[float, float, float, float] = SIMCLR_JITTER
    jitter_prob: float = 0.8
    gray_prob: float = 0.2  # 0: no grayscale transform (one-channel kinds)
    blur_prob: tuple[float, float] = (0.0, 0.0)
    solarize_prob: tuple[float, float] = (0.0, 0.0)
    kind: str = "transforms"
    views: tuple[dict[str, Any], ...] = ()


AUTO_PRESET = "auto"
"""``augment.preset: auto`` (the default): the preset named after the dataset's ``kind``."""

PRESETS: dict[str, ViewPreset] = {
    "gray-small": ViewPreset(
        "small grayscale images (MNIST-like, <= 64 px): crop 0.4-1, no flip, brightness/contrast 0.8 (p=0.8), "
        "blur p=0.5",
        crop_scale=(0.4, 1.0), flip_prob=0.0, jitter_strength=1.0, gray_prob=0.0, blur_prob=(0.5, 0.5),
    ),
    "colour-small": ViewPreset(
        "small colour images (CIFAR-like, <= 64 px): crop 0.2-1 + flip, jitter s=0.5 (p=0.8), gray p=0.2",
        crop_scale=(0.2, 1.0), jitter_strength=0.5,
    ),
    "gray-large": ViewPreset(
        "large grayscale images: crop 0.08-1 + flip, brightness/contrast 0.8 (p=0.8), blur p=0.5",
        jitter_strength=1.0, gray_prob=0.0, blur_prob=(0.5, 0.5),
    ),
    "colour-large": ViewPreset(
        "large colour images (photos): SimCLR ImageNet's views", jitter_strength=1.0, blur_prob=(0.5, 0.5)
    ),
    "simclr-cifar": ViewPreset("SimCLR CIFAR: crop+flip, jitter s=0.5 (p=0.8), gray p=0.2", jitter_strength=0.5),
    "simclr-imagenet": ViewPreset(
        "SimCLR ImageNet: crop+flip, jitter s=1.0, gray, blur p=0.5", jitter_strength=1.0, blur_prob=(0.5, 0.5)
    ),
    "byol": ViewPreset(
        "BYOL: crop+flip, jitter (0.4, 0.4, 0.2, 0.1), gray, blur (1.0, 0.1), solarize (0.0, 0.2)",
        jitter_strength=1.0,
        jitter_per_unit=BYOL_JITTER,
        blur_prob=(1.0, 0.1),
        solarize_prob=(0.0, 0.2),
    ),
    "crop-only": ViewPreset("random resized crop + horizontal flip only", jitter=False, gray_prob=0.0),
}
"""``augment.preset`` -> its row; datasets add their own (:func:`register_preset`). The first
four are the presets of the image kinds (:func:`~contrastlab.data.dataset.image_kind`), which
``auto`` picks."""


def register_preset(name: str, preset: ViewPreset) -> None:
    """Make ``augment.preset: name`` available (e.g. Spirograph's, of its own view kind)."""
    if name in PRESETS or name == AUTO_PRESET:
        raise ValueError(f"augmentation preset '{name}' is registered twice")
    PRESETS[name] = preset


def resolve_preset(preset: str, data_kind: str) -> str:
    """``preset``, or for ``auto`` the preset named after ``data_kind`` (``ValueError`` when
    there is none)."""
    if preset != AUTO_PRESET:
        return preset
    if data_kind not in PRESETS:
        raise ValueError(f"augment.preset 'auto': no preset for data kind '{data_kind}'; "
                         f"set augment.preset to one of {', '.join(PRESETS)}, or augment.views")
    return data_kind


def preset_views(
    preset: str,
    *,
    size: int | None = None,
    crop_scale: tuple[float, float] | None = None,
    jitter_strength: float | None = None,
    jitter_prob: float | None = None,
    gray_prob: float | None = None,
    blur_prob: tuple[float, float] | None = None,
    solarize_prob: tuple[float, float] | None = None,
    flip_prob: float | None = None,
) -> list[dict[str, Any]]:
    """The two views of ``preset`` in the ``augment.views`` schema; ``None`` arguments take the
    preset's value (the ``augment`` preset fields).

    Each view: crop (output side ``size``, ``crop_scale``, ``flip_prob``), then for presets with
    jitter the colour jitter (``jitter_strength`` times the preset's per-unit magnitudes,
    ``jitter_prob``), then grayscale, blur and solarize where their probability is > 0.
    Presets of another kind ignore all but ``size``.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown augmentation preset '{preset}'; valid: {', '.join(PRESETS)}")
    spec = PRESETS[preset]
    if spec.kind != "transforms":
        return [dict(view) for view in spec.views] or [{"count": 2, "size": size, "kind": spec.kind, "transforms": []}]

    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

    strength = pick(jitter_strength, spec.jitter_strength)
    if strength < 0:
        raise ValueError(f"jitter_strength must be >= 0, got {strength}")
    gray = pick(gray_prob, spec.gray_prob)
    blur = tuple(pick(blur_prob, spec.blur_prob))
    solarize = tuple(pick(solarize_prob, spec.solarize_prob))
    for field, pair in (("blur_prob", blur), ("solarize_prob", solarize)):
        if len(pair) != 2:
            raise ValueError(f"{field} must give one probability per view (2 values), got {pair}")
    crop = {"name": "crop", "scale": tuple(pick(crop_scale, spec.crop_scale)),
            "flip_prob": pick(flip_prob, spec.flip_prob)}
    views = []
    for view in range(2):
        transforms: list[dict[str, Any]] = [dict(crop)]
        if spec.jitter:
            b, c, s, h = (strength * unit for unit in spec.jitter_per_unit)
            transforms.append({"name": "jitter", "brightness": b, "contrast": c, "saturation": s, "hue": h,
                               "prob": pick(jitter_prob, spec.jitter_prob)})
        if gray > 0:
            transforms.append({"name": "gray", "prob": gray})
        if blur[view] > 0:
            transforms.append({"name": "blur", "prob": blur[view]})
        if solarize[view] > 0:
            transforms.append({"name": "solarize", "prob": solarize[view]})
        views.append({"count": 1, "size": size, "kind": "transforms", "transforms": transforms})
    return views


def build_views(preset: str, *, image_size: int, channels: int, normalize: Normalize, **fields: Any) -> list:
    """The two view pipelines of ``preset`` for ``channels x image_size x image_size`` images;
    ``fields`` are :func:`preset_views`' keyword arguments (``size``, ``crop_scale``, ...)."""
    views = preset_views(preset, **fields)
    return build_pipelines(views, image_shape=(channels, image_size, image_size), normalize=normalize)
