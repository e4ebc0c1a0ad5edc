"""Builders of tiny dataset files in the real on-disk formats, for the loader tests.

Each builder writes into a given folder and returns what a correct loader should read back.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

def pattern(n: int, channels: int, height: int, width: int, offset: int = 0) -> np.ndarray:
    """``(n, channels, height, width)`` uint8 whose value depends asymmetrically on every index."""
    axes = [np.arange(n), np.arange(channels), np.arange(height), np.arange(width)]
    i, c, r, k = np.meshgrid(*axes, indexing="ij")
    return ((offset + 37 * i + 61 * c + 3 * r + 11 * k) % 256).astype(np.uint8)


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8) in idx format: 00 00 08 ndim, big-endian uint32 dims, then the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_mnist(folder: Path, gz: bool = False, counts: dict[str, int] | None = None) -> dict:
    """idx files for splits train (6) and test (4) of 7x5 images; returns split -> (images, labels).

    ``images``: ``(N, 7, 5)`` uint8, ``labels``: ``(N,)`` uint8 in 0..9.
    """
    folder.mkdir(parents=True, exist_ok=True)
    counts = counts or {"train": 6, "test": 4}
    expected = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        n = counts[split]
        images = pattern(n, 1, 7, 5, offset=len(expected) * 100)[:, 0]
        labels = (np.arange(n) * 3 % 10).astype(np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            path = folder / f"{prefix}-{kind}-ubyte"
            data = idx_bytes(array)
            if gz:
                path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
            else:
                path.write_bytes(data)
        expected[split] = (images, labels)
    return expected


def write_pickle(path: Path, content: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(content, f)


def cifar_rows(n: int, offset: int) -> np.ndarray:
    """``(n, 3072)`` uint8 rows with an asymmetric value at every position."""
    return ((offset + 7 * np.arange(n)[:, None] + np.arange(3072)[None, :] * 5) % 251).astype(np.uint8)


def write_cifar10(root: Path, per_batch: int = 2) -> dict:
    """``root/cifar-10-batches-py`` with 5 train batches and a test batch of ``per_batch`` images.

    Returns split -> (rows ``(N, 3072)``, labels) with the train batches concatenated in order.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"class{i}".encode() for i in range(10)]
    write_pickle(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    expected: dict[str, tuple[list, list]] = {"train": ([], []), "test": ([], [])}
    files = [(f"data_batch_{i}", "train") for i in range(1, 6)] + [("test_batch", "test")]
    for number, (name, split) in enumerate(files):
        rows = cifar_rows(per_batch, offset=number * 17)
        labels = [(number + j) % 10 for j in range(per_batch)]
        write_pickle(folder / name, {b"batch_label": name.encode(), b"data": rows, b"labels": labels})
        expected[split][0].append(rows)
        expected[split][1].extend(labels)
    return {s: (np.concatenate(r), np.array(y)) for s, (r, y) in expected.items()}


def write_cifar100(root: Path, n: int = 3) -> dict:
    """``root/cifar-100-python`` with ``train``, ``test`` and ``meta``.

    Returns split -> (rows ``(N, 3072)``, fine labels).
    """
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    write_pickle(folder / "meta", {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    })
    expected = {}
    for number, split in enumerate(("train", "test")):
        rows = cifar_rows(n, offset=number * 50)
        fine = [99 - 40 * j - number for j in range(n)]
        write_pickle(folder / split, {b"data": rows, b"fine_labels": fine, b"coarse_labels": [0] * n})
        expected[split] = (rows, np.array(fine))
    return expected


def write_stl10(root: Path, counts: dict[str, int] | None = None) -> dict:
    """``root/stl10_binary`` with real-size (3x96x96, column-major) images.

    Returns split part -> (images ``(N, 3, 96, 96)`` as they should load, labels 1..10 as stored).
    """
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    counts = counts or {"train": 3, "test": 2, "unlabeled": 4}
    (folder / "class_names.txt").write_text("\n".join(f"stl{i}" for i in range(10)) + "\n")
    expected = {}
    for number, (part, n) in enumerate(counts.items()):
        images = pattern(n, 3, 96, 96, offset=number * 90)
        # Column-major per channel: the stored order is (N, C, W, H).
        (folder / f"{part}_X.bin").write_bytes(images.transpose(0, 1, 3, 2).tobytes())
        labels = None
        if part != "unlabeled":
            labels = (np.arange(n) * 7 + number) % 10 + 1
            (folder / f"{part}_y.bin").write_bytes(labels.astype(np.uint8).tobytes())
        expected[part] = (images, labels)
    return expected


def write_image(path: Path, pixels: np.ndarray) -> None:
    """``pixels``: ``(H, W)`` (grayscale) or ``(H, W, 3)`` uint8, saved losslessly by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def write_class_folder(root: Path) -> dict[str, np.ndarray]:
    """``root/<class>/<name>.png``: 2 RGB images of 6x4 for 'cat', 1 for 'dog'; returns path -> pixels."""
    images = pattern(3, 3, 6, 4).transpose(0, 2, 3, 1)
    files = {"cat/a.png": images[0], "cat/b.png": images[1], "dog/c.png": images[2]}
    for name, pixels in files.items():
        write_image(root / name, pixels)
    return files


def write_file_list(root: Path) -> dict[str, np.ndarray]:
    """:func:`write_class_folder`'s images listed in ``root/train.txt`` as ``path label`` lines
    (labels 5 for 'cat', 2 for 'dog'); returns path -> pixels."""
    files = write_class_folder(root)
    lines = [f"{name} {5 if name.startswith('cat') else 2}" for name in sorted(files)]
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return files


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
