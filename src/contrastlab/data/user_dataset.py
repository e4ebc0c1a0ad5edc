"""A user's own map-style ``torch.utils.data.Dataset`` of images, seen through the dataset protocol.

Each item of the wrapped dataset is an image, or an ``(image, label)`` pair (any longer tuple:
its first two entries). An image is a PIL image (any mode; converted to ``L`` or ``RGB`` as the
first one is), a ``(C, H, W)`` or ``(H, W)`` tensor (``uint8``, or float in ``[0, 1]``: not
normalised, contrastlab normalises itself), or an ``(H, W[, C])`` numpy array as PIL and OpenCV
give. Every image must have the first one's shape (resize in the dataset's own transform): the
views crop and augment batches of one size on the training device.

Labels must be known without decoding every image each epoch: the ``labels`` argument, else the
dataset's ``targets`` attribute (the torchvision convention), else one pass over the dataset at
construction (which reads every item once).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from contrastlab.data.base import DataError
from contrastlab.data.dataset import Batch, SampleKey, image_kind
from contrastlab.data.decode import is_gray, to_8bit, to_tensor


class UserImages:
    """``dataset`` (map-style: ``len`` and integer indexing) under the dataset protocol.

    Samples are batches of one: ``{"inputs": (1, C, H, W) uint8, "index": (1,), "labels": (1,)}``
    (no labels for an unlabelled dataset); :meth:`collate` joins them.

    Args:
        dataset: the user's dataset.
        labels: ``(N,)`` integer labels, or ``None`` (see the module docstring).
        classes: class names indexed by label (default: the dataset's ``classes`` attribute, if any).
        name: how messages name the dataset.
        positions: the items of ``dataset`` this view covers (``None``: all; set by :meth:`subset`).
    """

    targets = None
    target_names: tuple[str, ...] = ()

    def __init__(self, dataset: Any, labels: Sequence[int] | torch.Tensor | None = None,
                 classes: Sequence[str] | None = None, name: str = "dataset",
                 positions: torch.Tensor | None = None) -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise DataError(f"{name}: expected a map-style dataset (with __len__ and __getitem__), "
                            f"got {type(dataset).__name__}")
        self.dataset, self.name = dataset, name
        self.positions = torch.arange(len(dataset)) if positions is None else positions
        if len(self.positions) == 0:
            raise DataError(f"{name}: the dataset is empty")
        first = self._item(0)
        self.channels = first[0].shape[0]
        self.shape = tuple(first[0].shape)
        self.kind = image_kind(self.shape)
        self.labels = self._labels(labels, first[1])
        self.classes = tuple(classes if classes is not None else getattr(dataset, "classes", ()) or ())

    # ------------------------------------------------------------------ protocol
    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, key: int | SampleKey) -> Batch:
        index = key.index if isinstance(key, SampleKey) else int(key)
        image, _ = self._item(index)
        if tuple(image.shape) != self.shape:
            raise DataError(f"{self.name}: sample {index} has shape {tuple(image.shape)}, sample 0 has "
                            f"{self.shape}; give every image one size (resize in the dataset's transform)")
        batch: Batch = {"inputs": image[None], "index": torch.tensor([index])}
        if self.labels is not None:
            batch["labels"] = self.labels[index: index + 1]
        return batch

    def collate(self, samples: list[Batch]) -> Batch:
        return {key: torch.cat([s[key] for s in samples]) for key in samples[0]}

    def subset(self, index: torch.Tensor) -> "UserImages":
        """The samples at ``index`` (1-D positions or a boolean mask) of this view."""
        picked = UserImages.__new__(UserImages)
        picked.__dict__.update(self.__dict__)
        picked.positions = self.positions[index]
        picked.labels = None if self.labels is None else self.labels[index]
        return picked

    # ------------------------------------------------------------------ reading
    def _item(self, index: int) -> tuple[torch.Tensor, Any]:
        """Item ``index`` of this view as ``((C, H, W) uint8, label or None)``."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: sample {index} out of range for {len(self)} samples")
        position = int(self.positions[index])
        item = self.dataset[position]
        image, label = (item[0], item[1]) if isinstance(item, (tuple, list)) else (item, None)
        return self._image(image, position), label

    def _image(self, image: Any, position: int) -> torch.Tensor:
        where = f"{self.name}: item {position}"
        if isinstance(image, Image.Image):
            channels = getattr(self, "channels", None) or (1 if is_gray(image) else 3)
            return to_tensor(to_8bit(image, channels))
        if isinstance(image, np.ndarray):
            if image.ndim not in (2, 3):
                raise DataError(f"{where}: a numpy image must be (H, W) or (H, W, C), got shape {image.shape}")
            image = torch.from_numpy(np.ascontiguousarray(image if image.ndim == 2 else image.transpose(2, 0, 1)))
        if not torch.is_tensor(image):
            raise DataError(f"{where}: expected a PIL image, a tensor or a numpy array, got {type(image).__name__}")
        if image.dim() == 2:
            image = image[None]
        if image.dim() != 3:
            raise DataError(f"{where}: a tensor image must be (C, H, W) or (H, W), got shape {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            return image
        if not image.is_floating_point():
            raise DataError(f"{where}: a tensor image must be uint8 or float in [0, 1], got {image.dtype}")
        low, high = float(image.min()), float(image.max())
        if low < 0 or high > 1:
            raise DataError(f"{where}: float image values must lie in [0, 1] (not normalised: contrastlab "
                            f"normalises itself), got {low:.3g} to {high:.3g}")
        return (image * 255).round().to(torch.uint8)

    def _labels(self, labels: Sequence[int] | torch.Tensor | None, first_label: Any) -> torch.Tensor | None:
        """The ``(N,)`` int64 labels of this view (see the module docstring), or ``None``."""
        if labels is None:
            labels = getattr(self.dataset, "targets", None)
            if labels is not None:
                labels = torch.as_tensor(labels)[self.positions]
        if labels is None and first_label is not None:
            labels = [self._item(i)[1] for i in range(len(self))]  # one pass: pass labels= to avoid it
        if labels is None:
            return None
        try:
            labels = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError) as err:
            raise DataError(f"{self.name}: labels must be integers, one per item ({err})") from None
        if labels.dim() != 1 or len(labels) != len(self) or labels.is_floating_point() or labels.dtype == torch.bool:
            raise DataError(f"{self.name}: expected {len(self)} integer labels, got {labels.dtype} of shape "
                            f"{tuple(labels.shape)}")
        if len(labels) and int(labels.min()) < 0:
            raise DataError(f"{self.name}: labels must be >= 0, got {int(labels.min())}")
        return labels.long()
