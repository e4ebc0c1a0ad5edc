"""Datasets (all local or generated, never downloaded) and batched augmentations.

Every loader is registered in ``DATASETS`` (:mod:`contrastlab.data.registry`) with the signature
``load(split: str, root: str | None = None, size: int | None = None, seed: int = 0) -> Dataset``
(see ``data/dataset.py``). Image-file loaders (``folder``, ``filelist``) also take the keyword-only
``image_size: int | None`` and ``in_memory: bool | None`` (``data.image_size``, ``data.in_memory``).
"""

from contrastlab.data.base import DataError, ImageData
from contrastlab.data.registry import DATASETS

# Importing the loader modules registers them.
from contrastlab.data import (  # noqa: F401
    cifar, digits, filelist, folder, graph_augment, mnist, npz, ntu, skeleton_actions, skeleton_augment, spirograph, stl10, tu,
)

__all__ = ["DATASETS", "DataError", "ImageData"]
