"""CIFAR-10 and CIFAR-100 from the "python version" pickle batches.

The batches are pickles, which can run code when loaded: they are read with a restricted
unpickler (:mod:`contrastlab.data.safe_pickle`) that builds only dicts, lists, bytes, numbers and
numpy arrays, and refuses a file that asks for anything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from contrastlab.data.base import DataError, ImageData
from contrastlab.data.files import check_split, find_subfolder, require_file, require_root, take_subset
from contrastlab.data.registry import DATASETS
from contrastlab.data.safe_pickle import load_pickle

CIFAR_SHAPE = (3, 32, 32)


@dataclass(frozen=True)
class CifarLayout:
    """File names and pickle keys of one CIFAR variant."""

    name: str
    folder: str
    split_files: dict[str, tuple[str, ...]]
    meta_file: str
    names_key: bytes
    labels_key: bytes


CIFAR10 = CifarLayout(
    name="cifar10",
    folder="cifar-10-batches-py",
    split_files={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    meta_file="batches.meta",
    names_key=b"label_names",
    labels_key=b"labels",
)
CIFAR100 = CifarLayout(
    name="cifar100",
    folder="cifar-100-python",
    split_files={"train": ("train",), "test": ("test",)},
    meta_file="meta",
    names_key=b"fine_label_names",
    labels_key=b"fine_labels",
)


def unpickle(path: Path, keys: tuple[bytes, ...]) -> dict:
    """The dict stored in pickle file ``path``, which must contain ``keys`` (bytes keys)."""
    content = load_pickle(require_file(path), "CIFAR batch", numpy=True)
    if not isinstance(content, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(content).__name__}")
    missing = [k.decode() for k in keys if k not in content]
    if missing:
        found = ", ".join(k.decode(errors="replace") if isinstance(k, bytes) else str(k) for k in content)
        raise DataError(f"{path}: missing key(s) {', '.join(missing)}; found: {found}")
    return content


def read_batch(path: Path, labels_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64 of one batch file.

    ``data`` rows hold the red, green and blue 32x32 planes one after another, each row-major.
    """
    batch = unpickle(path, (b"data", labels_key))
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[labels_key])
    row = int(np.prod(CIFAR_SHAPE))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != row:
        raise DataError(f"{path}: 'data' must be uint8 of shape (N, {row}), got {data.dtype} {data.shape}")
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{path}: {data.shape[0]} images but '{labels_key.decode()}' has shape {labels.shape} "
            f"({labels.dtype}); expected one integer label per image"
        )
    return data.reshape(-1, *CIFAR_SHAPE), labels.astype(np.int64)


def read_class_names(path: Path, names_key: bytes) -> tuple[str, ...]:
    """Class names from the meta pickle ``path``."""
    names = unpickle(path, (names_key,))[names_key]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataError(f"{path}: '{names_key.decode()}' must be a list of class names, got {type(names).__name__}")
    try:
        return tuple(n.decode() if isinstance(n, bytes) else n for n in names)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: a class name in '{names_key.decode()}' is not UTF-8 text ({err})") from None


def load_cifar(layout: CifarLayout, split: str, root: str | None, size: int | None, seed: int) -> ImageData:
    """One split of a CIFAR variant: images ``(N, 3, 32, 32)`` uint8, labels ``(N,)``."""
    check_split(layout.name, split, tuple(layout.split_files))
    given = require_root(layout.name, root, what=f"{layout.folder} folder (or its parent)")
    folder = find_subfolder(given, layout.folder)
    classes = read_class_names(folder / layout.meta_file, layout.names_key)
    batches = [read_batch(folder / name, layout.labels_key) for name in layout.split_files[split]]
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DataError(
            f"{folder}: {split} labels span {labels.min()}..{labels.max()} but "
            f"{layout.meta_file} names {len(classes)} classes"
        )
    data = ImageData(
        name=layout.name, images=torch.from_numpy(images), labels=torch.from_numpy(labels), classes=classes
    )
    return take_subset(data, size, seed)


@DATASETS.register("cifar10", "CIFAR-10 python pickle batches (cifar-10-batches-py); set data.root")
def load_cifar10(split: str, root: str | None = None, size: int | None = None, seed: int = 0) -> ImageData:
    """CIFAR-10 split train (50000) or test (10000): images ``(N, 3, 32, 32)`` uint8, 10 classes."""
    return load_cifar(CIFAR10, split, root, size, seed)


@DATASETS.register("cifar100", "CIFAR-100 python pickles (cifar-100-python), fine labels; set data.root")
def load_cifar100(split: str, root: str | None = None, size: int | None = None, seed: int = 0) -> ImageData:
    """CIFAR-100 split train (50000) or test (10000): images ``(N, 3, 32, 32)`` uint8, 100 classes."""
    return load_cifar(CIFAR100, split, root, size, seed)
