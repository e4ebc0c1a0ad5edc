"""File-based dataset loaders: exact round-trips of tiny fixture files and clear errors on bad input."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from contrastlab.data import DATASETS, DataError, ImageData
from fixtures import (
    idx_bytes,
    pattern,
    write_cifar10,
    write_cifar100,
    write_class_folder,
    write_file_list,
    write_image,
    write_mnist,
    write_npz,
    write_pickle,
    write_stl10,
)

FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")


def load(name: str, split: str = "train", root: Path | None = None, **kwargs) -> ImageData:
    return DATASETS.get(name)(split, None if root is None else str(root), **kwargs)


def assert_data_error(match: str, name: str, split: str = "train", root: Path | None = None) -> None:
    """Loading must raise a ``DataError`` whose message contains ``match`` (a file name)."""
    with pytest.raises(DataError) as info:
        load(name, split, root)
    assert match in str(info.value), str(info.value)


def cifar_reference(rows: np.ndarray) -> np.ndarray:
    """Slow reference: row ``n`` holds planes R, G, B of 32x32, each row-major."""
    out = np.zeros((len(rows), 3, 32, 32), dtype=np.uint8)
    for n in range(len(rows)):
        for c in range(3):
            for r in range(32):
                for k in range(32):
                    out[n, c, r, k] = rows[n, c * 1024 + r * 32 + k]
    return out


# ---------------------------------------------------------------- mnist / fashion-mnist


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("split", ["train", "test"])
def test_mnist_round_trip(tmp_path, gz, split):
    expected = write_mnist(tmp_path, gz=gz)[split]
    data = load("mnist", split, tmp_path)
    assert data.images.dtype == torch.uint8 and data.shape == (1, 7, 5)
    assert torch.equal(data.images[:, 0], torch.from_numpy(expected[0]))
    assert data.labels.dtype == torch.int64
    assert data.labels.tolist() == expected[1].tolist()
    assert data.classes == tuple("0123456789")


def test_fashion_mnist_class_names(tmp_path):
    write_mnist(tmp_path)
    data = load("fashion-mnist", "test", tmp_path)
    assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot" and len(data.classes) == 10


@pytest.mark.skipif(not FASHION_ROOT.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_real_files():
    for split, n in (("train", 60000), ("test", 10000)):
        data = load("fashion-mnist", split)
        assert len(data) == n and data.shape == (1, 28, 28)
        assert sorted(data.labels.unique().tolist()) == list(range(10))


def test_mnist_without_root_asks_for_data_root():
    assert_data_error("data.root", "mnist")


def test_mnist_missing_folder(tmp_path):
    assert_data_error("nowhere", "mnist", root=tmp_path / "nowhere")


def test_mnist_missing_labels_file(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    assert_data_error("t10k-labels-idx1-ubyte", "mnist", "test", tmp_path)


def test_mnist_wrong_magic(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    raw = bytearray(path.read_bytes())
    raw[2] = 0x0D  # float32 dtype code
    path.write_bytes(bytes(raw))
    assert_data_error("train-images-idx3-ubyte", "mnist", root=tmp_path)


def test_mnist_labels_file_given_as_images_is_rejected(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes((tmp_path / "train-labels-idx1-ubyte").read_bytes())
    assert_data_error("train-images-idx3-ubyte", "mnist", root=tmp_path)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("change, problem", [(-3, "truncated"), (2, "too long")])
def test_mnist_wrong_byte_count(tmp_path, gz, change, problem):
    write_mnist(tmp_path, gz=gz)
    path = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    raw = raw[:change] if change < 0 else raw + bytes(change)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(DataError, match=problem) as info:
        load("mnist", "train", tmp_path)
    assert "train-images-idx3-ubyte" in str(info.value)


def test_mnist_image_label_count_mismatch(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(5, dtype=np.uint8)))
    assert_data_error("train-labels-idx1-ubyte", "mnist", root=tmp_path)


def test_mnist_label_out_of_range(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(6, 10, dtype=np.uint8)))
    assert_data_error("train-labels-idx1-ubyte", "mnist", root=tmp_path)


def test_unknown_split_is_a_value_error(tmp_path):
    write_mnist(tmp_path)
    with pytest.raises(ValueError, match="validation"):
        load("mnist", "validation", tmp_path)


# ---------------------------------------------------------------- cifar


@pytest.mark.parametrize("inner", [False, True])
def test_cifar10_round_trip(tmp_path, inner):
    expected = write_cifar10(tmp_path)
    root = tmp_path / "cifar-10-batches-py" if inner else tmp_path
    for split in ("train", "test"):
        data = load("cifar10", split, root)
        rows, labels = expected[split]
        assert data.shape == (3, 32, 32) and len(data) == len(rows)
        assert np.array_equal(data.images.numpy(), cifar_reference(rows))
        assert data.labels.tolist() == labels.tolist()
    assert data.classes == tuple(f"class{i}" for i in range(10))


def test_cifar100_round_trip_uses_fine_labels(tmp_path):
    expected = write_cifar100(tmp_path)
    data = load("cifar100", "test", tmp_path)
    rows, fine = expected["test"]
    assert np.array_equal(data.images.numpy(), cifar_reference(rows))
    assert data.labels.tolist() == fine.tolist()
    assert len(data.classes) == 100 and data.classes[99] == "fine99"


def test_cifar_missing_key(tmp_path):
    write_cifar10(tmp_path)
    write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {b"data": np.zeros((2, 3072), np.uint8)})
    assert_data_error("test_batch", "cifar10", "test", tmp_path)


def test_cifar_wrong_shape(tmp_path):
    write_cifar10(tmp_path)
    bad = {b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}
    write_pickle(tmp_path / "cifar-10-batches-py" / "data_batch_3", bad)
    assert_data_error("data_batch_3", "cifar10", root=tmp_path)


def test_cifar_label_count_mismatch(tmp_path):
    write_cifar100(tmp_path)
    bad = {b"data": np.zeros((3, 3072), np.uint8), b"fine_labels": [0, 1]}
    write_pickle(tmp_path / "cifar-100-python" / "train", bad)
    assert_data_error("train", "cifar100", root=tmp_path)


def test_cifar_not_a_pickle(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x00garbage")
    assert_data_error("test_batch", "cifar10", "test", tmp_path)


class RunsCode:
    """Unpickling this calls ``os.system``: what a crafted data file does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("where", ["data", "labels", "top"])
def test_cifar_pickle_that_would_run_code_is_refused_before_it_runs(tmp_path, where):
    write_cifar10(tmp_path)
    marker = tmp_path / "ran"
    content = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
    if where == "top":
        content = RunsCode(marker)
    else:
        content[where.encode()] = RunsCode(marker)
    write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", content)
    with pytest.raises(DataError, match=r"test_batch: refused to load: the pickle asks for posix\.system"):
        load("cifar10", "test", tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_cifar_batches_of_every_pickle_protocol_load(tmp_path, protocol):
    """Python 2's protocol-2 batches (bytes keys and strings) and every later protocol."""
    write_cifar10(tmp_path)
    rows = np.random.default_rng(protocol).integers(0, 256, (3, 3072), dtype=np.uint8)
    batch = {b"batch_label": b"testing batch 1 of 1", b"data": rows, b"labels": [np.int64(2), 0, 9],
             b"filenames": [b"a.png", b"b.png", b"c.png"]}
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump(batch, f, protocol=protocol)
    data = load("cifar10", "test", tmp_path)
    assert torch.equal(data.images, torch.from_numpy(cifar_reference(rows)))
    assert data.labels.tolist() == [2, 0, 9]


def test_cifar_missing_meta(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "batches.meta").unlink()
    assert_data_error("batches.meta", "cifar10", root=tmp_path)


# ---------------------------------------------------------------- stl10


@pytest.mark.parametrize("split", ["train", "test"])
def test_stl10_labelled_round_trip(tmp_path, split):
    expected = write_stl10(tmp_path)[split]
    data = load("stl10", split, tmp_path)
    assert data.shape == (3, 96, 96)
    # pattern() depends differently on row and column, so a missed transpose cannot pass.
    assert np.array_equal(data.images.numpy(), expected[0])
    assert data.labels.tolist() == (expected[1] - 1).tolist()
    assert data.classes == tuple(f"stl{i}" for i in range(10))


def test_stl10_column_major_pixel(tmp_path):
    (tmp_path / "stl10_binary").mkdir()
    raw = np.zeros(27648, dtype=np.uint8)
    raw[1] = 200  # channel 0, column 0, row 1 in column-major order
    (tmp_path / "stl10_binary" / "unlabeled_X.bin").write_bytes(raw.tobytes())
    image = load("stl10", "unlabeled", tmp_path).images[0]
    assert image[0, 1, 0] == 200 and int(image.sum()) == 200


def test_stl10_unlabelled_splits(tmp_path):
    expected = write_stl10(tmp_path)
    unlabelled = load("stl10", "unlabeled", tmp_path)
    assert unlabelled.labels is None and unlabelled.classes == ()
    assert np.array_equal(unlabelled.images.numpy(), expected["unlabeled"][0])
    both = load("stl10", "train+unlabeled", tmp_path)
    assert both.labels is None
    reference = np.concatenate([expected["train"][0], expected["unlabeled"][0]])
    assert np.array_equal(both.images.numpy(), reference)


def test_stl10_subset_spans_both_files(tmp_path):
    expected = write_stl10(tmp_path)
    reference = np.concatenate([expected["train"][0], expected["unlabeled"][0]])
    subset = load("stl10", "train+unlabeled", tmp_path, size=5, seed=3)
    assert len(subset) == 5
    flat = reference.reshape(len(reference), -1)
    for image in subset.images.numpy():
        assert (flat == image.reshape(-1)).all(axis=1).sum() == 1


def test_stl10_truncated_images(tmp_path):
    write_stl10(tmp_path)
    path = tmp_path / "stl10_binary" / "test_X.bin"
    path.write_bytes(path.read_bytes()[:-10])
    assert_data_error("test_X.bin", "stl10", "test", tmp_path)


def test_stl10_label_count_mismatch(tmp_path):
    write_stl10(tmp_path)
    (tmp_path / "stl10_binary" / "train_y.bin").write_bytes(bytes([1, 2]))
    assert_data_error("train_y.bin", "stl10", root=tmp_path)


def test_stl10_labels_must_be_one_to_ten(tmp_path):
    write_stl10(tmp_path)
    (tmp_path / "stl10_binary" / "train_y.bin").write_bytes(bytes([0, 1, 2]))
    assert_data_error("train_y.bin", "stl10", root=tmp_path)


def test_stl10_missing_folder(tmp_path):
    assert_data_error("missing", "stl10", root=tmp_path / "missing")


# ---------------------------------------------------------------- folder


def test_folder_labelled_round_trip(tmp_path):
    files = write_class_folder(tmp_path)
    data = load("folder", "train", tmp_path)
    assert data.classes == ("cat", "dog") and data.labels.tolist() == [0, 0, 1]
    for image, name in zip(data.images, sorted(files)):
        assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(files[name]))


def test_folder_split_subfolders_and_flat_unlabelled(tmp_path):
    gray = pattern(2, 1, 5, 3)[:, 0]
    write_image(tmp_path / "test" / "x.png", gray[0])
    write_image(tmp_path / "test" / "y.bmp", gray[1])
    data = load("folder", "test", tmp_path)
    assert data.labels is None and data.classes == ()
    assert data.shape == (1, 5, 3)  # all grayscale -> one channel
    assert np.array_equal(data.images[:, 0].numpy(), gray)


def test_folder_mixed_gray_and_rgb_becomes_rgb(tmp_path):
    rgb = pattern(1, 3, 4, 4)[0].transpose(1, 2, 0)
    gray = pattern(1, 1, 4, 4, offset=9)[0, 0]
    write_image(tmp_path / "a.png", rgb)
    write_image(tmp_path / "b.png", gray)
    data = load("folder", "train", tmp_path)
    assert data.shape == (3, 4, 4)
    for c in range(3):
        assert np.array_equal(data.images[1, c].numpy(), gray)


def test_folder_without_split_subfolder_only_serves_train(tmp_path):
    write_class_folder(tmp_path)
    assert_data_error("test", "folder", "test", tmp_path)


def test_folder_mixed_sizes_without_image_size_name_the_file(tmp_path):
    write_class_folder(tmp_path)
    write_image(tmp_path / "dog" / "d.png", np.zeros((5, 5, 3), np.uint8))
    with pytest.raises(DataError, match="set data.image_size") as info:
        load("folder", "train", tmp_path)
    assert "d.png" in str(info.value) and "4x6" in str(info.value)


def test_folder_mixed_sizes_with_image_size_load(tmp_path):
    write_class_folder(tmp_path)
    write_image(tmp_path / "dog" / "d.png", np.zeros((5, 5, 3), np.uint8))
    data = load("folder", "train", tmp_path, image_size=4)
    assert data.shape == (3, 4, 4) and len(data) == 4 and data.labels.tolist() == [0, 0, 1, 1]


def test_folder_unreadable_image(tmp_path):
    write_class_folder(tmp_path)
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    assert_data_error("broken.jpg", "folder", root=tmp_path)


def test_folder_empty(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_data_error("empty", "folder", root=tmp_path / "empty")


# ---------------------------------------------------------------- npz


@pytest.mark.parametrize("layout", ["nhw", "nhwc", "nchw"])
def test_npz_layouts_round_trip(tmp_path, layout):
    images = pattern(4, 3 if layout != "nhw" else 1, 5, 6)
    stored = {"nhw": images[:, 0], "nhwc": images.transpose(0, 2, 3, 1), "nchw": images}[layout]
    write_npz(tmp_path / "train.npz", x=stored, y=np.array([2, 0, 1, 2]))
    data = load("npz", "train", tmp_path)
    assert np.array_equal(data.images.numpy(), images)
    assert data.labels.tolist() == [2, 0, 1, 2] and data.labels.dtype == torch.int64


def test_npz_single_file_unlabelled(tmp_path):
    write_npz(tmp_path / "mine.npz", x=pattern(3, 1, 4, 4)[:, 0])
    data = load("npz", "train", tmp_path / "mine.npz")
    assert len(data) == 3 and data.labels is None and data.classes == ()
    assert_data_error("mine.npz", "npz", "test", tmp_path / "mine.npz")


def test_npz_missing_split_file(tmp_path):
    write_npz(tmp_path / "train.npz", x=pattern(3, 1, 4, 4)[:, 0])
    assert_data_error("test.npz", "npz", "test", tmp_path)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"images": np.zeros((2, 4, 4), np.uint8)}, "'x'"),
        ({"x": np.zeros((2, 4, 4), np.float32)}, "uint8"),
        ({"x": np.zeros((2, 16), np.uint8)}, "shape"),
        ({"x": np.zeros((2, 4, 4, 5), np.uint8)}, "shape"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([0, 1, 1])}, "3 labels"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([0.5, 1.0])}, "integer"),
    ],
)
def test_npz_bad_arrays(tmp_path, arrays, message):
    write_npz(tmp_path / "train.npz", **arrays)
    with pytest.raises(DataError, match=message) as info:
        load("npz", "train", tmp_path)
    assert "train.npz" in str(info.value)


def test_npz_not_an_npz(tmp_path):
    (tmp_path / "train.npz").write_bytes(b"plain text")
    assert_data_error("train.npz", "npz", root=tmp_path)


# ---------------------------------------------------------------- digits


def test_digits_fixed_stratified_split():
    from sklearn.datasets import load_digits

    train, test = load("digits", "train"), load("digits", "test")
    assert (len(train), len(test)) == (1437, 360) and train.shape == (1, 8, 8)
    counts = torch.bincount(test.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~36 per class
    bunch = load_digits()
    reference = sorted(tuple(round(v * 255 / 16) for v in image.ravel()) for image in bunch.images)
    loaded = sorted(tuple(image.ravel().tolist()) for image in torch.cat([train.images, test.images]))
    assert loaded == reference
    assert torch.equal(load("digits", "test").images, test.images)


# ---------------------------------------------------------------- every registered loader

def write_small_npz(root: Path) -> None:
    write_npz(root / "train.npz", x=pattern(5, 3, 4, 4), y=np.arange(5))


# name -> builder of its fixture files in a folder (None: the loader needs no files)
FIXTURES = {
    "mnist": write_mnist,
    "fashion-mnist": lambda root: write_mnist(root, gz=True),
    "cifar10": write_cifar10,
    "cifar100": write_cifar100,
    "stl10": write_stl10,
    "folder": write_class_folder,
    "filelist": write_file_list,
    "npz": write_small_npz,
    "digits": None,
}


def test_every_registered_loader_has_a_fixture():
    # spirograph and skeleton_actions are generated; the fixtures of the TU graph loader are in
    # test_graphs.py, those of the NTU skeleton loader in test_skeletons.py
    assert set(DATASETS.names()) - {"spirograph", "skeleton_actions", "tu", "ntu"} == set(FIXTURES)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_registered_loader_loads_fixture_and_subsets(tmp_path, name):
    builder = FIXTURES[name]
    root = None if builder is None else tmp_path
    if builder is not None:
        builder(tmp_path)
    full = load(name, "train", root)
    assert full.images.dtype == torch.uint8 and full.images.dim() == 4
    subset = load(name, "train", root, size=2, seed=1)
    assert len(subset) == 2
    flat = full.images.reshape(len(full), -1)
    rows = [int((flat == image.reshape(-1)).all(dim=1).nonzero()[0]) for image in subset.images]
    assert torch.equal(subset.labels, full.labels[rows])
    assert torch.equal(load(name, "train", root, size=2, seed=1).images, subset.images)
    other_seeds = [load(name, "train", root, size=2, seed=seed).images for seed in range(2, 8)]
    assert any(not torch.equal(images, subset.images) for images in other_seeds)
    assert len(load(name, "train", root, size=10_000)) == len(full)
