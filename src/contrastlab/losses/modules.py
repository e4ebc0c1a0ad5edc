"""The batch losses as ``nn.Module``s, for use in one's own training loop.

Each module holds its options as constructor arguments (the defaults of the function it calls)
and its ``forward`` calls the loss function of this package, so ``NTXentLoss()(z1, z2)`` equals
``nt_xent(z1, z2)``. Losses that need state across steps (a queue, a memory bank, an EMA teacher)
come with their methods (:mod:`contrastlab.methods`), not as modules.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from contrastlab.losses.barlow import barlow_twins_loss
from contrastlab.losses.byol import byol_loss
from contrastlab.losses.contrastive import LOSS_KINDS
from contrastlab.losses.infonce import nt_xent
from contrastlab.losses.mmcl import KernelSpec, SolverSpec, mmcl_loss


class NTXentLoss(nn.Module):
    """SimCLR's NT-Xent between two views' projections (:func:`~contrastlab.losses.nt_xent`), or
    with ``kind`` the debiased (``dcl``), hard-negative (``hcl``) or decoupled loss on the same
    negatives. ``forward(z1, z2)``: ``(B, D)`` each -> scalar."""

    def __init__(self, temperature: float = 0.5, kind: str = "infonce", tau_plus: float = 0.1,
                 beta: float = 1.0, vmf_sigma: float | None = None) -> None:
        super().__init__()
        if kind not in LOSS_KINDS:
            raise ValueError(f"kind must be one of {', '.join(LOSS_KINDS)}, got {kind!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.kind, self.tau_plus, self.beta, self.vmf_sigma = (
            temperature, kind, tau_plus, beta, vmf_sigma)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return nt_xent(z1, z2, self.temperature, self.kind, self.tau_plus, self.beta, self.vmf_sigma)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, kind={self.kind!r}"


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins' redundancy reduction (:func:`~contrastlab.losses.barlow_twins_loss`).
    ``forward(z1, z2)``: ``(B, D)`` projector outputs -> scalar."""

    def __init__(self, lambd: float = 0.0051) -> None:
        super().__init__()
        if lambd < 0:
            raise ValueError(f"lambd must be >= 0, got {lambd}")
        self.lambd = lambd

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return barlow_twins_loss(z1, z2, self.lambd)

    def extra_repr(self) -> str:
        return f"lambd={self.lambd}"


class BYOLLoss(nn.Module):
    """BYOL's regression loss ``2 - 2 cos(p, z)`` with the stop-gradient on the target
    (:func:`~contrastlab.losses.byol_loss`). ``forward(p, z)``: ``(B, D)`` online predictions and
    target projections -> scalar; symmetrise by calling it on both view orders."""

    def forward(self, p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return byol_loss(p, z)


class MMCLLoss(nn.Module):
    """Max-margin contrastive loss (:func:`~contrastlab.losses.mmcl_loss`): per anchor of view 1,
    a kernel SVM against the batch's other samples scores the anchor's view 2.
    ``forward(z1, z2)``: ``(B, D)`` each -> scalar; the solver's diagnostics of the last call are
    kept in ``self.diagnostics``.

    Args:
        kernel: the kernel (default: RBF with ``sigma`` 10).
        solver: the QP solver (default: projected gradient with Nesterov momentum).
    """

    def __init__(self, kernel: KernelSpec | None = None, solver: SolverSpec | None = None) -> None:
        super().__init__()
        self.kernel, self.solver = kernel or KernelSpec(), solver or SolverSpec()
        self.diagnostics: dict[str, torch.Tensor] = {}

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        loss, self.diagnostics = mmcl_loss(z1, z2, self.kernel, self.solver)
        return loss

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in
                         {**dataclasses.asdict(self.kernel), "solver": self.solver.solver}.items())
