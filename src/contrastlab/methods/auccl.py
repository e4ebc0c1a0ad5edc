"""AUC-CL (Sharma, Ji, Xu, Chen; ICLR 2024): SimCLR's two views and projector with the loss of
:mod:`contrastlab.losses.auc`, its scalars ``a``, ``b`` and dual ``alpha`` held by the method
and trained by a parameter group of their own (``auc``, see :meth:`AUCCL.parameter_groups`).
Negatives are this process's own batch, as in the official code (no gathering across ranks).

``mode: paper`` (our reading of the paper's objective): ``a``, ``b`` learned by descent, ``alpha``
by projected ascent (its gradient reversed, then clamped at 0 after every step), margin
``method.margin``, the negative term a mean over each anchor's negatives. ``mode: official`` (the
CIFAR code): ``a = 10`` and ``alpha = 1`` fixed, ``b`` learned in the main optimiser's settings
(the code adds it to its AdamW), the positive's score shifted by the code's built-in margin, the
own positive view among the negatives, a sum over them. The official ImageNet form (DINO
teacher/student heads, centring, 2 x 10 multi-crop pairs, a 32/N negative weight) is not
implemented.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from contrastlab.core.config import MethodConfig, OptimConfig
from contrastlab.losses import ascent, auc_loss, auc_pairs
from contrastlab.methods.base import Method, ParameterGroup, StepInput
from contrastlab.methods.registry import METHODS

OFFICIAL_A, OFFICIAL_ALPHA = 10.0, 1.0


@dataclass
class AUCCLConfig(MethodConfig):
    RANGES: ClassVar[dict[str, str]] = {"margin": ">= 0", "auc_lr": "> 0", "init_alpha": ">= 0"}

    mode: Literal["paper", "official"] = "paper"  # paper: a, b, alpha learned; official: the CIFAR code's a = 10, alpha = 1
    margin: float = 1.0  # paper: m (scores lie in [0, 1])
    auc_lr: float = 0.01  # paper: the learning rate of a, b and alpha
    init_a: float = 1.0  # paper: the positives' score mean starts at 1 ...
    init_b: float = 0.0  # ... the negatives' at 0 (official: b starts at 0 too)
    init_alpha: float = 1.0  # the dual alpha's starting value


@METHODS.register("auccl", "AUC-CL: a square-loss AUC surrogate on pair scores, batch-size robust (Sharma et al., 2024)")
class AUCCL(Method):
    Config = AUCCLConfig

    def __init__(self, cfg: AUCCLConfig, backbone: nn.Module) -> None:
        super().__init__(cfg, backbone)
        self.projector = self.make_projector()
        self.b = nn.Parameter(torch.tensor(cfg.init_b))
        if cfg.mode == "paper":
            self.a = nn.Parameter(torch.tensor(cfg.init_a))
            self.alpha = nn.Parameter(torch.tensor(cfg.init_alpha))

    def auc_parameters(self) -> list[nn.Parameter]:
        return [self.a, self.b, self.alpha] if self.cfg.mode == "paper" else [self.b]

    def parameter_groups(self, optim: OptimConfig) -> list[ParameterGroup]:
        """``a, b, alpha`` (paper) at ``auc_lr``, constant, no weight decay; ``b`` (official) in the
        main optimiser's settings. LARS becomes SGD for these scalars (a layer-wise trust ratio
        means nothing for one number)."""
        kind = "sgd" if optim.name == "lars" else optim.name
        if self.cfg.mode == "official":
            return [ParameterGroup("auc", self.auc_parameters(), dataclasses.replace(optim, name=kind))]
        settings = dataclasses.replace(optim, name=kind, lr=self.cfg.auc_lr, weight_decay=0.0, schedule="constant",
                                       warmup_epochs=0.0, grad_clip=None)
        return [ParameterGroup("auc", self.auc_parameters(), settings)]

    def training_step(self, step: StepInput) -> dict[str, torch.Tensor]:
        """The loss of both views' 2B embeddings; logs ``a``, ``b``, ``alpha`` and the mean
        positive and negative scores."""
        (h1, _), (z1, z2) = self.project_views(step)
        with torch.autocast(z1.device.type, enabled=False):
            pos, neg = auc_pairs(z1, z2, self.cfg.mode)
            if self.cfg.mode == "paper":
                a, alpha = self.a, self.alpha
                loss = auc_loss(pos, neg, a, self.b, ascent(alpha), self.cfg.margin, 1.0 / neg.shape[1])
            else:
                a, alpha = torch.tensor(OFFICIAL_A), torch.tensor(OFFICIAL_ALPHA)
                loss = auc_loss(pos, neg, OFFICIAL_A, self.b, OFFICIAL_ALPHA, None, 1.0, -float(pos.shape[0]))
        return {"loss": loss, "features": h1.detach(), "a": a.detach(), "b": self.b.detach(),
                "alpha": alpha.detach(), "positive_score": pos.detach().mean(), "negative_score": neg.detach().mean()}

    def on_after_optimizer_step(self, progress: float) -> None:
        """Projected ascent: ``alpha`` back onto ``[0, inf)``."""
        if self.cfg.mode == "paper":
            with torch.no_grad():
                self.alpha.clamp_(min=0.0)
