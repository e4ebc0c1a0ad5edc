"""GraphCL (You et al., NeurIPS 2020): graph contrastive learning between a graph and its
augmented view; with controllability-preserving views (``control_edges``), the control-based
graph contrastive learning of Ahmad et al. (ACC 2024; our reconstruction, see
:mod:`contrastlab.data.graph_control`).

``method.objective``:

- ``original_vs_view`` (the default; GraphCL's official TU code, spec additions A12/G.2): the
  first view is the anchor (the graph as stored in the default views), the second its
  augmentation; one direction, the positive left out of the denominator, the other graphs'
  augmented views as the only negatives:
  ``L = mean_i -cos(u_i, v_i)/t + log sum_{j != i} e^{cos(u_i, v_j)/t}``;
- ``two_views`` (the paper's form): symmetric NT-Xent between two augmented views with the
  ``2B - 2`` other embeddings of the batch as negatives.

The projection head is ``Linear -> ReLU -> Linear`` at the backbone's width unless
``proj_hidden_dim``/``proj_out_dim`` are set. Each view goes through the encoder on its own (its
own BatchNorm statistics), as in the official code. The share of each view's augmentation budget
that could be spent (``view<k>_applied``: operations applied / requested, e.g. fewer admissible
controllability-preserving edges) is logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from contrastlab.components.heads import MLPHead
from contrastlab.core.config import MethodConfig
from contrastlab.losses import cross_view_pairs, decoupled_info_nce, nt_xent
from contrastlab.methods.base import Method, StepInput
from contrastlab.methods.registry import METHODS


@dataclass
class GraphCLConfig(MethodConfig):
    RANGES: ClassVar[dict[str, str]] = {"temperature": "> 0"}

    proj_hidden_dim: int | None = None  # None: the backbone's width (GraphCL: 96)
    proj_out_dim: int | None = None  # None: the backbone's width
    temperature: float = 0.2  # t of the contrastive loss
    objective: Literal["original_vs_view", "two_views"] = "original_vs_view"  # official TU form, or the paper's NT-Xent of two views


@METHODS.register("graphcl", "GraphCL: a graph against its augmented view (You et al., 2020); control-based views: CGCL")
class GraphCL(Method):
    Config = GraphCLConfig

    def __init__(self, cfg: GraphCLConfig, backbone: nn.Module) -> None:
        super().__init__(cfg, backbone)
        width = backbone.out_dim
        self.projector = MLPHead(width, cfg.proj_hidden_dim or width, cfg.proj_out_dim or width,
                                 num_layers=cfg.proj_layers)

    def training_step(self, step: StepInput) -> dict[str, torch.Tensor]:
        h, z = self.project_views(step)
        if self.cfg.objective == "original_vs_view":
            loss = decoupled_info_nce(*cross_view_pairs(z[0], z[1]), self.cfg.temperature)
        else:
            loss = nt_xent(z[0], z[1], self.cfg.temperature)
        out = {"loss": loss, "features": h[0].detach()}
        if "view_ops" in step.batch:  # (B, V, 2): operations requested and applied per view
            requested, applied = step.batch["view_ops"].sum(0).unbind(-1)
            for k in range(len(requested)):
                if requested[k] > 0:
                    out[f"view{k}_applied"] = applied[k] / requested[k]
        return out
