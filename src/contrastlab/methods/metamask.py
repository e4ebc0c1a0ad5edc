"""MetaMask (Li et al., NeurIPS 2022): Barlow Twins + weighted SimCLR on a dimension-masked
representation, the mask learned by a meta-gradient through one virtual encoder step.

With backbone ``f``, mask ``M`` (``(D,)``, ``sigmoid(m)`` or ``m`` itself), masked features
``h~ = f(x) * M`` and the two heads on ``h~``, the encoder ``theta`` (backbone + both heads)
minimises ``L = bt_weight * BT(z1, z2) + cl_weight * NT-Xent(c1, c2)``. The mask minimises the
unrolled contrastive loss ``F(m) = NT-Xent(theta+(m); m)`` on the same batch, where
``theta+ = theta - lr * (dL/dtheta + ...)`` is the update the trainer's optimiser is about to
make (:meth:`SGDStep.like`: exact for ``torch.optim.SGD``, the paper's optimiser, and for LARS
with its trust ratios held fixed; a plain gradient step with the optimiser's current lr otherwise,
e.g. Adam). ``meta_order`` picks the
exact second-order meta-gradient, the first-order one, DARTS' finite differences (the
reference's default) or ``"none"`` (not ``off``, which YAML reads as false): no meta step, the
mask stays at its initial value (with a sigmoid, ``M = 0.5`` everywhere, which the heads'
BatchNorm makes equivalent to the reference's ``--disable-meta`` ``M = 1``: plain BT + weighted
SimCLR). ``second_order`` picks how the exact order gets its mixed term (:mod:`meta`): ``jvp``
(forward-over-reverse, default) or ``unrolled`` (double backward). Step time relative to the
``barlow_twins`` recipe on this CPU (ConvNet, batch 256, bf16 + channels_last;
``benchmarks/results/metamask_step_time.md``): 3.9x for ``second``/``jvp``, 9.5x for
``second``/``unrolled``, 3.2x for ``finite_difference``, 1.5x for ``first``; a meta step every
2 (4) steps (``meta_every``) brings the exact order to 2.2x (1.7x).

Differences from the reference code:

* The virtual step starts from the pre-update ``theta`` with the gradient of the full objective
  ``L``, i.e. exactly the real optimiser's next update (before gradient clipping, which the
  virtual step ignores). The reference instead re-runs ``L_CL`` forward and backward at the
  freshly updated weights and steps from there. Sharing the step lets one forward and one
  gradient ``g = dL/dtheta`` serve both the real and the virtual step: ``training_step`` returns
  a surrogate loss whose value is ``L`` and whose gradient w.r.t. ``theta`` is ``g``, so the
  trainer's backward does not recompute it. The finite-difference mixed term is accordingly
  that of ``L`` (the reference: of ``L_CL``).
* Both views go through the network as one batch (BatchNorm statistics over ``2B``, as the
  other methods here); the reference forwards each view separately.
* The mask's learning rate follows the trainer's schedule: ``mask_lr * lr / base lr`` of the
  attached optimiser (the reference anneals both optimisers with the same cosine).
* Virtual forwards use BatchNorm batch statistics and leave the running statistics alone; the
  reference's virtual passes update them.
* The trainer logs ``features`` = the unmasked backbone output (evaluation uses the backbone as
  is); the reference's kNN monitor uses masked features.

The mask is not in the trainer's optimiser (:meth:`outer_parameters`); the method steps it with
its own ``torch.optim.SGD``, whose momentum buffer is checkpointed as the module's extra state.
Single process only (the meta-gradient is not synchronised across ranks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, NamedTuple

import torch
from torch import Tensor, nn

from contrastlab.components.heads import MLPHead
from contrastlab.components.meta import (
    Grads,
    SecondOrder,
    Params,
    SGDStep,
    encoder_parameters,
    forward_at,
    inner_gradients,
    meta_gradient,
    needs_differentiable_inner_grads,
    momentum_buffers,
    restore_momentum_buffers,
    surrogate_loss,
)
from contrastlab.core.config import MethodConfig
from contrastlab.core.distributed import rank_and_world
from contrastlab.core.optim import LARS
from contrastlab.eval.diagnostics import effective_rank
from contrastlab.losses import barlow_twins_loss, cross_correlation, nt_xent
from contrastlab.methods.base import Method, StepInput
from contrastlab.methods.registry import METHODS

MaskActivation = Literal["sigmoid", "none"]
MetaMaskOrder = Literal["second", "first", "finite_difference", "none"]
ENCODER_PARTS = ("backbone", "bt_head", "cl_head")


@dataclass
class MetaMaskConfig(MethodConfig):
    RANGES: ClassVar[dict[str, str]] = {
        "cl_hidden_dim": ">= 1", "cl_out_dim": ">= 1", "lambd": ">= 0", "temperature": "> 0", "bt_weight": ">= 0",
        "cl_weight": ">= 0", "mask_lr": "> 0", "mask_momentum": ">= 0", "mask_weight_decay": ">= 0",
        "meta_every": ">= 1", "fd_radius": "> 0",
    }

    proj_hidden_dim: int = 2048  # Barlow Twins head: D -> 2048 (BN, ReLU) -> 2048 (BN, ReLU) -> 2048 (BN)
    proj_out_dim: int = 2048
    proj_layers: int = 3
    lambd: float = 5e-3  # weight of the off-diagonal Barlow Twins terms
    cl_hidden_dim: int = 2048  # contrastive head: D -> 2048 (BN, ReLU) -> 256 (BN)
    cl_out_dim: int = 256  # the SimCLR branch's projection width
    temperature: float = 0.07  # NT-Xent temperature (hard-coded in the reference)
    bt_weight: float = 1.0  # weight of the Barlow Twins term
    cl_weight: float = 10.0  # weight of the masked SimCLR term
    mask_activation: MaskActivation = "sigmoid"  # sigmoid: M = sigmoid(m), m = 0; none: M = m = 1
    mask_lr: float = 1e-3  # scaled by the trainer's schedule (lr / base lr)
    mask_momentum: float = 0.9  # the mask's SGD momentum
    mask_weight_decay: float = 5e-4  # the mask's SGD weight decay
    meta_order: MetaMaskOrder = "second"  # none: no meta step, the mask keeps its initial value
    second_order: SecondOrder = "jvp"  # how the exact order gets the mixed term: jvp | unrolled
    meta_every: int = 1  # one meta step every this many training steps
    fd_radius: float = 0.01  # finite_difference: length of the step r v in parameter space


class Objective(NamedTuple):
    """The terms of ``L`` on one two-view batch."""

    total: Tensor  # bt_weight * bt + cl_weight * cl, scalar
    bt: Tensor  # Barlow Twins loss, scalar
    cl: Tensor  # NT-Xent, scalar
    features: Tensor  # (2B, D) unmasked backbone output, view 1's rows first
    z1: Tensor  # (B, proj_out_dim) Barlow Twins projections of view 1
    z2: Tensor  # (B, proj_out_dim) ... of view 2


def off_diagonal_mass(z1: Tensor, z2: Tensor) -> Tensor:
    """Mean squared off-diagonal entry of the standardised cross-correlation of ``z1, z2: (B, P)``
    (a detached scalar; 0 when ``P = 1``)."""
    with torch.no_grad():
        c = cross_correlation(z1, z2)
        off = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
        return off / max(1, c.shape[0] * (c.shape[0] - 1))


@METHODS.register(
    "metamask", "MetaMask: Barlow Twins + SimCLR on a meta-learned dimensional mask (Li et al., 2022)"
)
class MetaMask(Method):
    Config = MetaMaskConfig

    def __init__(self, cfg: MetaMaskConfig, backbone: nn.Module) -> None:
        super().__init__(cfg, backbone)
        if rank_and_world()[1] > 1:
            raise ValueError("method.name=metamask trains in one process only: its mask's meta-gradient "
                             "is not synchronised across ranks")
        dim = backbone.out_dim
        self.bt_head = MLPHead(dim, cfg.proj_hidden_dim, cfg.proj_out_dim, cfg.proj_layers, last_batch_norm=True)
        self.cl_head = MLPHead(dim, cfg.cl_hidden_dim, cfg.cl_out_dim, 2, last_batch_norm=True)
        initial = 0.0 if cfg.mask_activation == "sigmoid" else 1.0
        self.mask_parameter = nn.Parameter(torch.full((dim,), initial))
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.mask_optimizer = torch.optim.SGD(
            [self.mask_parameter], lr=cfg.mask_lr, momentum=cfg.mask_momentum, weight_decay=cfg.mask_weight_decay
        )
        self.encoder_optimizer: torch.optim.Optimizer | None = None

    # ------------------------------------------------------------------ trainer hooks
    def outer_parameters(self) -> list[nn.Parameter]:
        return [self.mask_parameter]

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        self.encoder_optimizer = optimizer

    def get_extra_state(self) -> Tensor:
        """The mask optimiser's momentum buffer ``(D,)`` (empty before its first step)."""
        return momentum_buffers(self.mask_optimizer, [self.mask_parameter])

    def set_extra_state(self, state: Tensor) -> None:
        restore_momentum_buffers(self.mask_optimizer, [self.mask_parameter], state, "the mask")

    # ------------------------------------------------------------------ the network
    def mask(self) -> Tensor:
        """``M: (D,)``, differentiable w.r.t. the mask parameter."""
        if self.cfg.mask_activation == "sigmoid":
            return torch.sigmoid(self.mask_parameter)
        return self.mask_parameter

    def encoder_parameters(self) -> dict[str, nn.Parameter]:
        """``theta``: the backbone's and both heads' parameters that require grad."""
        return encoder_parameters(self, ENCODER_PARTS)

    def objective(self, x: Tensor, mask: Tensor, theta: Params | None = None) -> Objective:
        """``L`` on ``x: (2B, C, H, W)`` (view 1 then view 2) with mask ``(D,)``, at the module's
        weights (a real forward) or at ``theta``."""
        features = forward_at(self.backbone, "backbone.", theta, x)
        masked = features * mask
        z1, z2 = forward_at(self.bt_head, "bt_head.", theta, masked).chunk(2)
        c1, c2 = forward_at(self.cl_head, "cl_head.", theta, masked).chunk(2)
        bt = barlow_twins_loss(z1, z2, self.cfg.lambd)
        cl = nt_xent(c1, c2, self.cfg.temperature)
        return Objective(self.cfg.bt_weight * bt + self.cfg.cl_weight * cl, bt, cl, features, z1, z2)

    def contrastive_loss(self, x: Tensor, theta: Params) -> Tensor:
        """The mask's outer objective: NT-Xent of the masked representation at ``theta``, scalar."""
        masked = forward_at(self.backbone, "backbone.", theta, x) * self.mask()
        return nt_xent(*forward_at(self.cl_head, "cl_head.", theta, masked).chunk(2), self.cfg.temperature)

    # ------------------------------------------------------------------ the step
    def virtual_step(self, theta: Params, grads: Grads) -> SGDStep:
        """The update the attached optimiser is about to make on ``theta`` with gradient
        ``grads``: exact for ``torch.optim.SGD`` and LARS (:meth:`SGDStep.like`), else a plain
        gradient step with its current lr."""
        optimizer = self.encoder_optimizer
        if optimizer is None:
            raise RuntimeError("MetaMask's meta step mimics the trainer's optimiser: call attach_optimizer first")
        if isinstance(optimizer, (torch.optim.SGD, LARS)):
            return SGDStep.like(optimizer, theta, grads)
        return SGDStep(lr=float(optimizer.param_groups[0]["lr"]))

    def _lr_ratio(self) -> float:
        """The trainer's current lr over its base lr (1 without an attached optimiser)."""
        if self.encoder_optimizer is None:
            return 1.0
        return self.encoder_optimizer.param_groups[0]["lr"] / self.encoder_optimizer.defaults["lr"]

    def _step_mask(self, grad: Tensor) -> None:
        for group in self.mask_optimizer.param_groups:
            group["lr"] = self.cfg.mask_lr * self._lr_ratio()
        self.mask_parameter.grad = grad
        self.mask_optimizer.step()
        self.mask_parameter.grad = None

    def training_step(self, step: StepInput) -> dict[str, Tensor]:
        order = self.cfg.meta_order
        meta = order != "none" and int(self.steps_done) % self.cfg.meta_every == 0
        unrolled = meta and needs_differentiable_inner_grads(order, self.cfg.second_order)
        self.steps_done += 1
        x = torch.cat(step.views)
        # the real forward sees the mask as a constant unless the unrolled meta-gradient needs g(m)
        real_mask = self.mask() if unrolled else self.mask().detach()
        terms = self.objective(x, real_mask)
        out = {
            "loss": terms.total,
            "features": terms.features[: terms.z1.shape[0]].detach(),
            "loss_bt": terms.bt.detach(),
            "loss_cl": terms.cl.detach(),
            "bt_off_diagonal": off_diagonal_mass(terms.z1, terms.z2),
        }
        if meta:
            theta = self.encoder_parameters()
            grads = inner_gradients(terms.total, theta, create_graph=unrolled)
            result = meta_gradient(
                [self.mask_parameter], theta,
                inner_loss=lambda params: self.objective(x, self.mask(), params).total,
                outer_loss=lambda params: self.contrastive_loss(x, params),
                step=self.virtual_step(theta, grads), order=order, second_order=self.cfg.second_order,
                inner_grads=grads, fd_radius=self.cfg.fd_radius,
            )
            self._step_mask(result.outer_grads[0])
            out["loss"] = surrogate_loss(terms.total, theta, result.inner_grads)
            out["meta_outer_loss"] = result.outer_loss
            out["mask_grad_norm"] = result.outer_grads[0].norm()
        with torch.no_grad():
            mask = self.mask()
            out.update(mask_mean=mask.mean(), mask_min=mask.min(), mask_max=mask.max(), mask_values=mask.clone(),
                       effective_rank=torch.tensor(effective_rank(out["features"].float())))
        return out
