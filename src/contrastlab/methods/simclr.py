"""SimCLR (Chen et al., 2020): NT-Xent between the projections of two views, or of global and
local crops (multi-crop).

``method.loss`` switches the handling of the batch's negatives: debiased (DCL), hard-negative
(HCL) or decoupled weighting, an SVM per anchor (MMCL), or difficulty weights from a
bias-amplifying second encoder (see :class:`ContrastiveConfig`).

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

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from contrastlab.core.config import ConfigError, MethodConfig, OptimConfig
from contrastlab.losses import (
    KernelSpec,
    SolverSpec,
    batch_pairs,
    debiased_info_nce,
    debiased_triplet_loss,
    difficulty_weights,
    mmcl_loss,
    nt_xent,
)
from contrastlab.methods.base import Method, ParameterGroup, StepInput
from contrastlab.methods.registry import METHODS


@dataclass
class ContrastiveConfig(MethodConfig):
    """Fields of methods with an InfoNCE-family loss (SimCLR, MoCo): the loss and its handling
    of negatives.

    ``loss``: ``infonce``; ``dcl``, the *debiased* loss of Chuang et al. (2020) (class prior
    ``tau_plus``); ``hcl``, its hard-negative weighting (Robinson et al., 2021; ``beta``);
    ``decoupled``, the *decoupled* loss of Yeh et al. (2022) that lightly calls "DCL" (the
    positive left out of the denominator; ``vmf_sigma`` set: DCLW); ``difficulty`` (a
    bias-amplifying second encoder whose similarities weigh the DCL estimator's negatives,
    trained at ``biased_lr_scale`` times the main learning rate:
    :mod:`contrastlab.losses.difficulty`; MoCo keeps a second queue of the biased encoder's
    keys for it); and, with batch negatives only (SimCLR), ``mmcl`` (an SVM per anchor: the
    ``svm_*`` fields, see :mod:`contrastlab.losses.mmcl`).
    """

    RANGES: ClassVar[dict[str, str]] = {
        "temperature": "> 0", "tau_plus": "in [0, 1)", "beta": ">= 0", "vmf_sigma": "> 0", "svm_sigma": "> 0",
        "svm_sigma_gamma": "> 0", "svm_sigma_milestones": ">= 0", "svm_degree": ">= 1", "svm_ridge": ">= 0",
        "svm_eta": "> 0", "svm_max_iter": ">= 1", "svm_tol": "> 0", "biased_lr_scale": "> 0",
    }
    BATCH_NEGATIVES: ClassVar[tuple[str, ...]] = ("mmcl", "difficulty")  # losses on the batch's own negatives

    temperature: float = 0.5  # t of the contrastive loss
    loss: Literal["infonce", "dcl", "hcl", "decoupled", "mmcl", "difficulty"] = "infonce"  # how negatives count (README: Negatives)
    tau_plus: float = 0.1  # DCL/HCL/difficulty class prior
    beta: float = 1.0  # HCL concentration (0 = DCL)
    vmf_sigma: float | None = None  # decoupled: the von Mises-Fisher weighting of DCLW (0.5 in its paper)
    svm_kernel: Literal["rbf", "linear", "poly", "tanh"] = "rbf"  # mmcl: the SVM kernel
    svm_sigma: float = 10.0  # rbf: exp(-|u - v|^2 / sigma), sigma a divisor (the official code's "gamma")
    svm_sigma_milestones: tuple[int, ...] = ()  # epochs at whose start sigma is multiplied by svm_sigma_gamma
    svm_sigma_gamma: float = 0.1  # mmcl: factor on svm_sigma at each milestone
    svm_degree: int = 3  # poly: (u.v + svm_offset)^svm_degree
    svm_offset: float = 0.5  # poly and tanh: tanh(u.v + svm_offset)
    svm_c: float = -1.0  # box bound of the duals; -1: unbounded
    svm_ridge: float = 0.1  # mmcl: ridge r added to the QP's diagonal
    svm_solver: Literal["pgd", "inverse"] = "pgd"  # mmcl: projected gradient, or the closed form (one batched solve)
    svm_step: Literal["fixed", "frobenius"] = "fixed"  # pgd: svm_eta, or 1 / |Q|_F per anchor
    svm_eta: float = 1e-3  # mmcl pgd: the fixed step
    svm_momentum: Literal["nesterov", "none"] = "nesterov"  # mmcl pgd: FISTA momentum, or none
    svm_max_iter: int = 1000  # mmcl pgd: iteration cap
    svm_tol: float = 1e-2  # mmcl pgd: stopping tolerance
    svm_stop: Literal["batch", "anchor"] = "batch"  # batch: the official code's batch-global rule
    svm_dtype: Literal["float32", "float64"] = "float32"  # the solver's precision, whatever the autocast
    biased_lr_scale: float = 10.0  # difficulty: the biased encoder's lr / the main lr (the CIFAR recipe's 10x)

    def validate(self, prefix: str) -> None:
        if self.svm_c != -1 and self.svm_c <= 0:
            raise ConfigError(f"{prefix}.svm_c must be -1 (unbounded) or > 0, got {self.svm_c!r}")
        if list(self.svm_sigma_milestones) != sorted(set(self.svm_sigma_milestones)):
            raise ConfigError(f"{prefix}.svm_sigma_milestones must be increasing epochs, got "
                              f"{list(self.svm_sigma_milestones)}")
        if self.vmf_sigma is not None and self.loss != "decoupled":
            raise ConfigError(f"{prefix}.vmf_sigma weighs the positives of {prefix}.loss=decoupled only, "
                              f"got {prefix}.loss={self.loss!r}")

    def loss_options(self) -> dict:
        """Keyword arguments of :func:`~contrastlab.losses.contrastive_loss` (the per-pair losses)."""
        return {"kind": self.loss, "tau_plus": self.tau_plus, "beta": self.beta, "vmf_sigma": self.vmf_sigma}

    def kernel_spec(self, epoch: int) -> KernelSpec:
        """MMCL's kernel at ``epoch`` (0-based): ``svm_sigma`` times ``svm_sigma_gamma`` for each
        milestone reached."""
        drops = sum(epoch >= m for m in self.svm_sigma_milestones)
        return KernelSpec(kind=self.svm_kernel, sigma=self.svm_sigma * self.svm_sigma_gamma**drops,
                          degree=self.svm_degree, offset=self.svm_offset)

    def solver_spec(self) -> SolverSpec:
        """MMCL's QP solver."""
        return SolverSpec(**{f.name: getattr(self, f"svm_{f.name}") for f in dataclasses.fields(SolverSpec)})


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


class ContrastiveMethod(Method):
    """What SimCLR and MoCo share for ``loss: difficulty``: the biased encoder and its projector
    (never evaluated), their own optimiser, and the loss terms from both encoders' similarities."""

    def build_encoders(self, build_encoder: Callable[[], nn.Module]) -> None:
        """``loss: difficulty``: the biased encoder and its projector."""
        if self.cfg.loss == "difficulty":
            self.biased = build_encoder()
            self.biased_projector = self.make_projector()

    def parameter_groups(self, optim: OptimConfig) -> list[ParameterGroup]:
        """``loss: difficulty``: the biased encoder's own optimiser, the main one's kind and
        schedule at ``biased_lr_scale`` times its learning rate."""
        if self.cfg.loss != "difficulty":
            return []
        params = list(self.biased.parameters()) + list(self.biased_projector.parameters())
        return [ParameterGroup("biased", params, dataclasses.replace(optim, lr=optim.lr * self.cfg.biased_lr_scale))]

    def biased_projections(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The biased encoder and projector on the views, as one batch: one ``(B, P)`` per view."""
        return self.biased_projector(self.biased(torch.cat(views))).chunk(len(views))

    def difficulty_terms(self, pos: torch.Tensor, neg: torch.Tensor, pos_b: torch.Tensor,
                         neg_b: torch.Tensor) -> dict[str, torch.Tensor]:
        """The main encoder's DCL with difficulty weights plus the biased encoder's triplet loss,
        from the anchor-positive ``pos: (N,)`` and anchor-negative ``neg: (N, M)`` cosines of the
        main (``pos``, ``neg``) and biased (``pos_b``, ``neg_b``) encoders over the same
        negatives; ``skip_step`` when the main loss is not finite (the official code skips the
        batch). The cosines come in float32 at least (:func:`~contrastlab.losses.batch_pairs`,
        :func:`~contrastlab.losses.queue_pairs`), and the terms stay there whatever the autocast
        (the triplet loss sums ~M distances)."""
        with torch.autocast(pos.device.type, enabled=False):
            weights = difficulty_weights(neg, neg_b, self.cfg.temperature)
            main = debiased_info_nce(pos, neg, self.cfg.temperature, self.cfg.tau_plus, log_weights=weights.log())
            triplet = debiased_triplet_loss(pos_b, neg_b, self.cfg.tau_plus)
        return {"loss": main + triplet, "main_loss": main.detach(), "biased_loss": triplet.detach(),
                "mean_weight": weights.mean(), "skip_step": ~torch.isfinite(main)}


@METHODS.register("simclr", "SimCLR: NT-Xent (or DCL/HCL/decoupled/MMCL/difficulty) between two augmented views (Chen et al., 2020)")
class SimCLR(ContrastiveMethod):
    Config = SimCLRConfig
    mixed_view_sizes = True  # project_views batches each size on its own

    def __init__(self, cfg: SimCLRConfig, backbone: nn.Module) -> None:
        super().__init__(cfg, backbone)
        self.projector = self.make_projector()

    @classmethod
    def accepted_views(cls, cfg: SimCLRConfig) -> tuple[int, int | None]:
        """At least two views and at least ``num_global``; no upper bound, except for the
        batch-negative losses (``mmcl``, ``difficulty``): exactly two."""
        if cfg.loss in cfg.BATCH_NEGATIVES:
            return 2, 2
        return max(2, cfg.num_global), None

    def training_step(self, step: StepInput) -> dict[str, torch.Tensor]:
        """Two views: the configured loss between them. N views: the weighted mean of NT-Xent
        (or DCL/HCL/decoupled) over :func:`multicrop_pairs` (see the module docstring).
        ``features``: view 0's backbone output; ``mmcl`` and ``difficulty`` also log their
        diagnostics."""
        low, _ = self.accepted_views(self.cfg)
        if len(step.views) < low:
            raise ValueError(f"SimCLR with num_global={self.cfg.num_global} needs at least {low} views, "
                             f"got {len(step.views)}")
        h, z = self.project_views(step)
        out: dict[str, torch.Tensor] = {"features": h[0].detach()}
        if self.cfg.loss == "mmcl":
            out["loss"], stats = mmcl_loss(z[0], z[1], self.cfg.kernel_spec(step.epoch), self.cfg.solver_spec(),
                                           step.generator)
            return {**out, **stats}
        if self.cfg.loss == "difficulty":
            return {**out, **self._difficulty_loss(step, z[0], z[1])}
        pairs = multicrop_pairs(len(z), self.cfg.num_global, self.cfg.pairs == "ordered")
        total = sum(w * nt_xent(z[a], z[b], self.cfg.temperature, **self.cfg.loss_options()) for a, b, w in pairs)
        return {**out, "loss": total / sum(w for _, _, w in pairs)}

    def _difficulty_loss(self, step: StepInput, z1: torch.Tensor, z2: torch.Tensor) -> dict[str, torch.Tensor]:
        """:meth:`difficulty_terms` over the batch's negatives (SimCLR's 2B-batch pairs of both
        encoders)."""
        b1, b2 = self.biased_projections(step.views)
        return self.difficulty_terms(*batch_pairs(z1, z2), *batch_pairs(b1, b2))
