"""MNIST and Fashion-MNIST from their idx files (plain or ``.gz``)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from contrastlab.data.base import DataError, ImageData
from contrastlab.data.files import check_split, read_maybe_gzip, require_root, subset_index
from contrastlab.data.registry import DATASETS

IDX_UBYTE = 0x08
SPLIT_PREFIX = {"train": "train", "test": "t10k"}
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
DIGIT_CLASSES = tuple(str(d) for d in range(10))


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The uint8 array stored in idx file ``path`` (or ``path.gz``), which must have ``ndim`` dims.

    Header: two zero bytes, dtype code ``0x08`` (unsigned byte), the number of dims, then
    each dim as a big-endian uint32; the data follows, exactly ``prod(dims)`` bytes.
    """
    raw = read_maybe_gzip(path)
    header_size = 4 + 4 * ndim
    if len(raw) < header_size or raw[0] != 0 or raw[1] != 0 or raw[2] != IDX_UBYTE or raw[3] != ndim:
        raise DataError(
            f"{path.name}: not an idx file of unsigned bytes with {ndim} dims "
            f"(expected magic bytes 00 00 08 0{ndim}, got {raw[:4].hex(' ') or 'an empty file'})"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims))
    found = len(raw) - header_size
    if found != expected:
        raise DataError(
            f"{path.name}: header says shape {dims} ({expected} bytes) but the file holds "
            f"{found} data bytes; the file is {'truncated' if found < expected else 'too long'}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)


def load_idx_split(folder: Path, split: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, H, W)`` and labels ``(N,)`` in ``0..num_classes-1`` (both uint8) of one split."""
    prefix = SPLIT_PREFIX[split]
    images_path = folder / f"{prefix}-images-idx3-ubyte"
    labels_path = folder / f"{prefix}-labels-idx1-ubyte"
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path.name} holds {images.shape[0]} images but {labels_path.name} holds "
            f"{labels.shape[0]} labels; expected one label per image"
        )
    if labels.size and labels.max() >= num_classes:
        raise DataError(f"{labels_path.name}: found label {labels.max()}, expected 0..{num_classes - 1}")
    return images, labels


def idx_loader(name: str, classes: tuple[str, ...], default_root: str | None, hint: str = "") -> Callable[..., ImageData]:
    """A registry loader for an idx-format dataset whose files lie in one folder (``hint``: how
    to get them, for the error when the folder is missing)."""

    def load(split: str, root: str | None = None, size: int | None = None, seed: int = 0) -> ImageData:
        check_split(name, split, tuple(SPLIT_PREFIX))
        what = "folder of idx files (train-images-idx3-ubyte, ...)"
        folder = require_root(name, root, default_root, what=what, hint=hint)
        images, labels = load_idx_split(folder, split, len(classes))
        index = subset_index(len(images), size, seed)
        if index is not None:
            images, labels = images[index], labels[index]
        return ImageData(
            name=name,
            images=torch.from_numpy(images.copy()).unsqueeze(1),
            labels=torch.from_numpy(labels.astype(np.int64)),
            classes=classes,
        )

    load.__doc__ = f"{name} split train or test: images ``(N, 1, 28, 28)`` uint8, labels ``(N,)``."
    return load


DATASETS.register("mnist", "MNIST idx files (plain or .gz); set data.root to their folder")(
    idx_loader("mnist", DIGIT_CLASSES, default_root=None)
)
DATASETS.register(
    "fashion-mnist", "Fashion-MNIST idx files (default: Debian's dataset-fashion-mnist folder)"
)(idx_loader("fashion-mnist", FASHION_CLASSES, default_root="/usr/share/datasets/fashion-mnist",
              hint="; on Debian or Ubuntu, 'sudo apt-get install dataset-fashion-mnist' puts them in "
                   "/usr/share/datasets/fashion-mnist, else set data.root to a folder of the four idx files"))
