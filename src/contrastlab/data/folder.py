"""Image folders: one subfolder per class (labelled) or a flat folder of images (unlabelled)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from contrastlab.data.base import DataError, ImageData
from contrastlab.data.files import require_root, subset_index
from contrastlab.data.registry import DATASETS

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
GRAYSCALE_MODES = {"1", "L", "LA"}


def split_folder(root: Path, split: str) -> Path:
    """``root/split`` if it exists; otherwise ``root`` itself, which only serves split ``train``."""
    if (root / split).is_dir():
        return root / split
    if split == "train" and root.is_dir():
        return root
    raise DataError(
        f"{root / split} does not exist; put the '{split}' images there "
        f"(a folder without split subfolders only serves split 'train')"
    )


def image_files(folder: Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name (hidden files skipped)."""
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def list_samples(folder: Path) -> tuple[list[Path], list[int] | None, tuple[str, ...]]:
    """Image paths, their labels (``None`` for a flat folder) and the class names (sorted)."""
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = image_files(folder)
    if class_dirs and loose:
        raise DataError(
            f"{folder} mixes images (e.g. {loose[0].name}) with class subfolders "
            f"(e.g. {class_dirs[0].name}); use one subfolder per class or a flat folder of images"
        )
    if not class_dirs:
        if not loose:
            raise DataError(f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return loose, None, ()
    paths: list[Path] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        files = image_files(class_dir)
        if not files:
            raise DataError(f"class folder {class_dir} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        paths += files
        labels += [label] * len(files)
    return paths, labels, tuple(d.name for d in class_dirs)


@contextmanager
def opened_image(path: Path) -> Iterator[Image.Image]:
    """``path`` opened with PIL; a file that cannot be read or decoded raises a ``DataError``."""
    try:
        with Image.open(path) as image:
            yield image
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot decode image ({err})") from err


def decode_all(paths: list[Path]) -> np.ndarray:
    """``paths`` decoded to ``(N, C, H, W)`` uint8: C = 1 if every image is grayscale, else 3.

    Sizes and modes are read from the headers first, so a mismatch fails before any decoding.
    """
    headers = []
    for path in paths:
        with opened_image(path) as image:
            headers.append((image.mode, image.size))
    width, height = headers[0][1]
    for path, (_, (w, h)) in zip(paths, headers):
        if (w, h) != (width, height):
            raise DataError(
                f"{path}: size {w}x{h} differs from {paths[0].name}'s {width}x{height}; "
                f"all images must have the same size, resize them first"
            )
    mode = "L" if all(m in GRAYSCALE_MODES for m, _ in headers) else "RGB"
    channels = 1 if mode == "L" else 3
    out = np.empty((len(paths), channels, height, width), dtype=np.uint8)
    for i, path in enumerate(paths):
        with opened_image(path) as image:
            pixels = np.asarray(image.convert(mode))
        out[i] = pixels if mode == "L" else pixels.transpose(2, 0, 1)
    return out


@DATASETS.register("folder", "image folder: a subfolder per class, or flat (unlabelled); set data.root")
def load(split: str, root: str | None = None, size: int | None = None, seed: int = 0) -> ImageData:
    """Images ``(N, C, H, W)`` uint8 from ``root/<split>`` (or ``root`` for train).

    Class subfolders give labels ``(N,)`` (classes = sorted folder names); a flat folder gives
    ``labels=None``. With ``size``, only the chosen subset is decoded.
    """
    folder = split_folder(require_root("folder", root, what="folder of images"), split)
    paths, labels, classes = list_samples(folder)
    index = subset_index(len(paths), size, seed)
    if index is not None:
        paths = [paths[i] for i in index]
        labels = None if labels is None else [labels[i] for i in index]
    return ImageData(
        name="folder",
        images=torch.from_numpy(decode_all(paths)),
        labels=None if labels is None else torch.tensor(labels, dtype=torch.int64),
        classes=classes,
    )
