"""The training loop: resume equality, divergence handling, unlabelled data, learning."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from contrastlab.engine import checkpoint as ckpt
from contrastlab.engine.distributed import init_distributed
from contrastlab.engine.evaluation import evaluate_run
from contrastlab.engine.trainer import Trainer, TrainingDiverged
from contrastlab.methods.simclr import SimCLR
from contrastlab.recipes import load_config

TINY = [
    "data.name=digits", "data.train_size=256", "data.test_size=128",
    "augment.preset=crop-only", "augment.crop_scale=[0.5, 1.0]",
    "backbone.name=convnet", "backbone.options={channels: [8, 16]}",
    "method.proj_hidden_dim=32", "method.proj_out_dim=16",
    "optim.name=sgd", "optim.lr=0.05", "optim.warmup_epochs=0.5",
    "train.batch_size=64", "train.precision=fp32", "train.channels_last=false",
    "train.progress=false", "train.log_every=1", "train.device=cpu",
    "eval.max_train=256", "eval.plots=false", "eval.knn_k=20",
]


def tiny_config(*overrides):
    return load_config(overrides=TINY + list(overrides))


def losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def interrupted_run(cfg, run_dir, env, monkeypatch, crash_epoch, reload_config=False):
    """Train ``cfg`` in ``run_dir``, crash when epoch ``crash_epoch`` (0-based) starts, check the
    last checkpoint is that epoch's, then resume to the end (with the run's saved config.yaml
    reloaded when ``reload_config``, as ``contrastlab train --resume`` does, else ``cfg``)."""
    original = Trainer._train_epoch

    def crash(self, epoch):
        if epoch == crash_epoch:
            raise KeyboardInterrupt
        original(self, epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", crash)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, run_dir, env).fit()
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    assert ckpt.load_checkpoint(run_dir)["epoch"] == crash_epoch
    resumed = Trainer(load_config(run_dir / "config.yaml") if reload_config else cfg, run_dir, env, resume=True)
    resumed.fit()
    return resumed


def resumed_like_uninterrupted(cfg, tmp_path, monkeypatch, crash_epoch=2):
    """Train ``cfg`` straight through (``tmp_path / "whole"``) and with a crash when epoch
    ``crash_epoch`` starts, then a resume (``tmp_path / "split"``); check the logged losses are
    equal step by step and every method tensor in the final checkpoints is equal; return both
    checkpoints ``(whole, split)``."""
    env = init_distributed("cpu")
    Trainer(cfg, tmp_path / "whole", env).fit()
    interrupted_run(cfg, tmp_path / "split", env, monkeypatch, crash_epoch=crash_epoch)
    whole, split = losses(tmp_path / "whole"), losses(tmp_path / "split")
    assert whole and whole == split
    a, b = ckpt.load_checkpoint(tmp_path / "whole"), ckpt.load_checkpoint(tmp_path / "split")
    assert a["method"].keys() == b["method"].keys()
    assert all(torch.equal(a["method"][k], b["method"][k]) for k in a["method"])
    return a, b


METHOD_OVERRIDES = {
    "simclr": ["method.name=simclr"],
    "moco": ["method.name=moco", "method.queue_size=96", "method.symmetric=true"],
    "byol": ["method.name=byol", "method.pred_hidden_dim=32"],
    "barlow_twins": ["method.name=barlow_twins", "method.proj_layers=2"],
    "invclr": ["method.name=invclr", "augment.preset=simclr-cifar", "method.gp_weight=0.5"],
    "metamask": ["method.name=metamask", "method.cl_hidden_dim=32", "method.cl_out_dim=16", "method.mask_lr=0.05"],
    "metaug": ["method.name=metaug", "method.gen_hidden_dim=32"],
    "isd": ["method.name=isd", "method.queue_size=96", "method.pred_hidden_dim=32"],
    "metaug_lab": ["method.name=metaug_lab", "data.name=spirograph", "data.color_space=lab", "backbone.name=lab_split",
                   "backbone.options={encoder: convnet, encoder_options: {channels: [8, 16]}}",
                   "method.gen_hidden_dim=32", "method.num_negatives=32"],
    "auccl": ["method.name=auccl"],
    "halp": ["method.name=halp", "method.queue_size=96", "method.prototype_keys=64", "method.num_prototypes=8",
             "method.num_candidates=8", "method.num_positives=10", "method.refresh_every=2"],
    "graphcl": ["method.name=graphcl", "data.name=tu", f"data.root={Path(__file__).parents[2] / 'shared/data/tu/MUTAG'}",
                "data.train_split=all", "data.test_split=all", "augment.preset=graph", "backbone.name=gin",
                "backbone.options={hidden: 16, layers: 2}", "train.batch_size=47"],  # 188 graphs: 4 steps
}


@pytest.mark.parametrize("method", list(METHOD_OVERRIDES))
def test_resume_reproduces_an_uninterrupted_run(tmp_path, monkeypatch, method):
    """Every method's state (EMA teachers, queues) survives a crash and resume exactly."""
    whole, _ = resumed_like_uninterrupted(tiny_config("train.epochs=3", *METHOD_OVERRIDES[method]), tmp_path,
                                          monkeypatch)
    assert whole["step"] == 12


def test_resume_refuses_a_finished_run_and_a_missing_checkpoint(tmp_path):
    cfg = tiny_config("train.epochs=1")
    env = init_distributed("cpu")
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint at"):
        Trainer(cfg, tmp_path, env, resume=True)
    Trainer(cfg, tmp_path, env).fit()
    with pytest.raises(ckpt.CheckpointError, match="raise train.epochs"):
        Trainer(cfg, tmp_path, env, resume=True)


def test_min_samples_raises_the_epochs_of_a_small_training_split(tmp_path, capsys):
    """256 images at batch 64: 256 samples per epoch, so 700 samples take 3 epochs (12 steps);
    a per-epoch step cap shortens each epoch, not the count of epochs; a resumed run keeps them."""
    trainer = Trainer(tiny_config("train.epochs=1", "train.min_samples=700"), tmp_path / "full",
                      init_distributed("cpu"))
    assert "train.epochs raised from 1 to 3" in capsys.readouterr().err
    trainer.fit()
    assert max(losses(tmp_path / "full")) == 12
    saved = load_config(tmp_path / "full" / "config.yaml")
    assert saved.train.epochs == 3 and saved.train.min_samples == 700
    with pytest.raises(ckpt.CheckpointError, match="already finished 3 of train.epochs=3"):
        Trainer(saved, tmp_path / "full", init_distributed("cpu"), resume=True)

    capped = Trainer(tiny_config("train.epochs=1", "train.min_samples=700", "train.max_steps_per_epoch=1"),
                     tmp_path / "capped", init_distributed("cpu"))
    assert capped.cfg.train.epochs == 3 and capped.total_steps == 3
    assert "train.epochs raised from 1 to 3" in capsys.readouterr().err
    capped.close()
    enough = Trainer(tiny_config("train.epochs=4", "train.min_samples=700"), tmp_path / "enough",
                     init_distributed("cpu"))
    assert enough.cfg.train.epochs == 4 and "raised" not in capsys.readouterr().err
    enough.close()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_config("train.epochs=3")
    original = SimCLR.training_step
    calls = {"n": 0}

    def poisoned(self, step):
        out = original(self, step)
        calls["n"] += 1
        if calls["n"] == 6:  # second step of the second epoch
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(SimCLR, "training_step", poisoned)
    with pytest.raises(TrainingDiverged, match="loss became nan at step 5.*checkpoint.pt"):
        Trainer(cfg, tmp_path, init_distributed("cpu")).fit()
    state = ckpt.load_checkpoint(tmp_path)
    assert state["epoch"] == 1 and state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["method"].values() if v.is_floating_point())


def test_unlabelled_data_trains_and_evaluates_without_labels(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "train.npz", x=rng.integers(0, 256, (96, 12, 12), dtype=np.uint8))
    np.savez(tmp_path / "test.npz", x=rng.integers(0, 256, (32, 12, 12), dtype=np.uint8))
    cfg = tiny_config("data.name=npz", f"data.root={tmp_path}", "data.train_size=null",
                      "data.test_size=null", "train.batch_size=32", "train.epochs=1")
    trainer = Trainer(cfg, tmp_path / "run", init_distributed("cpu"))
    assert trainer.probe is None
    trainer.fit()
    results = evaluate_run(tmp_path / "run", cfg, echo=False)
    assert "knn" not in results["trained"] and "linear" not in results["trained"]
    assert results["trained"]["diagnostics"]["effective_rank"] > 1


def test_auto_precision_takes_bf16_only_on_a_cpu_that_computes_it(monkeypatch):
    import contrastlab.engine.setup as setup

    cpu = torch.device("cpu")
    monkeypatch.setattr(setup, "cpu_computes_bf16", lambda: True)
    assert setup.autocast_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(setup, "cpu_computes_bf16", lambda: False)
    assert setup.autocast_dtype("auto", cpu) is None
    with pytest.warns(UserWarning, match="without native bf16"):
        assert setup.autocast_dtype("bf16", cpu) == torch.bfloat16
    assert setup.autocast_dtype("fp32", cpu) is None
