"""NTU RGB+D (60/120) and PKU-MMD skeletons in the layout the skeleton self-supervised
literature shares (CMD, AimCLR, CrosSCLR, HaLP), ``data.name: ntu``.

``data.root`` is one benchmark's folder (e.g. ``NTU60/xsub``) holding, per split (``train``,
``val``):

- ``{split}_data_joint.npy``: ``(N, 3, T, V, M)`` float32 (coordinates, frames, 25 joints, up to
  2 persons), read memory-mapped;
- ``{split}_label.pkl``: ``(sample names, labels)``, two lists of equal length. This file is a
  Python pickle, which can run code when loaded: it is read with a restricted unpickler that
  builds only lists, tuples, strings and numbers and refuses anything else
  (:mod:`contrastlab.data.safe_pickle`);
- optionally ``{split}_num_frame.npy``: ``(N,)`` the valid frames of each sequence (the rest is
  zero padding).

Each sequence's valid frames are resampled to :data:`FRAMES` (64, the papers' input) by linear
interpolation, in chunks, into memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from contrastlab.data.base import DataError
from contrastlab.data.files import require_file, require_root, subset_index
from contrastlab.data.registry import DATASETS
from contrastlab.data.safe_pickle import load_pickle
from contrastlab.data.skeleton_augment import resample_frames
from contrastlab.data.skeletons import SkeletonData

SPLITS = ("train", "val")
FRAMES = 64
CHUNK = 1024  # sequences resampled at a time


def read_labels(path: Path) -> tuple[list[str], np.ndarray]:
    """Sample names and ``(N,)`` int64 labels from a labels pickle."""
    content = load_pickle(require_file(path), "skeleton labels file")
    if not isinstance(content, (list, tuple)) or len(content) != 2:
        raise DataError(f"{path}: expected (sample names, labels), two lists, got {type(content).__name__}")
    names, labels = content
    names = [n.decode(errors="replace") if isinstance(n, bytes) else n for n in names]  # Python 2 pickles
    if not all(isinstance(n, str) for n in names):
        raise DataError(f"{path}: the sample names must be strings")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in labels):
        raise DataError(f"{path}: the labels must be integers >= 0")
    if len(names) != len(labels):
        raise DataError(f"{path}: {len(names)} sample names but {len(labels)} labels")
    return list(names), np.asarray(labels, dtype=np.int64)


@DATASETS.register("ntu", "NTU RGB+D / PKU-MMD skeletons in the CMD/AimCLR layout (.npy joints, .pkl labels), "
                          "resampled to 64 frames")
def load(split: str, root: str | None = None, size: int | None = None, seed: int = 0) -> SkeletonData:
    """One split of the benchmark folder ``root`` (see the module docstring); a seeded subset
    of ``size`` sequences when set."""
    if split not in SPLITS:
        raise DataError(f"ntu: unknown split '{split}'; expected one of {', '.join(SPLITS)}")
    folder = require_root("ntu", root, what="benchmark folder (e.g. NTU60/xsub) with train_/val_data_joint.npy")
    data_path = require_file(folder / f"{split}_data_joint.npy")
    try:
        joints = np.load(data_path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:
        raise DataError(f"{data_path}: not a readable .npy array ({err})") from None
    if joints.dtype != np.float32 or joints.ndim != 5 or joints.shape[1] != 3 or joints.shape[2] < 1:
        raise DataError(f"{data_path}: expected float32 (N, 3, T, V, M), got {joints.dtype} {joints.shape}")
    names, labels = read_labels(folder / f"{split}_label.pkl")
    if len(labels) != joints.shape[0]:
        raise DataError(f"{folder / f'{split}_label.pkl'}: {len(labels)} labels for the {joints.shape[0]} sequences "
                        f"of {data_path.name}")
    valid = np.full(len(labels), joints.shape[2], dtype=np.int64)
    frames_path = folder / f"{split}_num_frame.npy"
    if frames_path.exists():
        valid = np.load(frames_path, allow_pickle=False).astype(np.int64).reshape(-1)
        if len(valid) != len(labels) or valid.min(initial=1) < 1 or valid.max(initial=1) > joints.shape[2]:
            raise DataError(f"{frames_path}: expected {len(labels)} frame counts in 1..{joints.shape[2]}")
    index = subset_index(len(labels), size, seed)
    index = np.arange(len(labels)) if index is None else index
    chunks = [resample_frames(torch.from_numpy(np.asarray(joints[rows])), torch.zeros(len(rows)),
                              torch.from_numpy(valid[rows]).float(), FRAMES)
              for rows in (index[i:i + CHUNK] for i in range(0, len(index), CHUNK))]
    sequences = torch.cat(chunks) if chunks else torch.zeros(0, 3, FRAMES, *joints.shape[3:])
    classes = tuple(str(c) for c in range(int(labels.max(initial=-1)) + 1))
    return SkeletonData(name="ntu", sequences=sequences, labels=torch.from_numpy(labels[index]),
                        classes=classes)
