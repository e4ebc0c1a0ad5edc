"""The command-line tool end to end: train, eval, export, list, and its error messages."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from contrastlab.cli import main
from contrastlab.engine.checkpoint import load_checkpoint
from contrastlab.methods import METHODS
from contrastlab.models import build_backbone
from contrastlab.recipes import load_config
from test_trainer import TINY


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--run-dir", str(run), *TINY, "train.epochs=1", "eval.plots=true"]) == 0
    return run


def test_train_writes_the_run_folder_and_evaluates(run_dir, capsys):
    for name in ("config.yaml", "checkpoint.pt", "metrics.jsonl", "metrics.csv", "results.json",
                 "loss.png", "online_acc.png", "spectrum.png", "embedding.png"):
        assert (run_dir / name).stat().st_size > 0, name
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results) >= {"trained", "random_init"}
    assert 0 <= results["trained"]["knn"]["accuracy"] <= 100
    assert main(["eval", str(run_dir), "eval.knn_k=5", "eval.compare_random_init=false"]) == 0
    out = capsys.readouterr().out
    assert "knn/accuracy" in out and "random_init" not in out


def test_export_loads_into_a_plain_backbone(run_dir, tmp_path):
    out = tmp_path / "backbone.safetensors"
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    with safe_open(str(out), "pt") as f:
        meta = json.loads(f.metadata()["contrastlab"])
    backbone = build_backbone(meta["backbone"], tuple(meta["input_shape"]), **meta["options"])
    backbone.load_state_dict(load_file(str(out)))

    cfg = load_config(run_dir / "config.yaml")
    method = METHODS.get(cfg.method.name)(cfg.method, build_backbone(
        cfg.backbone.name, tuple(meta["input_shape"]), **cfg.backbone.options))
    method.load_state_dict(load_checkpoint(run_dir)["method"])
    x = torch.randn(4, *meta["input_shape"])
    assert torch.equal(backbone.eval()(x), method.backbone.eval()(x))


def test_list_names_every_registry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("methods:", "simclr", "datasets:", "spirograph", "fashion-mnist", "backbones:", "resnet18",
                 "augmentation presets", "auto", "gray-small", "colour-large"):
        assert word in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "configs/nope.yaml"], "config file configs/nope.yaml does not exist"),
        (["train", "configs/simclr-spirograph-convnet.yaml", "train.epcohs=1"], "did you mean 'epochs'"),
        (["train", "configs/simclr-spirograph-convnet.yaml", "data.name=cifar"], "unknown dataset 'cifar'"),
        (["train", "configs/simclr-spirograph-convnet.yaml", "backbone.options={widht: 2}"], "no option 'widht'"),
        (["train", "configs/simclr-spirograph-convnet.yaml", "data.name=mnist"], "data.root"),
        (["eval", "does-not-exist"], "config file does-not-exist/config.yaml does not exist"),
    ],
)
def test_user_errors_are_one_clear_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_export_of_a_folder_without_checkpoint(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "b.safetensors")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
