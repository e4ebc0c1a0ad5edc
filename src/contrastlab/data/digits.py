"""scikit-learn's bundled 8x8 handwritten digits (1797 images, no files needed)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from contrastlab.data.base import ImageData
from contrastlab.data.files import check_split, take_subset
from contrastlab.data.registry import DATASETS

TEST_SIZE = 360
SPLIT_SEED = 0
MAX_VALUE = 16


@DATASETS.register("digits", "scikit-learn's 8x8 digits (1437 train / 360 test), bundled, no files")
def load(split: str, root: str | None = None, size: int | None = None, seed: int = 0) -> ImageData:
    """Split train (1437) or test (360): images ``(N, 1, 8, 8)`` uint8 in 0..255, labels 0..9.

    The split is stratified and fixed (``random_state=0``); ``root`` is ignored.
    """
    check_split("digits", split, ("train", "test"))
    bunch = load_digits()
    train_index, test_index = train_test_split(
        np.arange(len(bunch.target)), test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=bunch.target
    )
    index = np.sort(train_index if split == "train" else test_index)
    pixels = np.rint(bunch.images[index] * (255 / MAX_VALUE)).astype(np.uint8)
    data = ImageData(
        name="digits",
        images=torch.from_numpy(pixels).unsqueeze(1),
        labels=torch.from_numpy(bunch.target[index].astype(np.int64)),
        classes=tuple(str(d) for d in range(10)),
    )
    return take_subset(data, size, seed)
