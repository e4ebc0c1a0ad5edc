"""Methods that build a second encoder and own parameter groups with optimisers of their own:
the trainer builds, steps, schedules, checkpoints and resumes them exactly."""

import dataclasses
import json
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from contrastlab.components.heads import MLPHead
from contrastlab.engine import checkpoint as ckpt
from contrastlab.engine.distributed import init_distributed
from contrastlab.engine.trainer import MAIN, Trainer
from contrastlab.losses import nt_xent
from contrastlab.methods import METHODS
from contrastlab.methods.base import Method, ParameterGroup, StepInput
from contrastlab.methods.simclr import SimCLRConfig
from test_trainer import losses, resumed_like_uninterrupted, tiny_config


@dataclass
class TwoEncodersConfig(SimCLRConfig):
    second_lr: float = 0.2  # the second encoder's SGD, constant
    scale_lr: float = 0.01  # the trainer-owned temperature scale's Adam


class TwoEncoders(Method):
    """SimCLR on the backbone, plus a second encoder with its own projector and NT-Xent, trained
    by its own SGD at a constant rate, and a learnable log-temperature trained by its own Adam."""

    Config = TwoEncodersConfig

    def __init__(self, cfg: TwoEncodersConfig, backbone: nn.Module) -> None:
        super().__init__(cfg, backbone)
        self.projector = self.make_projector()
        self.log_scale = nn.Parameter(torch.zeros(()))

    def build_encoders(self, build_encoder) -> None:  # noqa: ANN001
        self.second = build_encoder()
        self.second_projector = MLPHead(self.second.out_dim, 32, 16, num_layers=2)

    def parameter_groups(self, optim):  # noqa: ANN001, ANN201
        constant = dataclasses.replace(optim, name="sgd", lr=self.cfg.second_lr, schedule="constant",
                                       warmup_epochs=0.0, weight_decay=0.0)
        adam = dataclasses.replace(optim, name="adam", lr=self.cfg.scale_lr, schedule="constant",
                                   warmup_epochs=0.0, weight_decay=0.0)
        second = list(self.second.parameters()) + list(self.second_projector.parameters())
        return [ParameterGroup("second", second, constant), ParameterGroup("scale", [self.log_scale], adam)]

    def training_step(self, step: StepInput) -> dict[str, torch.Tensor]:
        (h1, _), (z1, z2) = self.project_views(step)
        temperature = self.cfg.temperature * self.log_scale.exp()
        loss = nt_xent(z1, z2, temperature)
        x1, x2 = step.views
        s1, s2 = self.second_projector(self.second(torch.cat([x1, x2]))).chunk(2)
        second_loss = nt_xent(s1, s2, self.cfg.temperature)
        return {"loss": loss + second_loss, "features": h1.detach(), "second_loss": second_loss}


@pytest.fixture
def two_encoders(monkeypatch):
    monkeypatch.setitem(METHODS._entries, "two_encoders", (TwoEncoders, "test: a second encoder"))


def test_the_trainer_builds_steps_and_schedules_each_group(tmp_path, two_encoders):
    cfg = tiny_config("method.name=two_encoders", "train.epochs=2")
    trainer = Trainer(cfg, tmp_path, init_distributed("cpu"))
    method = trainer.method
    assert list(trainer.optimizers) == [MAIN, "second", "scale"]
    assert isinstance(trainer.optimizers["second"][0], torch.optim.SGD)
    assert isinstance(trainer.optimizers["scale"][0], torch.optim.Adam)
    in_main = {id(p) for group in trainer.optimizers[MAIN][0].param_groups for p in group["params"]}
    second = {id(p) for p in list(method.second.parameters()) + list(method.second_projector.parameters())}
    assert second and not second & in_main and id(method.log_scale) not in in_main
    assert {id(p) for p in method.backbone.parameters()} <= in_main
    # the second encoder is a new backbone of the configured kind, initialised independently
    assert type(method.second) is type(method.backbone)
    assert not torch.equal(next(method.second.parameters()), next(method.backbone.parameters()))
    before = {k: v.clone() for k, v in method.state_dict().items()}
    trainer.fit()
    after = method.state_dict()
    for prefix in ("second.", "second_projector.", "backbone.", "log_scale"):
        assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith(prefix)), prefix
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert all(r["lr/second"] == pytest.approx(0.2) and r["lr/scale"] == pytest.approx(0.01) for r in steps)
    assert len({round(r["lr"], 8) for r in steps}) > 2  # the main lr follows its warm-up + cosine
    assert set(ckpt.load_checkpoint(tmp_path)["optimizers"]) == {MAIN, "second", "scale"}


def test_a_method_with_a_second_encoder_resumes_exactly(tmp_path, monkeypatch, two_encoders):
    a, b = resumed_like_uninterrupted(tiny_config("method.name=two_encoders", "train.epochs=3"), tmp_path, monkeypatch)
    assert a["step"] == 12
    moments = [s["exp_avg"] for s in a["optimizers"]["scale"]["state"].values()]
    assert moments and all(torch.equal(x, y["exp_avg"]) for x, y in zip(moments, b["optimizers"]["scale"]["state"].values()))


def test_parameter_groups_must_be_disjoint_and_named_uniquely(tmp_path, monkeypatch, two_encoders):
    def overlapping(self, optim):
        return [ParameterGroup("a", [self.log_scale], optim), ParameterGroup("b", [self.log_scale], optim)]

    monkeypatch.setattr(TwoEncoders, "parameter_groups", overlapping)
    with pytest.raises(ValueError, match="a parameter is in two parameter groups"):
        Trainer(tiny_config("method.name=two_encoders"), tmp_path, init_distributed("cpu"))
    monkeypatch.setattr(TwoEncoders, "parameter_groups", lambda self, optim: [ParameterGroup(MAIN, [], optim)])
    with pytest.raises(ValueError, match="names must be unique and not 'main'"):
        Trainer(tiny_config("method.name=two_encoders"), tmp_path, init_distributed("cpu"))
