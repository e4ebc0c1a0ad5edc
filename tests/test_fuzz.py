"""Fuzz tests: random dotted overrides never give anything but a valid config or a clean
``ConfigError`` (exit code 2 through the CLI); random truncations and byte flips of small
fixture files never give anything but a ``DataError`` naming the file, or arrays of the
format's shapes and types (a flipped pixel byte is a valid file)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contrastlab.cli import main
from contrastlab.core.config import Config, ConfigError
from contrastlab.data import DATASETS, DataError
from contrastlab.recipes import load_config
from fixtures import write_cifar10, write_mnist

SECTIONS = {"data": ["name", "train_size", "test_size", "image_size", "num_workers", "root", "in_memory"],
            "augment": ["preset", "crop_scale", "flip", "views"],
            "backbone": ["name", "options"],
            "method": ["name", "temperature", "proj_hidden_dim", "proj_out_dim", "queue_size", "momentum", "loss"],
            "optim": ["name", "lr", "momentum", "weight_decay", "betas", "warmup_epochs", "schedule", "grad_clip"],
            "train": ["epochs", "batch_size", "checkpoint_every", "log_every", "precision", "seed", "device"],
            "eval": ["knn_k", "knn_temperature", "batch_size", "max_train", "protocol", "svm_cs"]}
YAML_VALUES = st.one_of(
    st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
    st.text(max_size=12), st.lists(st.one_of(st.integers(-5, 5), st.floats(-2, 2), st.text(max_size=3)), max_size=3),
    st.sampled_from(["[1", "{a: 1", "]", "nan", "-inf", "1e-3", "0x10", "~", "'", "{}", "[]", "[0.9, 0.2]"]),
)


def override_text(value) -> str:  # noqa: ANN001
    return value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


@st.composite
def overrides(draw):
    section = draw(st.sampled_from(sorted(SECTIONS)))
    key = draw(st.one_of(st.sampled_from(SECTIONS[section]), st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1,
                                                                      max_size=8)))
    return f"{section}.{key}={override_text(draw(YAML_VALUES))}"


@settings(max_examples=400, deadline=None)
@given(st.lists(overrides(), min_size=1, max_size=3))
def test_random_overrides_give_a_valid_config_or_a_config_error(items):
    try:
        cfg = load_config(overrides=items)
    except ConfigError as err:
        assert str(err) and "Traceback" not in str(err)
        return
    assert isinstance(cfg, Config)
    for value in (cfg.optim.lr, cfg.method.temperature if hasattr(cfg.method, "temperature") else 1.0):
        assert np.isfinite(value) and value > 0
    assert 1 <= cfg.train.epochs and cfg.train.batch_size >= 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(overrides(), min_size=1, max_size=2))
def test_the_cli_answers_bad_overrides_with_exit_code_2(tmp_path, capsys, items):
    """Only the config is checked here (``list`` does not train): every override that does not
    load must exit 2 with a one-line ``error:`` message, never a traceback."""
    try:
        load_config(overrides=items)
    except ConfigError:
        code = main(["train", "--run-dir", str(tmp_path / "never"), *items, "train.epochs=0"])
        assert code == 2
        assert capsys.readouterr().err.startswith("error: ")
        assert not (tmp_path / "never").exists()


def load(name: str, split: str, root: Path):  # noqa: ANN201
    return DATASETS.get(name)(split, str(root))


def mutations():
    return st.tuples(st.integers(0, 10**6), st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)),
                                                    max_size=4))


def mutate(path: Path, cut: int, flips: list[tuple[int, int]]) -> bool:
    """Truncate ``path`` (by ``cut`` modulo its size + 1, 0 keeps it whole) and XOR bytes; returns
    whether it was truncated."""
    raw = bytearray(path.read_bytes())
    keep = len(raw) - cut % (len(raw) + 1)
    truncated = keep < len(raw)
    raw = raw[:keep]
    for position, mask in flips:
        if raw:
            raw[position % len(raw)] ^= mask
    path.write_bytes(bytes(raw))
    return truncated


FIXTURE_FILES = {  # loader -> (writer, the file to damage, split)
    "mnist": (lambda root: write_mnist(root), "train-images-idx3-ubyte", "train"),
    "mnist-gz": (lambda root: write_mnist(root, gz=True), "train-labels-idx1-ubyte.gz", "train"),
    "cifar10": (lambda root: write_cifar10(root), "cifar-10-batches-py/test_batch", "test"),
    "cifar10-meta": (lambda root: write_cifar10(root), "cifar-10-batches-py/batches.meta", "test"),
}


@pytest.mark.parametrize("case", sorted(FIXTURE_FILES))
def test_damaged_files_give_a_data_error_naming_the_file(tmp_path, case):
    writer, name, split = FIXTURE_FILES[case]
    loader = case.split("-")[0]
    pristine = tmp_path / "pristine"
    writer(pristine)
    reference = load(loader, split, pristine)

    @settings(max_examples=60, deadline=None)
    @given(mutations())
    def check(mutation):
        root = tmp_path / "damaged"
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(pristine, root)
        truncated = mutate(root / name, *mutation)
        try:
            data = load(loader, split, root)
        except DataError as err:
            assert Path(name).name.removesuffix(".gz") in str(err), str(err)
            return
        assert not truncated, "a truncated file loaded"
        assert data.images.dtype == torch.uint8 and data.images.shape == reference.images.shape
        assert data.labels.shape == reference.labels.shape
        assert int(data.labels.min()) >= 0 and int(data.labels.max()) < len(data.classes)

    check()
