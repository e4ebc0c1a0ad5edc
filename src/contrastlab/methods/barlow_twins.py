"""Barlow Twins (Zbontar et al., 2021): cross-correlation of the two views' embeddings -> identity."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from contrastlab.core.config import MethodConfig
from contrastlab.losses import barlow_twins_loss
from contrastlab.methods.base import Method, StepInput
from contrastlab.methods.registry import METHODS


@dataclass
class BarlowTwinsConfig(MethodConfig):
    proj_hidden_dim: int = 2048
    proj_out_dim: int = 2048
    proj_layers: int = 3
    lambd: float = 0.0051  # weight of the off-diagonal terms
    scale_loss: float = 1.0  # multiplies the loss (solo-learn's CIFAR recipes: 0.1); it sets the
    # step size of the parameters that LARS does not adapt (biases, norms), which the paper
    # instead gives their own small learning rate


@METHODS.register("barlow_twins", "Barlow Twins: cross-correlation towards the identity (Zbontar et al., 2021)")
class BarlowTwins(Method):
    Config = BarlowTwinsConfig

    def __init__(self, cfg: BarlowTwinsConfig, backbone: nn.Module) -> None:
        super().__init__(cfg, backbone)
        if cfg.lambd < 0:
            raise ValueError(f"method.lambd must be >= 0, got {cfg.lambd}")
        if cfg.scale_loss <= 0:
            raise ValueError(f"method.scale_loss must be > 0, got {cfg.scale_loss}")
        self.projector = self.make_projector()

    def training_step(self, step: StepInput) -> dict[str, torch.Tensor]:
        (h1, _), (z1, z2) = self.project_views(step)
        loss = self.cfg.scale_loss * barlow_twins_loss(z1, z2, self.cfg.lambd)
        return {"loss": loss, "features": h1.detach()}
