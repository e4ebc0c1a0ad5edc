"""SimCLR (Chen et al., 2020): NT-Xent between the projections of two views.

``method.loss`` switches the contrastive loss to DCL or HCL on the same batch negatives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from contrastlab.core.config import MethodConfig
from contrastlab.losses import nt_xent
from contrastlab.methods.base import Method, StepInput
from contrastlab.methods.registry import METHODS


@dataclass
class ContrastiveConfig(MethodConfig):
    """Fields of methods with an InfoNCE-family loss (SimCLR, MoCo)."""

    temperature: float = 0.5
    loss: Literal["infonce", "dcl", "hcl"] = "infonce"
    tau_plus: float = 0.1  # DCL/HCL class prior
    beta: float = 1.0  # HCL concentration (0 = DCL)

    def loss_options(self) -> dict:
        return {"kind": self.loss, "tau_plus": self.tau_plus, "beta": self.beta}


@dataclass
class SimCLRConfig(ContrastiveConfig):
    pass


@METHODS.register("simclr", "SimCLR: NT-Xent (or DCL/HCL) between two augmented views (Chen et al., 2020)")
class SimCLR(Method):
    Config = SimCLRConfig

    def __init__(self, cfg: SimCLRConfig, backbone: torch.nn.Module) -> None:
        super().__init__(cfg, backbone)
        if cfg.temperature <= 0:
            raise ValueError(f"method.temperature must be > 0, got {cfg.temperature}")
        self.projector = self.make_projector()

    def training_step(self, step: StepInput) -> dict[str, torch.Tensor]:
        h, z1, z2 = self.project_views(step)
        loss = nt_xent(z1, z2, self.cfg.temperature, **self.cfg.loss_options())
        return {"loss": loss, "features": h[: z1.shape[0]].detach()}
