"""Each method end to end on tiny data, and what its extra state does during training."""

import pytest
import torch

from contrastlab.engine.distributed import init_distributed
from contrastlab.engine.trainer import Trainer
from contrastlab.losses import barlow_twins_loss, contrastive_loss, queue_pairs
from contrastlab.methods import METHODS
from contrastlab.methods.barlow_twins import BarlowTwins, BarlowTwinsConfig
from contrastlab.methods.base import StepInput
from contrastlab.models import build_backbone
from test_trainer import METHOD_OVERRIDES, tiny_config


def test_every_registered_method_has_a_resume_test():
    assert set(METHODS.names()) == set(METHOD_OVERRIDES)


@pytest.mark.parametrize("method", list(METHOD_OVERRIDES))
def test_method_trains_and_moves_its_weights(tmp_path, method):
    trainer = Trainer(tiny_config("train.epochs=1", *METHOD_OVERRIDES[method]), tmp_path, init_distributed("cpu"))
    before = {k: v.clone() for k, v in trainer.method.state_dict().items()}
    trainer.fit()
    after = trainer.method.state_dict()
    changed = [k for k in before if k.startswith("backbone.") and not torch.equal(before[k], after[k])]
    assert changed, "no backbone weight changed"
    losses = [r["loss"] for r in trainer.logger.records if "loss" in r]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize("method", ["moco", "byol"])
def test_teacher_follows_the_student_slowly(tmp_path, method):
    trainer = Trainer(tiny_config("train.epochs=1", *METHOD_OVERRIDES[method]), tmp_path, init_distributed("cpu"))
    m = trainer.method
    teacher0 = [p.clone() for p in m.teacher.parameters()]
    student0 = [p.clone() for p in list(m.backbone.parameters()) + list(m.projector.parameters())]
    assert all(torch.equal(t, s) for t, s in zip(teacher0, student0))  # teacher starts as a copy
    trainer.fit()
    student = list(m.backbone.parameters()) + list(m.projector.parameters())
    moved = sum((t - t0).norm() for t, t0 in zip(m.teacher.parameters(), teacher0))
    student_moved = sum((s - s0).norm() for s, s0 in zip(student, student0))
    assert 0 < moved < student_moved
    assert all(not p.requires_grad for p in m.teacher.parameters())


def test_moco_enqueues_the_keys_it_contrasted_against(tmp_path):
    cfg = tiny_config("train.epochs=1", "method.name=moco", "method.queue_size=100", "method.bn_guard=none")
    trainer = Trainer(cfg, tmp_path, init_distributed("cpu"))
    moco = trainer.method
    views = [torch.randn(8, 1, 8, 8), torch.randn(8, 1, 8, 8)]
    from contrastlab.methods.base import StepInput

    queue_before = moco.queue.features.clone()
    out = moco.training_step(StepInput(views, generator=torch.Generator()))
    q = moco.projector(moco.backbone(views[0]))
    k = moco.teacher(views[1])
    expected = contrastive_loss(*queue_pairs(q, k, queue_before), cfg.method.temperature)
    assert torch.allclose(out["loss"], expected, atol=1e-5)
    assert torch.equal(moco.queue.features, queue_before)  # nothing enqueued before the optimiser step
    moco.on_after_optimizer_step(0.5)
    assert torch.allclose(moco.queue.features[:8], torch.nn.functional.normalize(k, dim=1), atol=1e-6)
    assert int(moco.queue.pointer) == 8


def test_moco_queue_longer_than_the_training_set_is_capped_with_a_warning(tmp_path):
    cfg = tiny_config("train.epochs=1", "method.name=moco", "method.queue_size=1000")  # 256 training images
    with pytest.warns(UserWarning, match="method.queue_size=1000 is larger than the 256 training samples"):
        trainer = Trainer(cfg, tmp_path, init_distributed("cpu"))
    assert trainer.method.queue.features.shape[0] == 256 and cfg.method.queue_size == 256
    cfg = tiny_config("train.epochs=1", "method.name=moco", "method.queue_size=200")
    assert Trainer(cfg, tmp_path / "short", init_distributed("cpu")).method.queue.features.shape[0] == 200
    cfg = tiny_config("train.epochs=1", "method.name=moco", "method.queue_size=256")
    with pytest.warns(UserWarning, match="method.queue_size=256 equals the 256 training samples"):
        Trainer(cfg, tmp_path / "equal", init_distributed("cpu")).close()


def test_barlow_twins_scale_loss_multiplies_the_loss():
    torch.manual_seed(0)
    cfg = BarlowTwinsConfig(proj_hidden_dim=16, proj_out_dim=8, proj_layers=2, scale_loss=0.1)
    method = BarlowTwins(cfg, build_backbone("mlp", (1, 4, 4), hidden=(8,)))
    views = [torch.randn(6, 1, 4, 4), torch.randn(6, 1, 4, 4)]
    _, (z1, z2) = method.project_views(StepInput(views))
    expected = 0.1 * barlow_twins_loss(z1, z2, cfg.lambd)
    torch.testing.assert_close(method.training_step(StepInput(views))["loss"], expected)
    with pytest.raises(ValueError, match="scale_loss"):
        BarlowTwins(BarlowTwinsConfig(scale_loss=0.0), build_backbone("mlp", (1, 4, 4), hidden=(8,)))
