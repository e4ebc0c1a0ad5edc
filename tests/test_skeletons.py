"""Skeleton sequences as a data kind: the generated action set, the NTU-layout loader (and its
refusal of bad files), the skeleton views, the sequence encoders, and MoCo learning on them."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from contrastlab.data import DATASETS, DataError
from contrastlab.data.augment import TransformArgumentError
from contrastlab.data.skeleton_actions import CLASSES, generate
from contrastlab.data.skeleton_augment import (CorruptOrShear, JointCorrupt, Rotate, Shear, SkeletonView,
                                               TemporalCrop, resample_frames, rotation_matrices)
from contrastlab.engine.distributed import init_distributed
from contrastlab.engine.evaluation import evaluate_run
from contrastlab.engine.trainer import Trainer
from contrastlab.models import build_backbone
from contrastlab.recipes import load_config
from test_datasets import RunsCode


CONFIGS = Path(__file__).parents[1] / "configs"


def test_the_generator_is_deterministic_balanced_and_its_classes_are_linearly_separable():
    x, y, nuisance = generate(1200, seed=3)
    again, y_again, _ = generate(1200, seed=3)
    assert np.array_equal(x, again) and np.array_equal(y, y_again)
    assert not np.array_equal(generate(50, seed=4)[0], x[:50])
    assert x.shape == (1200, 3, 64, 25, 2) and x.dtype == np.float32 and np.isfinite(x).all()
    assert np.bincount(y).tolist() == [100] * len(CLASSES) and nuisance.shape == (1200, 10)
    absent = nuisance[:, -1] == 0
    assert absent.any() and (x[absent, ..., 1] == 0).all() and (x[~absent, ..., 1] != 0).any()
    test, labels, _ = generate(600, seed=5)
    probe = LogisticRegression(max_iter=3000).fit(x.reshape(len(x), -1), y)
    assert probe.score(test.reshape(len(test), -1), labels) > 0.9  # the sanity bound: 12 classes, chance 8%


def test_generated_splits_come_from_different_streams_and_refuse_a_root():
    train = DATASETS.get("skeleton_actions")("train", None, 40)
    test = DATASETS.get("skeleton_actions")("test", None, 40)
    assert train.shape == (3, 64, 25, 2) and len(train) == 40 and train.kind == "skeleton"
    assert not torch.equal(train.sequences, test.sequences)
    with pytest.raises(DataError, match="generated, not read from files"):
        DATASETS.get("skeleton_actions")("train", "/tmp", 4)


def write_ntu(folder, n=6, frames=20, split="train", labels=None, names=None, num_frame=None, array=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    data = array if array is not None else rng.normal(size=(n, 3, frames, 25, 2)).astype(np.float32)
    np.save(folder / f"{split}_data_joint.npy", data)
    labels = labels if labels is not None else [i % 3 for i in range(n)]
    names = names if names is not None else [f"S001C001P001R001A{i:03d}" for i in range(n)]
    with open(folder / f"{split}_label.pkl", "wb") as f:
        pickle.dump((names, labels), f)
    if num_frame is not None:
        np.save(folder / f"{split}_num_frame.npy", np.asarray(num_frame))
    return data


def test_ntu_loader_reads_the_layout_and_resamples_valid_frames(tmp_path):
    data = write_ntu(tmp_path, num_frame=[20, 10, 1, 5, 20, 2])
    loaded = DATASETS.get("ntu")("train", str(tmp_path))
    assert loaded.sequences.shape == (6, 3, 64, 25, 2) and loaded.labels.tolist() == [0, 1, 2, 0, 1, 2]
    # sequence 1 has 10 valid frames: frame 0 and frame 9 are the ends of the resampled one
    assert torch.allclose(loaded.sequences[1, :, 0], torch.from_numpy(data[1, :, 0]))
    assert torch.allclose(loaded.sequences[1, :, -1], torch.from_numpy(data[1, :, 9]), atol=1e-6)
    assert torch.allclose(loaded.sequences[2], torch.from_numpy(data[2, :, :1]).expand(3, 64, 25, 2))
    # a loop reference of the linear interpolation for sequence 3 (5 frames)
    for out_frame in (0, 17, 40, 63):
        position = 4 * out_frame / 63
        low, high = int(np.floor(position)), min(int(np.floor(position)) + 1, 4)
        expected = data[3, :, low] + (position - low) * (data[3, :, high] - data[3, :, low])
        assert np.allclose(loaded.sequences[3, :, out_frame].numpy(), expected, atol=1e-5)
    subset = DATASETS.get("ntu")("train", str(tmp_path), 3, 1)
    assert len(subset) == 3


@pytest.mark.parametrize("problem, message", [
    ("shape", r"train_data_joint.npy: expected float32 \(N, 3, T, V, M\)"),
    ("count", r"train_label.pkl: 5 labels for the 6 sequences"),
    ("labels", r"train_label.pkl: the labels must be integers"),
    ("frames", r"train_num_frame.npy: expected 6 frame counts"),
    ("code", r"train_label.pkl: refused to load: the pickle asks for posix.system"),
])
def test_ntu_loader_refuses_bad_files_naming_them(tmp_path, problem, message):
    marker = tmp_path / "ran"
    if problem == "shape":
        write_ntu(tmp_path, array=np.zeros((6, 2, 20, 25, 2), np.float32))
    elif problem == "count":
        write_ntu(tmp_path, labels=[0, 1, 2, 0, 1], names=list("abcde"))
    elif problem == "labels":
        write_ntu(tmp_path, labels=["a"] * 6)
    elif problem == "frames":
        write_ntu(tmp_path, num_frame=[21] * 6)
    else:
        write_ntu(tmp_path, names=[RunsCode(marker)] * 6)
    with pytest.raises(DataError, match=message):
        DATASETS.get("ntu")("train", str(tmp_path))
    assert not marker.exists()


def batch(n=6, frames=20, seed=0):
    return {"inputs": torch.randn(n, 3, frames, 25, 2, generator=torch.Generator().manual_seed(seed))}


def test_temporal_crop_resizes_a_window_and_the_full_window_is_the_identity():
    x = batch()
    full = TemporalCrop(ratio=(1.0, 1.0), frames=20)
    assert torch.allclose(SkeletonView([full])(x, torch.Generator().manual_seed(0)), x["inputs"], atol=1e-5)
    crop = TemporalCrop(ratio=(0.3, 0.6), frames=64)
    params = crop.sample(tuple(x["inputs"].shape), torch.Generator().manual_seed(1))
    out = crop.apply(x["inputs"], params)
    assert out.shape == (6, 3, 64, 25, 2)
    assert ((params["length"] >= 6) & (params["length"] <= 12)).all()
    assert ((params["start"] >= 0) & (params["start"] + params["length"] <= 20)).all()
    for b in range(6):  # the window's ends are the first and last output frames
        start, length = float(params["start"][b]), float(params["length"][b])
        for position, frame in ((start, 0), (start + length - 1, 63)):
            low = int(np.floor(position))
            expected = x["inputs"][b, :, low] + (position - low) * (x["inputs"][b, :, min(low + 1, 19)] -
                                                                   x["inputs"][b, :, low])
            assert torch.allclose(out[b, :, frame], expected, atol=1e-5)


def test_joint_corruption_shear_and_rotation():
    x = batch()["inputs"]
    shape = tuple(x.shape)
    corrupt = JointCorrupt(prob=1.0, joints=15)
    params = corrupt.sample(shape, torch.Generator().manual_seed(2))
    out = corrupt.apply(x, params)
    changed = (out != x).any(dim=4).any(dim=2).any(dim=1)  # (B, V): the joints that changed
    assert (changed.sum(dim=1) == 15).all()  # exactly 15 joints of each sample, in every frame
    for b in range(6):
        chosen = out[b][:, :, params["joints"][b]]
        assert (chosen == 0).all() == bool(params["zero"][b])  # zeroed, or mixed by a random matrix
    shear = Shear(prob=1.0, strength=0.5).sample(shape, torch.Generator().manual_seed(3))["matrix"]
    assert torch.equal(torch.diagonal(shear, dim1=1, dim2=2), torch.ones(6, 3)) and (shear.abs() <= 1).all()
    assert torch.equal(Shear(prob=0.0).sample(shape, torch.Generator())["matrix"], torch.eye(3).expand(6, 3, 3))
    rotate = Rotate(max_angle=1.0)
    rotated = rotate.apply(x, rotate.sample(shape, torch.Generator().manual_seed(4)))
    bone = lambda s: (s[:, :, :, 1] - s[:, :, :, 0]).norm(dim=1)  # noqa: E731 - joint 0 to 1 length
    assert torch.allclose(bone(rotated), bone(x), atol=1e-5)
    r = rotation_matrices(torch.randn(4, 3))
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3).expand(4, 3, 3), atol=1e-6)
    either = CorruptOrShear(corrupt_prob=0.5).sample(shape, torch.Generator().manual_seed(5))
    sheared = (either["matrix"] != torch.eye(3)).any(dim=(1, 2))
    assert not (sheared & either["joints"].any(dim=1)).any()  # never both on one sample


def test_the_robustness_perturbation_turns_the_camera_by_the_strength():
    from contrastlab.data.perturbation import registered_perturbation

    view = SkeletonView([TemporalCrop()])
    perturb = registered_perturbation(view)(None)
    x = batch()["inputs"]
    turned = perturb(0.7)({"inputs": x}, torch.Generator().manual_seed(0))
    assert torch.equal(turned[:, 1], x[:, 1])  # the vertical stays
    before, after = x[:, [0, 2]], turned[:, [0, 2]]
    cosine = (before * after).sum(dim=1) / (before.norm(dim=1) * after.norm(dim=1))
    assert torch.allclose(cosine, torch.full_like(cosine, math.cos(0.7)), atol=1e-4)
    assert torch.allclose(perturb(0.0)({"inputs": x}, torch.Generator()), x)


def test_views_are_reproducible_from_their_seed_and_arguments_are_checked():
    view = SkeletonView([TemporalCrop((0.5, 1.0), 32), CorruptOrShear()])
    x = batch()
    a = view(x, torch.Generator().manual_seed(7))
    assert torch.equal(a, view(x, torch.Generator().manual_seed(7)))
    assert not torch.equal(a, view(x, torch.Generator().manual_seed(8)))
    assert view.output_shape((3, 20, 25, 2)) == (3, 32, 25, 2) and a.shape == (6, 3, 32, 25, 2)
    with pytest.raises(TransformArgumentError, match="ratio"):
        TemporalCrop(ratio=(0.8, 0.2))
    with pytest.raises(TransformArgumentError, match="prob"):
        JointCorrupt(prob=1.5)


@pytest.mark.parametrize("name, options, out_dim", [("bigru", {"hidden": 16, "layers": 2}, 32),
                                                     ("tconv", {"channels": [8, 16]}, 16)])
def test_sequence_encoders(name, options, out_dim):
    model = build_backbone(name, (3, 20, 25, 2), **options)
    out = model(batch()["inputs"])
    assert out.shape == (6, out_dim) and model.out_dim == out_dim
    with pytest.raises(ValueError, match=rf"'{name}' encodes skeleton sequences: \(3, T, V, M\)"):
        build_backbone(name, (3, 32, 32))


def test_bigru_takes_the_last_frames_output():
    model = build_backbone("bigru", (3, 5, 25, 2), hidden=4, layers=1).eval()
    x = batch(2, 5)["inputs"]
    h, _ = model.gru(model.norm(x.permute(0, 1, 3, 4, 2).reshape(2, 150, 5)).transpose(1, 2))
    assert torch.allclose(model(x), h[:, -1])


def test_resample_keeps_constant_sequences_constant():
    constant = torch.ones(2, 3, 7, 25, 2)
    assert torch.allclose(resample_frames(constant, torch.zeros(2), torch.tensor([7.0, 3.0]), 64), torch.ones(()))


@pytest.mark.parametrize("recipe", ["moco", "halp"])
def test_moco_and_halp_on_generated_skeletons_beat_the_untrained_encoder_on_knn(tmp_path, recipe):
    cfg = load_config(CONFIGS / f"{recipe}-skeleton_actions-tconv.yaml", [
        "data.train_size=1000", "data.test_size=500", "train.epochs=3", "method.queue_size=512",
        "backbone.options={channels: [32, 64]}", "train.progress=false", "eval.plots=false"])
    Trainer(cfg, tmp_path, init_distributed("cpu")).fit()
    results = evaluate_run(tmp_path, cfg, echo=False)
    assert results["trained"]["knn"]["accuracy"] >= results["random_init"]["knn"]["accuracy"] + 5
