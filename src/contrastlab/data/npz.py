"""Arrays in a numpy ``.npz`` file: ``x`` uint8 images and optional ``y`` integer labels."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from contrastlab.data.base import DataError, ImageData
from contrastlab.data.files import require_file, require_root, take_subset
from contrastlab.data.registry import DATASETS

CHANNEL_COUNTS = (1, 3)


def split_file(root: Path, split: str) -> Path:
    """``root`` itself if it is a file (only for split ``train``), else ``root/<split>.npz``."""
    if root.is_file():
        if split != "train":
            raise DataError(
                f"{root} is a single file, which only serves split 'train'; for split '{split}' "
                f"set data.root to a folder holding train.npz and {split}.npz"
            )
        return root
    return require_file(root / f"{split}.npz")


def to_nchw(x: np.ndarray, path: Path) -> np.ndarray:
    """``x``: ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)`` with C in {1, 3} -> ``(N, C, H, W)``.

    A 4-d array is read as channels-first when its second axis is 1 or 3, else channels-last.
    """
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[1] in CHANNEL_COUNTS:
        return x
    if x.ndim == 4 and x.shape[3] in CHANNEL_COUNTS:
        return x.transpose(0, 3, 1, 2)
    raise DataError(
        f"{path}: 'x' has shape {x.shape}; expected (N, H, W), (N, C, H, W) or (N, H, W, C) with C in 1 or 3"
    )


def read_arrays(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Validated images ``(N, C, H, W)`` uint8 and labels ``(N,)`` int64 (or ``None``) of ``path``."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            content = {key: arrays[key] for key in arrays.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable .npz file ({err})") from err
    if "x" not in content:
        raise DataError(f"{path}: no array 'x' (the images); found: {', '.join(content) or 'nothing'}")
    x = content["x"]
    if x.dtype != np.uint8:
        raise DataError(
            f"{path}: 'x' has dtype {x.dtype}, expected uint8; convert the images to 0..255 first, "
            f"e.g. (x * 255).round().astype(np.uint8) for floats in [0, 1]"
        )
    images = np.ascontiguousarray(to_nchw(x, path))
    y = content.get("y")
    if y is None:
        return images, None
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: 'y' must be a 1-d integer array of labels, got {y.dtype} {y.shape}")
    if y.shape[0] != images.shape[0]:
        raise DataError(f"{path}: 'x' holds {images.shape[0]} images but 'y' holds {y.shape[0]} labels")
    if y.size and y.min() < 0:
        raise DataError(f"{path}: 'y' holds negative label {y.min()}; expected labels 0..K-1")
    return images, y.astype(np.int64)


@DATASETS.register("npz", "numpy .npz with uint8 images 'x' and optional labels 'y'; set data.root")
def load(split: str, root: str | None = None, size: int | None = None, seed: int = 0) -> ImageData:
    """Images ``(N, C, H, W)`` uint8 and labels ``(N,)`` (or ``None``) from ``root/<split>.npz``.

    ``root`` may also be one ``.npz`` file, which then serves split ``train``.
    """
    path = split_file(require_root("npz", root, what=".npz file or a folder of <split>.npz files"), split)
    images, labels = read_arrays(path)
    data = ImageData(
        name="npz",
        images=torch.from_numpy(images),
        labels=None if labels is None else torch.from_numpy(labels),
    )
    return take_subset(data, size, seed)
