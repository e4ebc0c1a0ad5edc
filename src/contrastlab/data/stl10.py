"""STL-10 from its binary files (``stl10_binary``), read through memory maps.

Each ``*_X.bin`` holds uint8 images of 3x96x96, every channel stored column-major; each
``*_y.bin`` holds one uint8 label in 1..10 per image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from contrastlab.data.base import DataError, ImageData
from contrastlab.data.files import check_split, find_subfolder, require_file, require_root, subset_index
from contrastlab.data.registry import DATASETS

STL_SHAPE = (3, 96, 96)
IMAGE_BYTES = int(np.prod(STL_SHAPE))
NUM_CLASSES = 10
SPLIT_PARTS = {
    "train": ("train",),
    "test": ("test",),
    "unlabeled": ("unlabeled",),
    "train+unlabeled": ("train", "unlabeled"),
}


def map_images(path: Path) -> np.memmap:
    """``path`` mapped as ``(N, 3, 96, 96)`` uint8 with the last two axes still (width, height)."""
    nbytes = require_file(path).stat().st_size
    if nbytes == 0 or nbytes % IMAGE_BYTES:
        raise DataError(
            f"{path}: {nbytes} bytes is not a whole number of 3x96x96 images "
            f"(expected a multiple of {IMAGE_BYTES}); the file may be truncated"
        )
    return np.memmap(path, dtype=np.uint8, mode="r", shape=(nbytes // IMAGE_BYTES, *STL_SHAPE))


def read_labels(path: Path, count: int) -> np.ndarray:
    """The ``count`` labels in ``path``, converted from 1..10 to ``(count,)`` int64 in 0..9."""
    labels = np.fromfile(require_file(path), dtype=np.uint8)
    if labels.shape[0] != count:
        raise DataError(f"{path}: {labels.shape[0]} labels but the image file holds {count} images")
    if count and (labels.min() < 1 or labels.max() > NUM_CLASSES):
        raise DataError(f"{path}: labels span {labels.min()}..{labels.max()}, expected 1..{NUM_CLASSES}")
    return labels.astype(np.int64) - 1


def read_class_names(path: Path) -> tuple[str, ...]:
    """The class names in ``class_names.txt``, one per line."""
    names = tuple(line.strip() for line in require_file(path).read_text().splitlines() if line.strip())
    if len(names) != NUM_CLASSES:
        raise DataError(f"{path}: {len(names)} class names, expected {NUM_CLASSES}")
    return names


def gather_images(maps: list[np.memmap], index: np.ndarray | None) -> np.ndarray:
    """Images ``(M, 3, 96, 96)`` uint8 (rows = height) at ``index`` of the maps concatenated.

    Each file is read once, straight into the output; ``index`` (sorted) ``None`` means all.
    """
    counts = [m.shape[0] for m in maps]
    total = sum(counts) if index is None else len(index)
    out = np.empty((total, *STL_SHAPE), dtype=np.uint8)
    start = filled = 0
    for images, count in zip(maps, counts):
        if index is None:
            source = images
        else:
            source = images[index[(index >= start) & (index < start + count)] - start]
        out[filled : filled + len(source)] = source.transpose(0, 1, 3, 2)
        start += count
        filled += len(source)
    return out


@DATASETS.register("stl10", "STL-10 binary files (stl10_binary) incl. 100k unlabelled images; set data.root")
def load(split: str, root: str | None = None, size: int | None = None, seed: int = 0) -> ImageData:
    """STL-10 split train (5000), test (8000), unlabeled (100000) or train+unlabeled.

    Returns images ``(N, 3, 96, 96)`` uint8; labels ``(N,)`` in 0..9 for train and test,
    ``None`` for the splits that include unlabelled images.
    """
    check_split("stl10", split, tuple(SPLIT_PARTS))
    given = require_root("stl10", root, what="stl10_binary folder (or its parent)")
    folder = find_subfolder(given, "stl10_binary")
    parts = SPLIT_PARTS[split]
    maps = [map_images(folder / f"{part}_X.bin") for part in parts]
    index = subset_index(sum(m.shape[0] for m in maps), size, seed)
    labels, classes = None, ()
    if "unlabeled" not in parts:
        classes = read_class_names(folder / "class_names.txt")
        all_labels = read_labels(folder / f"{parts[0]}_y.bin", maps[0].shape[0])
        labels = torch.from_numpy(all_labels if index is None else all_labels[index])
    images = torch.from_numpy(gather_images(maps, index))
    return ImageData(name="stl10", images=images, labels=labels, classes=classes)
