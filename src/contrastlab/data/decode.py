"""Decoding one image file to uint8 pixels: every PIL mode, eval crops, random resized crops
taken at decode time from the full-resolution image, and JPEG draft mode.

Mode rules (output: ``L`` for one channel, ``RGB`` for three):

* ``RGB``, ``L``: as stored. ``1``: 0 / 255.
* ``LA``, ``RGBA`` (and ``PA``, ``La``, ``RGBa``): the alpha channel is dropped, colours kept
  as stored (PIL's ``convert``: no compositing onto a background).
* ``P``: the palette's colours; to one channel through the palette's luma, which is exact
  for a gray palette (R = G = B).
* 16-bit and 32-bit integer gray (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``, ``I``): values
  ``v`` in 0..65535 (``I`` is clipped to that range) become ``round(v * 255 / 65535)``. PIL's own
  ``convert('L')`` clips them at 255 instead, which makes nearly every 16-bit image white.
* ``CMYK``: PIL's ``R = 255 (1 - C) (1 - K)`` per channel (Adobe-inverted JPEGs are handled by
  PIL's decoder). ``YCbCr``, ``LAB``, ``HSV``: PIL's conversion to RGB.
* A gray source is repeated on three channels when the dataset is RGB; a colour source is
  reduced to its luma (``0.299 R + 0.587 G + 0.114 B``) when the dataset is grayscale.

JPEG draft mode (``Image.draft``): libjpeg-turbo scales the DCT blocks by 1/2, 1/4 or 1/8
while decoding, which costs a fraction of a full decode. The reduction is the largest power
of two at which every requested crop still has at least its output side in pixels, so the
final antialiased resize always downscales.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np
import torch
from PIL import Image

from contrastlab.data.base import DataError

HIGH_DEPTH_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
GRAY_MODES = {"1", "L", "LA", "La", "F"} | HIGH_DEPTH_MODES
DRAFT_REDUCTIONS = (8, 4, 2)


class CropSpec(Protocol):
    """What a view's crop transform exposes (:class:`~contrastlab.data.augment.RandomResizedCropFlip`)."""

    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float]
    flip_prob: float


@dataclass(frozen=True)
class DecodeCrop:
    """A random resized crop + horizontal flip drawn at decode time (torchvision's box
    distribution, in pixels of the full-resolution image).

    Attributes:
        size: output side ``s`` in pixels.
        scale: range of the box's area as a fraction of the image's area.
        ratio: range of the box's width / height in pixels (drawn log-uniformly).
        flip_prob: probability of a horizontal flip.
    """

    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float]
    flip_prob: float

    attempts = 10

    @classmethod
    def like(cls, crop: CropSpec) -> "DecodeCrop":
        """The decode-time crop with ``crop``'s ``size``, ``scale``, ``ratio`` and ``flip_prob``."""
        size, scale, ratio = int(crop.size), tuple(map(float, crop.scale)), tuple(map(float, crop.ratio))
        if size <= 0:
            raise ValueError(f"crop size must be positive, got {crop.size}")
        if not (len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"crop scale must be a range within (0, 1], got {crop.scale}")
        if not (len(ratio) == 2 and 0 < ratio[0] <= ratio[1]):
            raise ValueError(f"crop ratio must be a positive range (low <= high), got {crop.ratio}")
        if not 0 <= crop.flip_prob <= 1:
            raise ValueError(f"flip probability must lie in [0, 1], got {crop.flip_prob}")
        return cls(size, scale, ratio, float(crop.flip_prob))  # type: ignore[arg-type]

    def box(self, width: int, height: int, generator: torch.Generator) -> tuple[int, int, int, int, bool]:
        """``(left, top, w, h, flip)`` of one draw in pixels of a ``width x height`` image.

        Up to 10 attempts of area ``~ U(scale) * width * height`` and ``log(w / h) ~ U(log ratio)``,
        rounded to pixels; the first that fits is placed uniformly. If none fits: the largest
        centred box whose ratio is ``width / height`` clamped to ``ratio``.
        """
        draws = torch.rand(self.attempts, 2, generator=generator, dtype=torch.float64)
        place = torch.rand(2, generator=generator, dtype=torch.float64)
        flip = bool(torch.rand(1, generator=generator) < self.flip_prob)
        log_low, log_high = math.log(self.ratio[0]), math.log(self.ratio[1])
        area = width * height
        for u_area, u_ratio in draws.tolist():
            target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * u_area)
            aspect = math.exp(log_low + (log_high - log_low) * u_ratio)
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                left = min(int(place[0] * (width - w + 1)), width - w)
                top = min(int(place[1] * (height - h + 1)), height - h)
                return left, top, w, h, flip
        aspect = min(max(width / height, self.ratio[0]), self.ratio[1])
        if aspect >= width / height:  # the image is narrower than the ratio allows (or within it)
            w, h = width, max(1, round(width / aspect))
        else:
            w, h = max(1, round(height * aspect)), height
        return (width - w) // 2, (height - h) // 2, w, h, flip


def crop_generator(seed: int, view: int) -> torch.Generator:
    """The generator of view ``view``'s crop of the sample whose key carries ``seed``."""
    return torch.Generator().manual_seed((seed * 1_000_003 + view) % (2**63 - 1))


@contextmanager
def opened(path: str) -> Iterator[Image.Image]:
    """``path`` opened with PIL (header only until pixels are asked for); any failure to read
    or decode it inside the block raises a ``DataError`` naming the file."""
    try:
        with Image.open(path) as image:
            yield image
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot decode image ({type(err).__name__}: {err})") from err


def is_gray(image: Image.Image) -> bool:
    """Whether ``image`` (opened, not necessarily decoded) is grayscale: a gray mode, or a
    palette whose colours all have R = G = B (read from the header where the format has it)."""
    if image.mode in GRAY_MODES:
        return True
    if image.mode not in ("P", "PA"):
        return False
    palette = image.palette
    if palette is not None and palette.mode == "RGB" and isinstance(palette.palette, bytes):
        colours = np.frombuffer(palette.palette, dtype=np.uint8)
    else:
        colours = np.asarray(image.getpalette("RGB") or [], dtype=np.uint8)
    colours = colours[: len(colours) // 3 * 3].reshape(-1, 3)
    return bool((colours == colours[:, :1]).all())


def to_8bit(image: Image.Image, channels: int) -> Image.Image:
    """``image`` (any mode, see the module docstring) as mode ``L`` (``channels == 1``) or ``RGB``."""
    target = "L" if channels == 1 else "RGB"
    if image.mode in HIGH_DEPTH_MODES:
        values = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)  # v * 255 + 32767 < 2**32
        image = Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), "L")
    elif image.mode in ("LA", "La") and target == "L":
        image = image.getchannel(0)
    return image if image.mode == target else image.convert(target)


def draft_reduction(image: Image.Image, sides: list[tuple[float, int]]) -> int:
    """Apply draft mode to a JPEG ``image`` at the largest reduction (8, 4, 2) at which every
    ``(crop side in pixels, output side)`` pair keeps at least the output side; return the
    reduction (1: no draft; always 1 for other formats)."""
    if image.format != "JPEG":
        return 1
    room = min(side / out for side, out in sides)
    for reduction in DRAFT_REDUCTIONS:
        if room >= reduction:
            width, height = image.size
            result = image.draft(image.mode, (max(1, width // reduction), max(1, height // reduction)))
            return 1 if result is None else round(width / result[1][2])
    return 1


def to_tensor(image: Image.Image) -> torch.Tensor:
    """An ``L`` or ``RGB`` PIL image -> ``(C, H, W)`` uint8 tensor."""
    pixels = np.asarray(image)  # read-only view of PIL's buffer: copied once into the tensor
    return torch.from_numpy(pixels[None].copy() if pixels.ndim == 2 else pixels.transpose(2, 0, 1).copy())


def decode_native(path: str, channels: int) -> torch.Tensor:
    """The whole image at ``path`` at its own size: ``(C, H, W)`` uint8."""
    with opened(path) as image:
        return to_tensor(to_8bit(image, channels))


def decode_centre(path: str, size: int, channels: int, draft: bool = True) -> torch.Tensor:
    """The eval input of ``path``: the shorter side resized to ``size`` and the centre
    ``size x size`` kept (one antialiased bilinear resize of the centred square of side
    ``min(W, H)``, so no rounding of the long side): ``(C, size, size)`` uint8."""
    with opened(path) as image:
        return centre_input(image, size, channels, draft)


def centre_input(image: Image.Image, size: int, channels: int, draft: bool = True) -> torch.Tensor:
    """:func:`decode_centre` of an opened (or already decoded) PIL ``image``: ``(C, size, size)``
    uint8. Draft mode applies only to a JPEG whose pixels are not decoded yet."""
    width, height = image.size
    reduction = draft_reduction(image, [(min(width, height), size)]) if draft else 1
    image = to_8bit(image, channels)
    return to_tensor(image.resize((size, size), Image.Resampling.BILINEAR, box=centre_square(width, height, reduction)))


def centre_square(width: int, height: int, reduction: int = 1) -> tuple[float, float, float, float]:
    """``(left, top, right, bottom)`` of the centred square of side ``min(width, height)`` of a
    ``width x height`` image, in pixels of that image decoded at ``1 / reduction`` scale."""
    side = min(width, height)
    left, top = (width - side) / 2 / reduction, (height - side) / 2 / reduction
    return left, top, left + side / reduction, top + side / reduction


def decode_crops(path: str, crops: tuple[DecodeCrop, ...], seed: int, channels: int,
                 draft: bool = True) -> list[torch.Tensor]:
    """One random resized crop per view of the image at ``path``, drawn in pixels of the
    full-resolution image with view ``k``'s generator ``crop_generator(seed, k)``, resized to
    ``crops[k].size`` (antialiased bilinear) and flipped: ``[(C, s_k, s_k) uint8, ...]``.
    The file is decoded once, at the draft reduction that the most demanding view allows."""
    with opened(path) as image:
        width, height = image.size
        boxes = [crop.box(width, height, crop_generator(seed, k)) for k, crop in enumerate(crops)]
        reduction = (draft_reduction(image, [(min(w, h), crop.size) for crop, (_, _, w, h, _) in zip(crops, boxes)])
                     if draft else 1)
        image = to_8bit(image, channels)
        views = []
        for crop, (left, top, w, h, flip) in zip(crops, boxes):
            box = (left / reduction, top / reduction, (left + w) / reduction, (top + h) / reduction)
            view = image.resize((crop.size, crop.size), Image.Resampling.BILINEAR, box=box)
            views.append(to_tensor(view.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else view))
        return views
