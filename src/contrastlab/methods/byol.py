"""BYOL (Grill et al., 2020): predict an EMA target network's projection of the other view.

``method.symmetric: false`` makes the pair one-way, for a weak teacher view and a strong student
view (as ISD or FixMatch-style pipelines do): the target network sees view 0 only, the online
network predicts it from view 1 only, and the loss is the one term ``byol_loss(p_1, t_0)`` (the
symmetric loss is the sum of both directions, so about twice as large).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from contrastlab.components.heads import MLPHead
from contrastlab.components.momentum import EMATeacher, cosine_momentum
from contrastlab.core.config import MethodConfig
from contrastlab.losses import byol_loss
from contrastlab.methods.base import WITH_EMA_TEACHER, Method, StepInput
from contrastlab.methods.registry import METHODS


@dataclass
class BYOLConfig(MethodConfig):
    RANGES: ClassVar[dict[str, str]] = {"pred_hidden_dim": ">= 1", "base_momentum": "in [0, 1]",
                                        "final_momentum": "in [0, 1]"}

    proj_hidden_dim: int = 4096
    proj_out_dim: int = 256
    pred_hidden_dim: int = 4096  # predictor: hidden width
    base_momentum: float = 0.996  # cosine schedule from base to final over training
    final_momentum: float = 1.0  # the EMA momentum at the end of training (cosine from base_momentum)
    symmetric: bool = True  # false: teacher on view 0 (weak), student on view 1 (strong)


@METHODS.register("byol", "BYOL: predictor + EMA target, symmetric cosine loss (Grill et al., 2020)")
class BYOL(Method):
    Config = BYOLConfig
    EVAL_ENCODERS = WITH_EMA_TEACHER

    def __init__(self, cfg: BYOLConfig, backbone: nn.Module) -> None:
        super().__init__(cfg, backbone)
        self.projector = self.make_projector()
        self.predictor = MLPHead(cfg.proj_out_dim, cfg.pred_hidden_dim, cfg.proj_out_dim)
        self.teacher = EMATeacher(self.backbone, self.projector)

    def training_step(self, step: StepInput) -> dict[str, torch.Tensor]:
        """``features``: the online backbone's output on view 0, or on view 1 (the only view it
        sees) when not ``symmetric``."""
        x1, x2 = step.views
        if not self.cfg.symmetric:
            h = self.backbone(x2)
            loss = byol_loss(self.predictor(self.projector(h)), self.teacher(x1))
            return {"loss": loss, "features": h.detach()}
        both = torch.cat([x1, x2])
        h = self.backbone(both)
        p1, p2 = self.predictor(self.projector(h)).chunk(2)
        t1, t2 = self.teacher(both).chunk(2)
        loss = byol_loss(p1, t2) + byol_loss(p2, t1)
        return {"loss": loss, "features": h[: x1.shape[0]].detach()}

    def on_after_optimizer_step(self, progress: float) -> None:
        momentum = cosine_momentum(self.cfg.base_momentum, self.cfg.final_momentum, progress)
        self.teacher.update(momentum, self.backbone, self.projector)
