"""The negative-handling options of SimCLR (and MoCo) as methods: MMCL, difficulty-based
debiasing with its biased encoder, the decoupled loss; their config checks, the trainer's
skipped steps, checkpoints and exact resume. The losses themselves: test_losses_negatives.py."""

import json
import re

import pytest
import torch

from contrastlab.core.config import ConfigError
from contrastlab.engine import checkpoint as ckpt
from contrastlab.engine.distributed import init_distributed
from contrastlab.engine.trainer import MAIN, Trainer
from contrastlab.losses import mmcl as mmcl_module
from contrastlab.methods import simclr as simclr_module
from contrastlab.methods.simclr import SimCLRConfig
from contrastlab.recipes import load_config
from test_trainer import losses, resumed_like_uninterrupted, tiny_config


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("override, message", [
    ("method.svm_c=0", "method.svm_c must be -1 (unbounded) or > 0, got 0"),
    ("method.svm_sigma_milestones=[125, 75]", "method.svm_sigma_milestones must be increasing epochs"),
    ("method.vmf_sigma=0.5", "method.vmf_sigma weighs the positives of method.loss=decoupled only"),
    ("method.svm_sigma=0", "method.svm_sigma must be > 0, got 0"),
    ("method.loss=svm", "method.loss: 'svm' is not one of infonce, dcl, hcl, decoupled, mmcl, difficulty"),
])
def test_bad_negative_settings_are_named_at_load(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(overrides=["method.loss=mmcl", override] if "vmf" not in override else [override])


@pytest.mark.parametrize("loss, message", [
    ("mmcl", "method.queue_size=4096 keys the closed form needs a Gram tensor of batch x 4096 x 4096"),
    ("difficulty", "MoCo's queue holds only past keys"),
])
def test_moco_rejects_the_batch_negative_losses_at_load(loss, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=["method.name=moco", f"method.loss={loss}", "method.queue_size=4096"])
    load_config(overrides=["method.name=moco", "method.loss=decoupled", "method.vmf_sigma=0.5"])  # composes


def test_the_bandwidth_follows_its_schedule_by_epoch():
    """CIFAR-100's recipe: sigma 50, divided by 10 at the start of epochs 75 and 125."""
    cfg = SimCLRConfig(loss="mmcl", svm_sigma=50.0, svm_sigma_milestones=(75, 125), svm_sigma_gamma=0.1)
    assert [cfg.kernel_spec(e).sigma for e in (0, 74, 75, 124, 125, 399)] == pytest.approx([50, 50, 5, 5, 0.5, 0.5])


def test_mmcl_trains_with_the_epoch_schedule_and_logs_its_diagnostics(tmp_path, monkeypatch):
    seen = []
    original = simclr_module.mmcl_loss

    def spy(z1, z2, kernel, solver, generator):
        seen.append(kernel.sigma)
        return original(z1, z2, kernel, solver, generator)

    monkeypatch.setattr(simclr_module, "mmcl_loss", spy)
    cfg = tiny_config("method.loss=mmcl", "method.svm_sigma=2", "method.svm_sigma_milestones=[1]", "train.epochs=2")
    method = Trainer(cfg, tmp_path, init_distributed("cpu"))
    method.fit()
    assert seen == pytest.approx([2.0] * 4 + [0.2] * 4)
    steps = [r for r in records(tmp_path) if "loss" in r]
    assert len(steps) == 8
    for key in ("positive_kernel", "negative_kernel", "beta_zero", "beta_at_c", "svm_iterations"):
        assert all(key in r for r in steps), key
    assert all(0 < r["svm_iterations"] <= 1000 and 0 <= r["beta_zero"] < 1 for r in steps)


def test_mmcl_takes_two_views_only():
    cfg = tiny_config("method.loss=mmcl", "augment.views=[{count: 3, size: 8, transforms: [{name: crop}]}]")
    with pytest.raises(ConfigError, match="augment.views"):
        Trainer(cfg, "/nonexistent", init_distributed("cpu"))


def test_the_gram_memory_check_fires_before_the_first_step(tmp_path, monkeypatch):
    monkeypatch.setattr(mmcl_module, "available_bytes", lambda device: 1024)
    cfg = tiny_config("method.loss=mmcl", "method.svm_solver=inverse")
    with pytest.raises(MemoryError, match=r"64 anchors x 63 x 63 negatives.*lower train.batch_size"):
        Trainer(cfg, tmp_path, init_distributed("cpu")).fit()
    assert not (tmp_path / ckpt.CHECKPOINT_NAME).exists()


def test_difficulty_trains_a_biased_encoder_with_its_own_optimiser(tmp_path):
    cfg = tiny_config("method.loss=difficulty", "train.epochs=2", "method.biased_lr_scale=10")
    trainer = Trainer(cfg, tmp_path, init_distributed("cpu"))
    method = trainer.method
    assert list(trainer.optimizers) == [MAIN, "biased"]
    in_main = {id(p) for g in trainer.optimizers[MAIN][0].param_groups for p in g["params"]}
    biased = [p for m in (method.biased, method.biased_projector) for p in m.parameters()]
    assert biased and not {id(p) for p in biased} & in_main
    assert type(method.biased) is type(method.backbone) and method.biased is not method.backbone
    before = {k: v.clone() for k, v in method.state_dict().items()}
    trainer.fit()
    after = method.state_dict()
    for prefix in ("backbone.", "projector.", "biased.", "biased_projector."):
        assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith(prefix)), prefix
    steps = [r for r in records(tmp_path) if "loss" in r]
    assert all(r["lr/biased"] == pytest.approx(10 * r["lr"]) for r in steps)
    assert all(r["skipped_steps"] == 0 and 1 <= r["mean_weight"] < 2 for r in steps)
    assert all(r["loss"] == pytest.approx(r["main_loss"] + r["biased_loss"], rel=1e-5) for r in steps)


def test_difficulty_resumes_exactly(tmp_path, monkeypatch):
    a, _ = resumed_like_uninterrupted(tiny_config("method.loss=difficulty", "train.epochs=3"), tmp_path, monkeypatch)
    assert a["step"] == 12 and set(a["optimizers"]) == {MAIN, "biased"}


def test_a_batch_whose_main_loss_is_not_finite_is_skipped_and_counted(tmp_path, monkeypatch):
    """As the official code: no update of either encoder for that batch, training goes on."""
    original = simclr_module.debiased_info_nce
    calls = []

    def nan_at_third_call(*args, **kwargs):
        calls.append(1)
        value = original(*args, **kwargs)
        return value * float("nan") if len(calls) == 3 else value

    monkeypatch.setattr(simclr_module, "debiased_info_nce", nan_at_third_call)
    cfg = tiny_config("method.loss=difficulty", "train.epochs=1")
    trainer = Trainer(cfg, tmp_path, init_distributed("cpu"))
    states = []
    original_step = Trainer._step

    def recording_step(self, batch, generator):
        out = original_step(self, batch, generator)
        states.append({k: v.detach().clone() for k, v in self.method.named_parameters()})  # BN stats move in forward
        return out

    monkeypatch.setattr(Trainer, "_step", recording_step)
    trainer.fit()
    steps = [r for r in records(tmp_path) if "loss" in r]
    assert [r["skipped_steps"] for r in steps] == [0, 0, 1, 0]
    assert all(torch.equal(states[1][k], states[2][k]) for k in states[1])  # step 3 changed nothing
    assert any(not torch.equal(states[2][k], states[3][k]) for k in states[2])  # step 4 trained again
    assert trainer.step == 4


def test_the_decoupled_loss_composes_with_moco_and_multicrop(tmp_path):
    cfg = tiny_config("method.name=moco", "method.loss=decoupled", "method.vmf_sigma=0.5",
                      "method.queue_size=128", "train.epochs=1")
    Trainer(cfg, tmp_path / "moco", init_distributed("cpu")).fit()
    assert len(losses(tmp_path / "moco")) == 4
    cfg = tiny_config("method.loss=decoupled", "train.epochs=1",
                      "augment.views=[{count: 2, size: 8, transforms: [{name: crop}]}, "
                      "{count: 2, size: 6, transforms: [{name: crop}]}]")
    Trainer(cfg, tmp_path / "multicrop", init_distributed("cpu")).fit()
    assert all(torch.isfinite(torch.tensor(v)) for v in losses(tmp_path / "multicrop").values())
