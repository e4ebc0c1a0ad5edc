"""The Python API: loss modules, one's own backbone and dataset, train/evaluate from Python,
held-out test splits, kNN's k, and ``contrastlab config``."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

import contrastlab
from contrastlab.cli import main
from contrastlab.core.config import ConfigError
from contrastlab.core.config_help import describe, field_help
from contrastlab.data.base import DataError
from contrastlab.data.user_dataset import UserImages
from contrastlab.engine.setup import load_data
from contrastlab.eval.evaluate import warn_about_knn_k
from contrastlab.losses import (
    BarlowTwinsLoss,
    BYOLLoss,
    KernelSpec,
    MMCLLoss,
    NTXentLoss,
    SolverSpec,
    barlow_twins_loss,
    byol_loss,
    mmcl_loss,
    nt_xent,
)
from contrastlab.methods.base import StepInput
from contrastlab.models import as_backbone
from contrastlab.recipes import config_from, load_config, method_configs

ROOT = Path(__file__).resolve().parents[1]
TINY = ["train.epochs=1", "train.batch_size=32", "train.max_steps_per_epoch=2", "train.progress=false",
        "eval.plots=false", "eval.knn_k=5", "backbone.name=convnet", "backbone.options={channels: [8, 16]}"]


class Images(torch.utils.data.Dataset):
    """A user's dataset: 10-class 8x8 gray images whose class sets a bright square's position."""

    def __init__(self, n: int, form: str = "tensor", seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 4, (n,), generator=generator)
        self.images = (torch.rand(n, 1, 8, 8, generator=generator) * 60).to(torch.uint8)
        for i, label in enumerate(self.labels.tolist()):
            row, col = divmod(label, 2)
            self.images[i, 0, row * 4: row * 4 + 4, col * 4: col * 4 + 4] += 180
        self.form = form

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image = self.images[i]
        if self.form == "pil":
            image = Image.fromarray(image[0].numpy(), mode="L")
        elif self.form == "numpy":
            image = image[0].numpy()
        elif self.form == "float":
            image = image.float() / 255
        return image, int(self.labels[i])


# ------------------------------------------------------------------------- losses as modules
def test_loss_modules_equal_their_functions() -> None:
    torch.manual_seed(0)
    z1, z2 = torch.randn(16, 8, dtype=torch.float64), torch.randn(16, 8, dtype=torch.float64)
    for kind in ("infonce", "dcl", "hcl", "decoupled"):
        module = NTXentLoss(temperature=0.3, kind=kind, tau_plus=0.2, beta=0.5)
        assert torch.equal(module(z1, z2), nt_xent(z1, z2, 0.3, kind, 0.2, 0.5))
    assert torch.equal(NTXentLoss()(z1, z2), nt_xent(z1, z2))  # the function's defaults
    assert torch.equal(BarlowTwinsLoss(lambd=0.01)(z1, z2), barlow_twins_loss(z1, z2, 0.01))
    assert torch.equal(BYOLLoss()(z1, z2), byol_loss(z1, z2))
    spec = SolverSpec(solver="inverse")
    mmcl = MMCLLoss(KernelSpec(sigma=2.0), spec)
    expected, diagnostics = mmcl_loss(z1, z2, KernelSpec(sigma=2.0), spec)
    assert torch.allclose(mmcl(z1, z2), expected) and set(mmcl.diagnostics) == set(diagnostics)


def test_loss_modules_refuse_bad_options() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        NTXentLoss(kind="infonse")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        NTXentLoss(temperature=0)
    with pytest.raises(ValueError, match="lambd"):
        BarlowTwinsLoss(lambd=-1)


# ------------------------------------------------------------------------- one's own backbone
def test_as_backbone_reads_out_dim_from_a_forward_pass_and_keeps_the_mode() -> None:
    module = nn.Sequential(nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    running = module[1].running_mean.clone()
    assert as_backbone(module, (1, 8, 8)).out_dim == 6
    assert module.training and torch.equal(module[1].running_mean, running)  # eval-mode pass: stats untouched
    with pytest.raises(ValueError, match="input_shape"):
        as_backbone(nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        as_backbone(nn.Conv2d(1, 2, 3), (1, 8, 8))
    declared = nn.Linear(4, 3)
    declared.out_dim = 3
    assert as_backbone(declared) is declared


def test_build_method_trains_one_s_own_backbone_in_one_s_own_loop() -> None:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU())
    method = contrastlab.build_method("simclr", backbone, input_shape=(1, 8, 8), temperature=0.2,
                                      proj_hidden_dim=32, proj_out_dim=16)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
    x = torch.randn(32, 1, 8, 8)
    losses = []
    for _ in range(20):  # two fixed noisy views: the loss must fall
        out = method(StepInput(views=[x + 0.1 * torch.randn_like(x), x + 0.1 * torch.randn_like(x)]))
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        method.on_after_optimizer_step(0.5)
        losses.append(out["loss"].item())
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.2


def test_build_method_validates_fields_and_gives_second_encoders_fresh_weights() -> None:
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(64, 16))
    with pytest.raises(ConfigError, match="no field.*temprature"):
        contrastlab.build_method("simclr", backbone, (1, 8, 8), temprature=0.2)
    with pytest.raises(ConfigError, match="method.temperature must be > 0"):
        contrastlab.build_method("simclr", backbone, (1, 8, 8), temperature=-1.0)
    with pytest.raises(ConfigError, match="unknown method"):
        contrastlab.build_method("simclrr", backbone, (1, 8, 8))
    method = contrastlab.build_method("simclr", backbone, (1, 8, 8), loss="difficulty")
    assert method.biased is not method.backbone
    assert not torch.equal(method.biased[1].weight, method.backbone[1].weight)  # re-initialised, not shared


# ------------------------------------------------------------------------- one's own dataset
@pytest.mark.parametrize("form", ["tensor", "pil", "numpy", "float"])
def test_user_images_read_every_image_form_alike(form: str) -> None:
    reference = UserImages(Images(12))
    wrapped = UserImages(Images(12, form))
    assert wrapped.shape == (1, 8, 8) and wrapped.kind == "gray-small"
    batch = wrapped.collate([wrapped[i] for i in range(12)])
    assert torch.equal(batch["inputs"], reference.collate([reference[i] for i in range(12)])["inputs"])
    assert torch.equal(batch["labels"], Images(12).labels)


def test_user_images_labels_from_the_argument_the_targets_or_one_pass() -> None:
    data = Images(10)
    scanned = UserImages(data)
    assert torch.equal(scanned.labels, data.labels)
    data.targets = (data.labels + 1).tolist()  # the torchvision convention wins over a pass
    assert torch.equal(UserImages(data).labels, data.labels + 1)
    assert torch.equal(UserImages(data, labels=torch.zeros(10, dtype=torch.long)).labels, torch.zeros(10))
    unlabelled = UserImages([torch.zeros(1, 4, 4, dtype=torch.uint8)] * 3)
    assert unlabelled.labels is None and "labels" not in unlabelled[0]
    part = scanned.subset(torch.tensor([7, 2]))
    assert len(part) == 2 and torch.equal(part.labels, data.labels[[7, 2]])
    assert torch.equal(part[0]["inputs"][0], data.images[7])


def test_user_images_refuse_bad_items_naming_them() -> None:
    with pytest.raises(DataError, match="item 1 has shape|sample 1 has shape"):
        UserImages([torch.zeros(1, 4, 4), torch.zeros(1, 5, 4)])[1]
    with pytest.raises(DataError, match=r"item 0: float image values must lie in \[0, 1\]"):
        UserImages([torch.full((1, 4, 4), 2.0)])
    with pytest.raises(DataError, match="item 0: expected a PIL image, a tensor or a numpy array, got str"):
        UserImages(["cat.png"])
    with pytest.raises(DataError, match="expected 3 integer labels"):
        UserImages([torch.zeros(1, 4, 4, dtype=torch.uint8)] * 3, labels=[0, 1])
    with pytest.raises(DataError, match="empty"):
        UserImages([])


def test_train_and_evaluate_on_one_s_own_dataset(tmp_path: Path) -> None:
    run = contrastlab.train({"method": {"name": "simclr"}}, TINY, dataset=Images(96), test_dataset=Images(40, seed=1),
                            run_dir=tmp_path / "run")
    assert run.results["trained"]["num_test"] == 40 and run.results["dataset"] == "dataset"
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    again = contrastlab.evaluate(tmp_path / "run", ["eval.knn_k=3", "eval.compare_random_init=false"],
                                 dataset=Images(96), test_dataset=Images(40, seed=1))
    assert again["trained"]["knn"]["k"] == 3 and "random_init" not in again
    features = run.backbone()(torch.zeros(2, 1, 8, 8))
    assert features.shape == (2, run.backbone().out_dim)


def test_train_on_one_s_own_dataset_needs_a_test_split(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="test_dataset.*data.test_fraction"):
        contrastlab.train(None, TINY, dataset=Images(64), run_dir=tmp_path / "a")
    run = contrastlab.train(None, [*TINY, "data.test_fraction=0.25"], dataset=Images(64), run_dir=tmp_path / "b")
    assert run.results["trained"]["num_test"] == 16 and run.results["trained"]["num_train"] == 48
    quiet = contrastlab.train(None, [*TINY, "eval.at_end=false"], dataset=Images(64), run_dir=tmp_path / "c")
    assert quiet.results is None


# ------------------------------------------------------------------------- held-out test splits
def test_test_fraction_holds_out_a_seeded_disjoint_part() -> None:
    cfg = load_config(None, ["data.name=digits", "data.test_fraction=0.2", "data.seed=3"])
    data = load_data(cfg)
    assert len(data.test) == round(0.2 * 1437) and len(data.train) + len(data.test) == 1437
    seen = {tuple(x.flatten().tolist()) for x in data.train.images}
    assert sum(tuple(x.flatten().tolist()) in seen for x in data.test.images) < 0.05 * len(data.test)  # digits repeat rarely
    again = load_data(cfg)
    assert torch.equal(again.test.images, data.test.images)
    other = load_data(load_config(None, ["data.name=digits", "data.test_fraction=0.2", "data.seed=4"]))
    assert not torch.equal(other.test.images, data.test.images)
    capped = load_data(load_config(None, ["data.name=digits", "data.test_fraction=0.2", "data.train_size=100",
                                          "data.test_size=50"]))
    assert (len(capped.train), len(capped.test)) == (100, 50)


def test_probes_scoring_on_their_own_training_data_are_refused(tmp_path: Path) -> None:
    overrides = [*TINY, "data.name=digits", "data.test_split=train"]
    with pytest.raises(ConfigError, match="data.test_split='train' is the split the probes fit on.*data.test_fraction"):
        contrastlab.train(None, overrides, run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # refused before training
    assert main(["train", *overrides, "--run-dir", str(tmp_path / "cli")]) == 2


def test_a_folder_without_a_test_split_names_test_fraction(tmp_path: Path) -> None:
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(tmp_path / label / f"{i}.png")
    with pytest.raises(DataError, match="test does not exist.*data.test_fraction=0.1"):
        load_data(load_config(None, ["data.name=folder", f"data.root={tmp_path}"]))
    data = load_data(load_config(None, ["data.name=folder", f"data.root={tmp_path}", "data.test_fraction=0.5"]))
    assert (len(data.train), len(data.test)) == (3, 3)


def test_missing_fashion_mnist_says_how_to_get_it() -> None:
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist.*data.root"):
        load_data(load_config(None, ["data.name=fashion-mnist", "data.root=/nonexistent/fmnist"]))


def test_knn_k_beyond_the_training_samples_or_a_class_warns() -> None:
    labels = torch.arange(10).repeat(20)  # 200 samples, 20 per class
    with pytest.warns(UserWarning, match="eval.knn_k=500 is more than the 200 training samples"):
        warn_about_knn_k(500, labels)
    with pytest.warns(UserWarning, match="eval.knn_k=50 is more than the 20 training samples per class"):
        warn_about_knn_k(50, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_about_knn_k(10, labels)


# ------------------------------------------------------------------------- contrastlab config
def test_config_prints_a_recipe_that_loads_back_to_the_same_config(capsys: pytest.CaptureFixture) -> None:
    overrides = ["train.epochs=3", "method.temperature=0.3"]
    assert main(["config", str(ROOT / "configs/simclr-gray-small-convnet.yaml"), *overrides]) == 0
    printed = capsys.readouterr().out
    assert "  temperature: 0.3" in printed and "default: 0.5" in printed and "one of lars" not in printed
    assert "  name: lars" in printed and "one of sgd | lars | adam | adamw" in printed
    reloaded = config_from(yaml.safe_load(printed))
    assert reloaded == load_config(ROOT / "configs/simclr-gray-small-convnet.yaml", overrides)


def test_every_config_field_has_a_line_of_help() -> None:
    cfg = load_config(None)
    sections = [type(getattr(cfg, name)) for name in ("data", "augment", "backbone", "optim", "train", "eval")]
    for cls in [*sections, *method_configs().values()]:
        helpless = [f.name for f in dataclasses.fields(cls) if f.name not in field_help(cls)]
        assert not helpless, f"{cls.__name__}: fields without a help comment: {helpless}"
    assert "# " in describe(cfg).splitlines()[1]


# ------------------------------------------------------------------------- the examples
def test_the_own_loop_example_learns() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "examples/own_loop_simclr.py"), "--epochs", "8"],
                          capture_output=True, text=True, timeout=300, check=True)
    last = done.stdout.strip().splitlines()[-1]
    before, after = (float(part.split("%")[0].split()[-1]) for part in last.split(",")[:2])
    assert after > before + 5, last


def test_the_trainer_example_runs(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "examples/trainer_on_own_dataset.py"), "--epochs", "2",
                           "--run-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, check=True)
    assert "simclr: kNN" in done.stdout and (tmp_path / "run" / "results.json").is_file()
