"""AUC-CL (Sharma, Ji, Xu, Chen; ICLR 2024): SimCLR's two views and projector with the loss of
:mod:`contrastlab.losses.auc`, its scalars ``a``, ``b`` and dual ``alpha`` held by the method
and trained by a parameter group of their own (``auc``, see :meth:`AUCCL.parameter_groups`).
Negatives are this process's own batch, as in the official code (no gathering across ranks).

``mode: paper`` (our reading of the paper's objective): ``a``, ``b`` learned by descent, ``alpha``
by projected ascent (its gradient reversed, then clamped at 0 after every step), margin
``method.margin``, the negative term a mean over each anchor's negatives. ``mode: official`` (the
CIFAR code): ``a = 10`` and ``alpha = 1`` fixed, ``b`` learned in the main optimiser's settings
(the code adds it to its AdamW), the positive's score shifted by the code's built-in margin, the
own positive view among the negatives, a sum over them.

``mode: official_imagenet`` (the ImageNet code, ``main.py``, built on DINO): a student (backbone
and :class:`DINOHead`: a 3-layer GELU MLP ``D -> head_hidden_dim -> head_hidden_dim ->
head_bottleneck_dim``, L2-normalised, then a weight-normalised linear layer to ``out_dim``) and
an EMA teacher of both (momentum ``base_momentum -> final_momentum``, cosine). Multi-crop: the
first ``num_global`` views are global; the teacher sees those only, the student every view. The
teacher's target on global view ``u`` is ``P_u = softmax((g_t(x_u) - c) / tau_t)`` ``(N, out_dim)``,
``c`` ``(1, out_dim)`` an EMA (``center_momentum``) of the teacher's mean output over the batch
(updated after the targets are computed; a buffer, so checkpointed), ``tau_t`` rising linearly
by epoch from ``warmup_teacher_temperature`` at epoch 0 to ``teacher_temperature`` at epoch
``warmup_teacher_temperature_epochs`` and constant after; the student's output on view ``v`` is
``S_v = g_s(x_v) / student_temperature`` ``(N, out_dim)``, not softmax-ed. The loss
(:func:`~contrastlab.losses.auc_dino_loss`) averages, over the ``num_global * (V - 1)`` pairs
``(u, v != u)``, the surrogate with ``a = 10, b = 0, alpha = 1`` fixed (nothing learned besides
the networks, so no ``auc`` parameter group) and the negative weight ``neg_numerator / N`` on
this process's batch of ``N``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from contrastlab.components.momentum import EMATeacher, cosine_momentum
from contrastlab.core.config import MethodConfig, OptimConfig
from contrastlab.core.distributed import all_reduce_mean
from contrastlab.losses import ascent, auc_dino_loss, auc_loss, auc_pairs
from contrastlab.methods.base import WITH_EMA_TEACHER, Method, ParameterGroup, StepInput
from contrastlab.methods.registry import METHODS

OFFICIAL_A, OFFICIAL_ALPHA = 10.0, 1.0
IMAGENET = "official_imagenet"


@dataclass
class AUCCLConfig(MethodConfig):
    RANGES: ClassVar[dict[str, str]] = {
        "margin": ">= 0", "auc_lr": "> 0", "init_alpha": ">= 0", "out_dim": ">= 1", "head_hidden_dim": ">= 1",
        "head_bottleneck_dim": ">= 1", "student_temperature": "> 0", "teacher_temperature": "> 0",
        "warmup_teacher_temperature": "> 0", "warmup_teacher_temperature_epochs": ">= 0",
        "center_momentum": "in [0, 1]", "base_momentum": "in [0, 1]", "final_momentum": "in [0, 1]",
        "num_global": ">= 1", "neg_numerator": ">= 0",
    }

    mode: Literal["paper", "official", "official_imagenet"] = "paper"  # paper: a, b, alpha learned; official: CIFAR code; official_imagenet: DINO-style ImageNet code
    margin: float = 1.0  # paper: m (scores lie in [0, 1])
    auc_lr: float = 0.01  # paper: the learning rate of a, b and alpha
    init_a: float = 1.0  # paper: the positives' score mean starts at 1 ...
    init_b: float = 0.0  # ... the negatives' at 0 (official: b starts at 0 too)
    init_alpha: float = 1.0  # the dual alpha's starting value
    # official_imagenet only (the proj_* fields are not used there):
    out_dim: int = 65536  # the DINO head's output width K
    head_hidden_dim: int = 2048  # the DINO head's MLP width
    head_bottleneck_dim: int = 256  # the DINO head's bottleneck (L2-normalised, then the weight-normalised layer)
    norm_last_layer: bool = False  # true: the last layer's weight-norm gain frozen at 1 (the code's default: false)
    student_temperature: float = 0.1  # tau_s: S = g_s(x) / tau_s
    teacher_temperature: float = 0.07  # tau_t after the warm-up
    warmup_teacher_temperature: float = 0.04  # tau_t at epoch 0
    warmup_teacher_temperature_epochs: int = 30  # tau_t linear by epoch up to teacher_temperature at this epoch
    center_momentum: float = 0.9  # the EMA of the teacher's centre c
    base_momentum: float = 0.996  # the teacher's EMA momentum, cosine from base ...
    final_momentum: float = 1.0  # ... to final over training
    num_global: int = 2  # the first num_global views are global (teacher and student); the rest local (student)
    neg_numerator: float = 32.0  # the negative weight is neg_numerator / N (N: this process's batch)


class DINOHead(nn.Module):
    """DINO's projection head: ``Linear-GELU-Linear-GELU-Linear`` (``in_dim -> hidden_dim ->
    hidden_dim -> bottleneck_dim``), L2-normalise, then a weight-normalised
    ``Linear(bottleneck_dim, out_dim, bias=False)`` whose gain starts at 1 (frozen there when
    ``norm_last_layer``). ``(N, in_dim) -> (N, out_dim)``. The MLP's weights are truncated
    normal (std 0.02), its biases 0, as in DINO."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 norm_last_layer: bool = False) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, bottleneck_dim))
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        gain = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            gain.fill_(1.0)
        gain.requires_grad_(not norm_last_layer)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(h), dim=-1))


def teacher_temperature(cfg: AUCCLConfig, epoch: int) -> float:
    """``tau_t`` at ``epoch`` (0-based): linear from ``warmup_teacher_temperature`` (epoch 0) to
    ``teacher_temperature`` (epoch ``warmup_teacher_temperature_epochs`` and after)."""
    warmup = cfg.warmup_teacher_temperature_epochs
    if epoch >= warmup:
        return cfg.teacher_temperature
    start = cfg.warmup_teacher_temperature
    return start + (cfg.teacher_temperature - start) * max(epoch, 0) / warmup


@METHODS.register("auccl", "AUC-CL: a square-loss AUC surrogate on pair scores, batch-size robust (Sharma et al., 2024)")
class AUCCL(Method):
    Config = AUCCLConfig

    mixed_view_sizes = True  # official_imagenet: global and local crops (project_views batches each size)

    def __init__(self, cfg: AUCCLConfig, backbone: nn.Module) -> None:
        super().__init__(cfg, backbone)
        if cfg.mode == IMAGENET:
            self.projector = DINOHead(backbone.out_dim, cfg.out_dim, cfg.head_hidden_dim, cfg.head_bottleneck_dim,
                                      cfg.norm_last_layer)
            self.teacher = EMATeacher(self.backbone, self.projector)
            self.register_buffer("center", torch.zeros(1, cfg.out_dim))
            return
        self.projector = self.make_projector()
        self.b = nn.Parameter(torch.tensor(cfg.init_b))
        if cfg.mode == "paper":
            self.a = nn.Parameter(torch.tensor(cfg.init_a))
            self.alpha = nn.Parameter(torch.tensor(cfg.init_alpha))

    @classmethod
    def eval_encoders(cls, cfg: AUCCLConfig) -> dict[str, str]:
        """``official_imagenet`` has an EMA teacher (``eval.encoder=teacher``); the other modes not."""
        return WITH_EMA_TEACHER if cfg.mode == IMAGENET else cls.EVAL_ENCODERS

    @classmethod
    def accepted_views(cls, cfg: AUCCLConfig) -> tuple[int, int | None]:
        """``official_imagenet``: the ``num_global`` global views and at least one more, no upper
        bound; the other modes: exactly two."""
        if cfg.mode == IMAGENET:
            return cfg.num_global + 1, None
        return 2, 2

    def auc_parameters(self) -> list[nn.Parameter]:
        """The learned AUC scalars: ``a, b, alpha`` (paper), ``b`` (official), none
        (official_imagenet)."""
        if self.cfg.mode == IMAGENET:
            return []
        return [self.a, self.b, self.alpha] if self.cfg.mode == "paper" else [self.b]

    def parameter_groups(self, optim: OptimConfig) -> list[ParameterGroup]:
        """``a, b, alpha`` (paper) at ``auc_lr``, constant, no weight decay; ``b`` (official) in the
        main optimiser's settings. LARS becomes SGD for these scalars (a layer-wise trust ratio
        means nothing for one number)."""
        if self.cfg.mode == IMAGENET:
            return []  # a = 10, b = 0, alpha = 1 fixed: nothing of its own to optimise
        kind = "sgd" if optim.name == "lars" else optim.name
        if self.cfg.mode == "official":
            return [ParameterGroup("auc", self.auc_parameters(), dataclasses.replace(optim, name=kind))]
        settings = dataclasses.replace(optim, name=kind, lr=self.cfg.auc_lr, weight_decay=0.0, schedule="constant",
                                       warmup_epochs=0.0, grad_clip=None)
        return [ParameterGroup("auc", self.auc_parameters(), settings)]

    def training_step(self, step: StepInput) -> dict[str, torch.Tensor]:
        """The loss of both views' 2B embeddings; logs ``a``, ``b``, ``alpha`` and the mean
        positive and negative scores (official_imagenet: :meth:`_imagenet_step`)."""
        if self.cfg.mode == IMAGENET:
            return self._imagenet_step(step)
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

    def teacher_targets(self, views: list[torch.Tensor], temperature: float) -> list[torch.Tensor]:
        """``P_u = softmax((g_t(x_u) - c) / temperature)`` ``(N, out_dim)`` for each global view
        (views of one shape through the teacher as one batch), in at least float32, no
        gradient; then the centre's EMA step towards the mean teacher output over those views'
        rows (averaged over processes)."""
        groups: dict[tuple, list[int]] = {}
        for k, x in enumerate(views):
            groups.setdefault(tuple(x.shape), []).append(k)
        outputs: list[torch.Tensor] = [None] * len(views)  # type: ignore[list-item]
        with torch.no_grad():
            for members in groups.values():
                t = self.teacher(torch.cat([views[k] for k in members]) if len(members) > 1 else views[members[0]])
                for k, t_k in zip(members, t.chunk(len(members))):
                    outputs[k] = t_k
            with torch.autocast(views[0].device.type, enabled=False):
                dtype = torch.promote_types(outputs[0].dtype, torch.float32)
                teacher = torch.cat(outputs).to(dtype)  # (G N, K)
                center = self.center.to(dtype)
                probs = F.softmax((teacher - center) / temperature, dim=-1).chunk(len(views))
                batch_center = all_reduce_mean(teacher.mean(dim=0, keepdim=True))
                m = self.cfg.center_momentum
                self.center.copy_((center * m + batch_center * (1.0 - m)).to(self.center.dtype))
        return list(probs)

    def _imagenet_step(self, step: StepInput) -> dict[str, torch.Tensor]:
        """The ImageNet form (module docstring); ``features``: the student's backbone output on
        view 0 (global); logs the fixed ``a, b, alpha``, the mean positive and negative scores
        over the pairs and the teacher temperature."""
        g = self.cfg.num_global
        low, _ = self.accepted_views(self.cfg)
        if len(step.views) < low:
            raise ValueError(f"AUC-CL mode={IMAGENET} with method.num_global={g} needs at least {low} views "
                             f"(augment.views: {g} global, then at least one more), got {len(step.views)}")
        tau_t = teacher_temperature(self.cfg, step.epoch)
        probs = self.teacher_targets(step.views[:g], tau_t)
        h, z = self.project_views(step)
        with torch.autocast(z[0].device.type, enabled=False):
            logits = [z_v.to(torch.promote_types(z_v.dtype, torch.float32)) / self.cfg.student_temperature for z_v in z]
            loss, pos, neg = auc_dino_loss(probs, logits, self.cfg.neg_numerator, return_scores=True)
        fixed = {name: torch.tensor(value, device=loss.device) for name, value in
                 (("a", OFFICIAL_A), ("b", 0.0), ("alpha", OFFICIAL_ALPHA), ("teacher_temperature", tau_t))}
        return {"loss": loss, "features": h[0].detach(), "positive_score": pos, "negative_score": neg, **fixed}

    def on_after_optimizer_step(self, progress: float) -> None:
        """Projected ascent: ``alpha`` back onto ``[0, inf)`` (paper); the teacher's EMA step
        with the cosine momentum at ``progress`` (official_imagenet)."""
        if self.cfg.mode == IMAGENET:
            momentum = cosine_momentum(self.cfg.base_momentum, self.cfg.final_momentum, progress)
            self.teacher.update(momentum, self.backbone, self.projector)
        if self.cfg.mode == "paper":
            with torch.no_grad():
                self.alpha.clamp_(min=0.0)
