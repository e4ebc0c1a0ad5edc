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
from contrastlab.methods.base import StepInput
from contrastlab.methods.moco import MoCo, MoCoConfig
from contrastlab.methods.simclr import SimCLRConfig
from contrastlab.recipes import load_config
from test_losses_negatives import F64, loop_difficulty_weights, reference_weighted_dcl
from test_trainer import losses, resumed_like_uninterrupted, tiny_config


MOCO = ["method.name=moco", "method.queue_size=96"]


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


def test_moco_rejects_mmcl_at_load_and_takes_the_other_negative_options():
    with pytest.raises(ConfigError, match="method.queue_size=4096 keys the closed form needs a Gram tensor of "
                                          "batch x 4096 x 4096"):
        load_config(overrides=["method.name=moco", "method.loss=mmcl", "method.queue_size=4096"])
    load_config(overrides=["method.name=moco", "method.loss=decoupled", "method.vmf_sigma=0.5"])  # composes
    load_config(overrides=["method.name=moco", "method.loss=difficulty"])
    load_config(overrides=["method.name=halp", "method.loss=difficulty"])


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


@pytest.mark.parametrize("method", [[], MOCO], ids=["simclr", "moco"])
def test_difficulty_trains_a_biased_encoder_with_its_own_optimiser(tmp_path, method):
    cfg = tiny_config("method.loss=difficulty", "train.epochs=2", "method.biased_lr_scale=10", *method)
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


@pytest.mark.parametrize("method", [[], MOCO + ["method.symmetric=true"]], ids=["simclr", "moco"])
def test_difficulty_resumes_exactly(tmp_path, monkeypatch, method):
    cfg = tiny_config("method.loss=difficulty", "train.epochs=3", *method)
    a, _ = resumed_like_uninterrupted(cfg, tmp_path, monkeypatch)
    assert a["step"] == 12 and set(a["optimizers"]) == {MAIN, "biased"}
    if method:  # the biased queue is checkpointed and was filled
        assert int(a["method"]["biased_queue.pointer"]) == int(a["method"]["queue.pointer"]) == (12 * 128) % 96


@pytest.mark.parametrize("method", [[], MOCO], ids=["simclr", "moco"])
def test_a_batch_whose_main_loss_is_not_finite_is_skipped_and_counted(tmp_path, monkeypatch, method):
    """As the official code: no update of either encoder for that batch, training goes on."""
    original = simclr_module.debiased_info_nce
    calls = []

    def nan_at_third_call(*args, **kwargs):
        calls.append(1)
        value = original(*args, **kwargs)
        return value * float("nan") if len(calls) == 3 else value

    monkeypatch.setattr(simclr_module, "debiased_info_nce", nan_at_third_call)
    cfg = tiny_config("method.loss=difficulty", "train.epochs=1", *method)
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


# ------------------------------------------------------------------ MoCo with difficulty weights
class FlatEncoder(torch.nn.Module):
    out_dim = 6

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(12, self.out_dim)

    def forward(self, x):
        return self.linear(x.flatten(1))


def unit_rows(x):
    return [row / row.norm() for row in x]


def loop_queue_difficulty(q, k, queue, bq, bk, biased_queue, t, tau_plus):
    """One query-key pair of MoCo with difficulty weights, one anchor at a time: the weighted DCL
    of the main cosines over the queue, plus the biased encoder's triplet loss on squared
    distances to its own queue (``D = |u - v|^2`` of unit vectors)."""
    q, bq, bk = unit_rows(q), unit_rows(bq), unit_rows(bk)
    k = unit_rows(k.detach())
    pos = torch.stack([q[a] @ k[a] for a in range(len(q))])
    neg = torch.stack([torch.stack([q[a] @ key for key in queue]) for a in range(len(q))])
    neg_b = torch.stack([torch.stack([bq[a] @ key for key in biased_queue]) for a in range(len(q))])
    weights = loop_difficulty_weights(neg.detach(), neg_b.detach(), t)
    main, _ = reference_weighted_dcl(pos, neg, weights, t, tau_plus)
    triplet = 0
    for a in range(len(q)):
        d_pos = ((bq[a] - bk[a]) ** 2).sum()
        d_neg = [((bq[a] - key) ** 2).sum() for key in biased_queue]
        triplet = triplet + d_pos - (sum(d_neg) - tau_plus * len(d_neg) * d_pos) / (1 - tau_plus)
    return main, triplet / len(q)


@pytest.mark.parametrize("symmetric", [False, True])
def test_moco_difficulty_loss_matches_the_loop_and_fills_both_queues_in_step(symmetric):
    torch.manual_seed(0)
    cfg = MoCoConfig(loss="difficulty", queue_size=13, bn_guard="none", temperature=0.5, tau_plus=0.1,
                     proj_hidden_dim=8, proj_out_dim=4, symmetric=symmetric)
    method = MoCo(cfg, FlatEncoder())
    method.build_encoders(FlatEncoder)
    method.double()
    for q in (method.queue, method.biased_queue):  # unit rows in float64 (the buffers were made in float32)
        q.features.copy_(torch.nn.functional.normalize(q.features, dim=1))
    x1, x2 = torch.randn(5, 3, 2, 2, dtype=F64), torch.randn(5, 3, 2, 2, dtype=F64)
    queue, biased_queue = method.queue.features.clone(), method.biased_queue.features.clone()
    out = method.training_step(StepInput(views=[x1, x2], generator=torch.Generator()))

    views = [x1, x2] if symmetric else [x1]
    queries = method.projector(method.backbone(torch.cat(views))).chunk(len(views))
    with torch.no_grad():
        keys = [method.teacher.module(x) for x in ([x2, x1] if symmetric else [x2])]
    b1, b2 = method.biased_projector(method.biased(torch.cat([x1, x2]))).chunk(2)
    biased = [(b1, b2), (b2, b1)][: len(views)]
    terms = [loop_queue_difficulty(q, k, queue, bq, bk, biased_queue, 0.5, 0.1)
             for q, k, (bq, bk) in zip(queries, keys, biased)]
    main = sum(m for m, _ in terms) / len(terms)
    triplet = sum(t for _, t in terms) / len(terms)
    torch.testing.assert_close(out["main_loss"], main.detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(out["biased_loss"], triplet.detach(), rtol=0, atol=1e-10)
    params = [p for p in method.parameters() if p.requires_grad]
    ours = torch.autograd.grad(out["loss"], params, allow_unused=True)
    ref = torch.autograd.grad(main + triplet, params, allow_unused=True)
    assert any(g is not None for g in ours)
    for a, b in zip(ours, ref):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    assert not out["skip_step"]

    method.on_after_optimizer_step(0.0)  # both queues take this step's keys, at the same positions
    n = 5 * len(views)
    enqueued = torch.nn.functional.normalize(torch.cat([bk for _, bk in biased]).detach(), dim=1)
    torch.testing.assert_close(method.biased_queue.features[:n], enqueued, rtol=0, atol=1e-12)
    torch.testing.assert_close(method.biased_queue.features[n:], biased_queue[n:], rtol=0, atol=0)
    assert int(method.biased_queue.pointer) == int(method.queue.pointer) == n
