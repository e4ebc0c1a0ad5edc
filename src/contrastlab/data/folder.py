"""Image folders: one subfolder per class (labelled) or a flat folder of images (unlabelled)."""

from __future__ import annotations

import os
from pathlib import Path

from contrastlab.data.base import DataError, ImageData
from contrastlab.data.files import require_root
from contrastlab.data.registry import DATASETS
from contrastlab.data.stream import ImageFiles, image_dataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def split_folder(root: Path, split: str) -> Path:
    """``root/split`` if it exists; otherwise ``root`` itself, which only serves split ``train``."""
    if (root / split).is_dir():
        return root / split
    if split == "train" and root.is_dir():
        return root
    raise DataError(
        f"{root / split} does not exist; put the '{split}' images there (a folder without split subfolders "
        "only serves split 'train'), or set data.test_fraction=0.1 to hold out a seeded tenth of the training "
        "images as the test split"
    )


def image_files(folder: Path) -> list[str]:
    """The image files directly inside ``folder``, sorted by name (hidden files skipped)."""
    with os.scandir(folder) as entries:
        return sorted(
            e.path for e in entries
            if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES and not e.name.startswith(".")
        )


def list_samples(folder: Path) -> tuple[list[str], list[int] | None, tuple[str, ...]]:
    """Image paths, their labels (``None`` for a flat folder) and the class names (sorted)."""
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = image_files(folder)
    if class_dirs and loose:
        raise DataError(
            f"{folder} mixes images (e.g. {Path(loose[0]).name}) with class subfolders "
            f"(e.g. {class_dirs[0].name}); use one subfolder per class or a flat folder of images"
        )
    if not class_dirs:
        if not loose:
            raise DataError(f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return loose, None, ()
    paths: list[str] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        files = image_files(class_dir)
        if not files:
            raise DataError(f"class folder {class_dir} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        paths += files
        labels += [label] * len(files)
    return paths, labels, tuple(d.name for d in class_dirs)


@DATASETS.register("folder", "image folder: a subfolder per class, or flat (unlabelled), any sizes; set data.root")
def load(split: str, root: str | None = None, size: int | None = None, seed: int = 0, *,
         image_size: int | None = None, in_memory: bool | None = None) -> ImageData | ImageFiles:
    """The images of ``root/<split>`` (or ``root`` for train), in memory or streamed
    (:func:`~contrastlab.data.stream.image_dataset` explains ``image_size`` and ``in_memory``).

    Class subfolders give labels ``(N,)`` (classes = sorted folder names); a flat folder gives
    ``labels=None``. With ``size``, only the chosen subset is read.
    """
    folder = split_folder(require_root("folder", root, what="folder of images"), split)
    paths, labels, classes = list_samples(folder)
    return image_dataset("folder", paths, labels, classes, size=size, seed=seed,
                         image_size=image_size, in_memory=in_memory)
