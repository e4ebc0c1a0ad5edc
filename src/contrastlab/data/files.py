"""Small helpers shared by the file-based loaders: locating files, checking splits, subsetting."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from contrastlab.data.base import DataError, ImageData


def check_split(dataset: str, split: str, allowed: tuple[str, ...]) -> None:
    """Raise ``ValueError`` unless ``split`` is one of ``allowed``."""
    if split not in allowed:
        raise ValueError(
            f"unknown split '{split}' for dataset '{dataset}'; expected one of: {', '.join(allowed)}"
        )


def require_root(dataset: str, root: str | None, default: str | None = None, what: str = "folder",
                 hint: str = "") -> Path:
    """``root`` (or ``default`` when it is ``None``) as an existing path, else a ``DataError``.

    ``what`` describes what the path should be, ``hint`` how to get it, for the error message.
    """
    if root is None and default is None:
        raise DataError(
            f"dataset '{dataset}' has no default location; set data.root to the {what}"
        )
    path = Path(root if root is not None else default).expanduser()
    if not path.exists():
        raise DataError(f"dataset '{dataset}': {path} does not exist; expected the {what}{hint}")
    return path


def find_subfolder(root: Path, name: str) -> Path:
    """``root/name`` if that folder exists, else ``root`` (which may be that folder itself)."""
    inner = root / name
    return inner if inner.is_dir() else root


def require_file(path: Path) -> Path:
    """``path`` if it is an existing file, else a ``DataError`` naming it."""
    if not path.is_file():
        raise DataError(f"missing file {path}")
    return path


def read_maybe_gzip(path: Path) -> bytes:
    """The bytes of ``path``, or of ``path`` + ``.gz`` decompressed if only that exists; a
    truncated or damaged ``.gz`` is a ``DataError`` naming it."""
    if path.is_file():
        return path.read_bytes()
    packed = path.with_name(path.name + ".gz")
    if not packed.is_file():
        raise DataError(f"missing file {path} (or {packed.name})")
    try:
        with gzip.open(packed, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
        raise DataError(f"{packed}: not a readable gzip file, truncated or damaged? ({type(err).__name__}: {err})") from None


def generated_split_size(dataset: str, split: str, root: str | None, size: int | None,
                         default_sizes: dict[str, int]) -> int:
    """The number of samples to generate for ``split`` of a generated ``dataset``: ``size``, or
    the split's entry of ``default_sizes``; a ``DataError`` for an unknown split, a root, or a
    size that is not a positive integer."""
    if split not in default_sizes:
        raise DataError(f"{dataset}: unknown split '{split}'; expected one of {sorted(default_sizes)}")
    if root is not None:
        raise DataError(f"{dataset} is generated, not read from files: root must be None (data.root: null), "
                        f"got '{root}'")
    size = default_sizes[split] if size is None else size
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise DataError(f"{dataset}: size must be a positive integer, got {size!r}")
    return size


def subset_index(n: int, size: int | None, seed: int) -> np.ndarray | None:
    """Sorted indices of a seeded random subset of ``size`` of ``n`` samples.

    ``None`` means keep everything (``size`` is ``None`` or at least ``n``).
    """
    if size is None or size >= n:
        return None
    if size <= 0:
        raise ValueError(f"data size must be a positive number of samples, got {size}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=size, replace=False))


def take_subset(data: ImageData, size: int | None, seed: int) -> ImageData:
    """``data`` reduced to a seeded random subset of ``size`` samples (all of it if ``size >= N``)."""
    index = subset_index(len(data), size, seed)
    return data if index is None else data.subset(torch.from_numpy(index))
