"""The preprocessing evaluation applies to a dataset's inputs: a JSON record of it (kept in
checkpoints and exports) and the callable that applies it to a user's images.

The record of image data (:func:`preprocessing_record`)::

    {"kind": "image", "channels": "RGB" or "L", "input_size": [C, H, W],
     "resize": S or null, "centre_crop": S or null,
     "normalize": {"kind": "rgb", "mean": [m_c, ...], "std": [s_c, ...]}}

``resize`` / ``centre_crop``: the shorter side resized to ``S`` (antialiased bilinear), then the
centre ``S x S`` kept, as evaluation decodes image files with ``data.image_size``; both null
when evaluation takes the images as they are (in-memory datasets). ``normalize``: ``rgb`` is
the per-channel standardisation ``(x - mean) / std`` of pixels ``x`` in [0, 1] (one channel for
gray images, ``data.color_space: rgb``); ``lab`` is sRGB -> CIE Lab standardised by the fixed
``mean`` / ``std`` given in Lab units (``data.color_space: lab``). Data that are not images
(graphs, skeleton sequences) have no image preprocessing: ``{"kind": "none", "data_kind": ...}``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from contrastlab.data.dataset import Dataset
from contrastlab.data.decode import centre_input, centre_square, to_8bit, to_tensor
from contrastlab.data.preprocess import LabNormalize, Normalize

IMAGE, NONE = "image", "none"
CHANNEL_ORDERS = {1: "L", 3: "RGB"}


def preprocessing_record(train: Dataset, normalize: Normalize, image_size: int | None) -> dict[str, Any]:
    """The record (module docstring) of the eval inputs of ``train``, normalised by
    ``normalize`` (a run's ``RunData.normalize``), decoded at ``image_size`` (``data.image_size``)."""
    if len(train.shape) != 3:
        return {"kind": NONE, "data_kind": train.kind}
    channels = train.shape[0]
    kind = "lab" if isinstance(normalize, LabNormalize) else "rgb"
    return {"kind": IMAGE, "channels": CHANNEL_ORDERS[channels], "input_size": list(train.shape),
            "resize": image_size, "centre_crop": image_size,
            "normalize": {"kind": kind, "mean": list(normalize.mean), "std": list(normalize.std)}}


def preprocess_from_record(record: dict[str, Any], source: str) -> Callable[[Any], Any]:
    """The callable that applies ``record``: an :class:`ImagePreprocess`, or for a record of
    kind ``none`` the identity (inputs go to the backbone as they are). ``source`` names the
    record in error messages (``ValueError`` naming the field and its value)."""
    kind = _field(record, "kind", source, (IMAGE, NONE))
    if kind == NONE:
        return unchanged
    return ImagePreprocess.from_record(record, source)


def unchanged(inputs: Any) -> Any:
    """The preprocessing of data that are not images: none."""
    return inputs


class ImagePreprocess:
    """Images -> the normalised ``(B, C, H, W)`` float batch the backbone was evaluated on.

    Accepts a PIL image, a list of PIL images, or a tensor ``(B, C, H, W)`` / ``(C, H, W)``,
    uint8 in 0..255 or float in [0, 1]. With a recorded resize, PIL images and uint8 tensors are
    resized and cropped as evaluation decodes image files (PIL's antialiased bilinear resize of
    the centred square, in 8 bits; evaluation also decodes a large JPEG file in draft mode, at 1/2
    to 1/8 scale, which a PIL image passed here is not); float tensors by the same PIL filter on
    each channel in 32-bit float, without the rounding to 8 bits (under one grey level apart).
    Without a recorded resize the images must have the recorded size.
    """

    def __init__(self, channels: int, size: tuple[int, int], resize: int | None, normalize: Normalize) -> None:
        self.channels, self.size, self.resize, self.normalize = channels, size, resize, normalize

    @classmethod
    def from_record(cls, record: dict[str, Any], source: str) -> "ImagePreprocess":
        order = _field(record, "channels", source, tuple(CHANNEL_ORDERS.values()))
        channels = next(c for c, name in CHANNEL_ORDERS.items() if name == order)
        input_size = _field(record, "input_size", source)
        if not (isinstance(input_size, list) and len(input_size) == 3 and input_size[0] == channels
                and all(isinstance(s, int) and s > 0 for s in input_size)):
            raise ValueError(f"{source}: 'input_size' must be [C, H, W] with C = {channels} ({order}), "
                             f"got {input_size!r}")
        resize, crop = _field(record, "resize", source), _field(record, "centre_crop", source)
        if resize != crop or not (resize is None or isinstance(resize, int) and resize > 0):
            raise ValueError(f"{source}: 'resize' and 'centre_crop' must be one positive size or both null, "
                             f"got {resize!r} and {crop!r}")
        normalize = _normalize_from(_field(record, "normalize", source), channels, f"{source}: 'normalize'")
        return cls(channels, (input_size[1], input_size[2]), resize, normalize)

    def __call__(self, images: Image.Image | list[Image.Image] | torch.Tensor) -> torch.Tensor:
        """``images`` (class docstring) -> ``(B, C, H, W)`` float32 (a float tensor's dtype
        and device are kept)."""
        if isinstance(images, Image.Image):
            images = [images]
        if isinstance(images, (list, tuple)):
            if not images or not all(isinstance(image, Image.Image) for image in images):
                kinds = sorted({type(image).__name__ for image in images})
                raise TypeError(f"preprocess takes a PIL image, a non-empty list of PIL images or a tensor, got a list "
                                f"of {', '.join(kinds) or 'nothing'}")
            batch = torch.stack([self._pil_input(image) for image in images])
        elif torch.is_tensor(images):
            batch = self._tensor_input(images)
        else:
            raise TypeError("preprocess takes a PIL image, a list of PIL images or a tensor, "
                            f"got {type(images).__name__}")
        return self.normalize(batch)

    def _pil_input(self, image: Image.Image) -> torch.Tensor:
        """One PIL image (any mode) -> ``(C, H, W)`` uint8 at the recorded size."""
        if self.resize is not None:
            return centre_input(image, self.resize, self.channels, draft=False)
        self._check_size(image.height, image.width)
        return to_tensor(to_8bit(image, self.channels))

    def _tensor_input(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` or ``(C, H, W)`` uint8 / [0, 1] float -> ``(B, C, H, W)`` at the recorded size."""
        batch = images.unsqueeze(0) if images.dim() == 3 else images
        if batch.dim() != 4 or batch.shape[1] != self.channels or not (
                batch.dtype == torch.uint8 or batch.is_floating_point()):
            raise ValueError(f"images must be (B, {self.channels}, H, W) or ({self.channels}, H, W), uint8 or float in "
                             f"[0, 1], got {images.dtype} with shape {tuple(images.shape)}")
        if batch.is_floating_point() and batch.numel() and (batch.min() < 0 or batch.max() > 1):
            raise ValueError(f"float images must lie in [0, 1], got values in [{batch.min().item():g}, "
                             f"{batch.max().item():g}]; pass uint8 images or divide by 255")
        if self.resize is None:
            self._check_size(batch.shape[2], batch.shape[3])
            return batch
        resize = _resize_uint8 if batch.dtype == torch.uint8 else _resize_float
        return torch.stack([resize(image, self.resize) for image in batch.cpu()]).to(batch.device)

    def _check_size(self, height: int, width: int) -> None:
        if (height, width) != self.size:
            raise ValueError(f"images are {width}x{height} but the backbone was evaluated on {self.size[1]}x"
                             f"{self.size[0]} images as they are (no resize in its preprocessing); resize them first")


def _resize_uint8(image: torch.Tensor, size: int) -> torch.Tensor:
    """``(C, H, W)`` uint8, C = 1 or 3 -> ``(C, size, size)`` uint8: :func:`centre_input` of it as a PIL image."""
    pixels = image.permute(1, 2, 0).numpy()
    return centre_input(Image.fromarray(pixels[:, :, 0] if image.shape[0] == 1 else pixels), size, image.shape[0],
                        draft=False)


def _resize_float(image: torch.Tensor, size: int) -> torch.Tensor:
    """``(C, H, W)`` float -> ``(C, size, size)`` in its dtype: each channel as a 32-bit PIL image
    resized like :func:`centre_input` (antialiased bilinear of the centred square)."""
    box = centre_square(image.shape[2], image.shape[1])
    channels = [np.asarray(Image.fromarray(channel.float().numpy()).resize((size, size), Image.Resampling.BILINEAR,
                                                                          box=box)) for channel in image]
    return torch.from_numpy(np.stack(channels)).to(image.dtype)


def _normalize_from(spec: dict[str, Any], channels: int, source: str) -> Normalize:
    """The normalisation of a record's ``normalize`` entry, for images of ``channels`` channels."""
    kind = _field(spec, "kind", source, ("rgb", "lab"))
    if kind == "lab":
        if channels != 3:
            raise ValueError(f"{source}: 'lab' needs RGB images, the record's have {channels} channel(s)")
        return LabNormalize()
    mean, std = _field(spec, "mean", source), _field(spec, "std", source)
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == channels
            and all(isinstance(s, (int, float)) and s > 0 for s in std)):
        raise ValueError(f"{source} needs {channels} means and {channels} positive stds, got mean {mean!r} "
                         f"and std {std!r}")
    return Normalize(mean, std)


def _field(record: dict[str, Any], key: str, source: str, allowed: tuple | None = None) -> Any:
    """``record[key]``; ``ValueError`` naming ``source`` and the key when it is missing or not in ``allowed``."""
    if not isinstance(record, dict) or key not in record:
        raise ValueError(f"{source}: the preprocessing record lacks '{key}'")
    value = record[key]
    if allowed is not None and value not in allowed:
        raise ValueError(f"{source}: '{key}' must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value
