"""SimCLR (Chen et al., 2020): NT-Xent between the projections of two views, or of global and
local crops (multi-crop).

``method.loss`` switches the contrastive loss to DCL or HCL on the same batch negatives.

Multi-crop (our reading, in the style of SwAV's multi-crop, Caron et al., 2020): with N > 2
views, the first ``method.num_global`` views are the global ones; the loss averages NT-Xent over
the pairs ``(g, v)`` of a global view ``g`` and every other view ``v != g`` (local crops are
never paired with each other). NT-Xent is symmetric in its two views, so ``(g, v)`` and
``(v, g)`` with both global give the same value; ``method.pairs`` says how such pairs count:
``ordered`` (the default, SwAV's "for each global view, every other view": a global-global pair
weighs twice a global-local one) or ``unordered`` (every pair of views once). With two views
both readings are the single NT-Xent of SimCLR.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from contrastlab.core.config import MethodConfig
from contrastlab.losses import nt_xent
from contrastlab.methods.base import Method, StepInput
from contrastlab.methods.registry import METHODS


@dataclass
class ContrastiveConfig(MethodConfig):
    """Fields of methods with an InfoNCE-family loss (SimCLR, MoCo)."""

    RANGES: ClassVar[dict[str, str]] = {"temperature": "> 0", "tau_plus": "in [0, 1)", "beta": ">= 0"}

    temperature: float = 0.5
    loss: Literal["infonce", "dcl", "hcl"] = "infonce"
    tau_plus: float = 0.1  # DCL/HCL class prior
    beta: float = 1.0  # HCL concentration (0 = DCL)

    def loss_options(self) -> dict:
        return {"kind": self.loss, "tau_plus": self.tau_plus, "beta": self.beta}


@dataclass
class SimCLRConfig(ContrastiveConfig):
    RANGES: ClassVar[dict[str, str]] = {"num_global": ">= 1"}

    num_global: int = 2  # multi-crop: the first num_global views are global (see the module docstring)
    pairs: Literal["ordered", "unordered"] = "ordered"  # how a pair of two global views counts


def multicrop_pairs(num_views: int, num_global: int, ordered: bool) -> list[tuple[int, int, int]]:
    """``(a, b, weight)`` for each unordered pair of views ``a < b`` with ``a`` global
    (``a < num_global``): weight 2 when both are global and ``ordered``, else 1."""
    return [(a, b, 2 if ordered and b < num_global else 1)
            for a in range(min(num_global, num_views)) for b in range(a + 1, num_views)]


@METHODS.register("simclr", "SimCLR: NT-Xent (or DCL/HCL) between two augmented views (Chen et al., 2020)")
class SimCLR(Method):
    Config = SimCLRConfig
    mixed_view_sizes = True  # project_views batches each size on its own

    def __init__(self, cfg: SimCLRConfig, backbone: torch.nn.Module) -> None:
        super().__init__(cfg, backbone)
        self.projector = self.make_projector()

    @classmethod
    def accepted_views(cls, cfg: SimCLRConfig) -> tuple[int, int | None]:
        """At least two views and at least ``num_global``; no upper bound."""
        return max(2, cfg.num_global), None

    def training_step(self, step: StepInput) -> dict[str, torch.Tensor]:
        """Two views: NT-Xent between them. N views: the weighted mean of NT-Xent over
        :func:`multicrop_pairs` (see the module docstring). ``features``: view 0's backbone output."""
        low, _ = self.accepted_views(self.cfg)
        if len(step.views) < low:
            raise ValueError(f"SimCLR with num_global={self.cfg.num_global} needs at least {low} views, "
                             f"got {len(step.views)}")
        h, z = self.project_views(step)
        pairs = multicrop_pairs(len(z), self.cfg.num_global, self.cfg.pairs == "ordered")
        total = sum(w * nt_xent(z[a], z[b], self.cfg.temperature, **self.cfg.loss_options()) for a, b, w in pairs)
        return {"loss": total / sum(w for _, _, w in pairs), "features": h[0].detach()}
