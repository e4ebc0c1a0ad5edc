"""The thin base every method extends, and what the trainer hands it each step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from contrastlab.components.heads import MLPHead
from contrastlab.core.config import AugmentConfig, MethodConfig, OptimConfig, ViewConfig, check_section
from contrastlab.data.augment import preset_views


WITH_EMA_TEACHER = {"student": "backbone.", "teacher": "teacher.module.0."}
"""``Method.EVAL_ENCODERS`` of a method whose ``self.teacher`` is an EMA teacher of its backbone
and heads (:class:`~contrastlab.components.momentum.EMATeacher`, backbone first)."""


@dataclass
class StepInput:
    """One training step's data, as the trainer prepares it.

    Attributes:
        views: one ``(B, C, H, W)`` float tensor per view, normalised, on the device (graphs:
            one :class:`~contrastlab.data.graphs.GraphBatch` per view).
        params: the per-sample augmentation parameters each view was made with.
        pipelines: the view pipelines (``apply(batch, params)`` re-renders a view, e.g. with
            parameters that require grad).
        batch: the batch dict on the device (:mod:`contrastlab.data.dataset`): ``inputs``,
            ``index`` ``(B,)``, ``labels``/``targets``/extras where the dataset has them.
        generator: CPU generator for any further sampling (seeded per epoch: reproducible).
        progress: fraction of training done, in [0, 1) (for momentum schedules).
        epoch: the 0-based epoch of this step (for schedules by epoch).
    """

    views: list[torch.Tensor]
    params: list[dict[str, Any]] = field(default_factory=list)
    pipelines: list[Any] = field(default_factory=list)
    batch: dict[str, torch.Tensor] = field(default_factory=dict)
    generator: torch.Generator | None = None
    progress: float = 0.0
    epoch: int = 0


@dataclass
class ParameterGroup:
    """Parameters the trainer optimises with an optimiser of their own.

    Attributes:
        name: the group's name (its learning rate is logged as ``lr/<name>``; its optimiser
            state is checkpointed under it).
        params: the parameters (left out of the main optimiser).
        optim: the optimiser kind, learning rate, weight decay and schedule of this group; the
            schedule runs over the same steps as the main one.
    """

    name: str
    params: list[nn.Parameter]
    optim: OptimConfig


class Method(nn.Module):
    """A self-supervised method: a backbone, its heads and its loss.

    Subclasses set ``Config`` (a :class:`MethodConfig` subclass) and implement
    :meth:`training_step`. ``forward`` is ``training_step`` so that DistributedDataParallel
    sees the whole step.
    """

    Config: ClassVar[type[MethodConfig]] = MethodConfig
    EVAL_ENCODERS: ClassVar[dict[str, str]] = {"student": "backbone."}
    """``eval.encoder`` choices -> the prefix of that backbone's weights in the method's state
    dict; methods with an EMA teacher use :data:`WITH_EMA_TEACHER`."""

    @classmethod
    def eval_encoders(cls, cfg: MethodConfig) -> dict[str, str]:
        """The ``eval.encoder`` choices of the method configured as ``cfg``: ``EVAL_ENCODERS``,
        unless the method has an EMA teacher in some of its modes only."""
        return cls.EVAL_ENCODERS

    def __init__(self, cfg: MethodConfig, backbone: nn.Module) -> None:
        super().__init__()
        check_section(cfg, "method")  # a config made in code is checked as a loaded one is
        self.cfg = cfg
        self.backbone = backbone

    def make_projector(self) -> MLPHead:
        """The standard projection head ``out_dim -> proj_hidden_dim -> proj_out_dim``."""
        return MLPHead(
            self.backbone.out_dim,
            self.cfg.proj_hidden_dim,
            self.cfg.proj_out_dim,
            num_layers=self.cfg.proj_layers,
        )

    @classmethod
    def default_views(cls, augment: AugmentConfig) -> list[ViewConfig]:
        """The views used when ``augment.views`` is null, made from ``augment``'s preset fields.

        By default the preset's two views (:func:`~contrastlab.data.augment.preset_views`); a
        method overrides this to declare its own (an asymmetric pair, global + local crops).
        """
        fields = {key: getattr(augment, key) for key in ("size", "crop_scale", "flip_prob", "jitter_strength",
                                                         "jitter_prob", "gray_prob", "blur_prob", "solarize_prob")}
        return [ViewConfig(**view) for view in preset_views(augment.preset, **fields)]

    mixed_view_sizes: ClassVar[bool] = False
    """Whether the method takes views of several sizes (multi-crop); those that concatenate
    their views into one batch do not."""

    @classmethod
    def accepted_views(cls, cfg: MethodConfig) -> tuple[int, int | None]:
        """``(fewest, most)`` views the method trains on with ``cfg`` (``None``: no upper
        bound); exactly two by default."""
        return 2, 2

    def project_views(self, step: StepInput) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Backbone and ``self.projector`` on every view; views of the same shape go through as
        one batch (their rows concatenated in view order, so BatchNorm sees the group's
        statistics), one group per shape in order of first appearance.

        Returns ``(features, projections)``: per view ``k``, in view order, the backbone
        features ``h_k: (B, D)`` and the projections ``z_k: (B, P)``. With two views of one
        shape this is one backbone pass on ``cat([x_1, x_2])``, as before multi-crop.
        """
        groups: dict[tuple, list[int]] = {}
        for k, x in enumerate(step.views):
            groups.setdefault(tuple(x.shape) if torch.is_tensor(x) else ("view", k), []).append(k)
        features: list[torch.Tensor] = [None] * len(step.views)  # type: ignore[list-item]
        projections: list[torch.Tensor] = [None] * len(step.views)  # type: ignore[list-item]
        for members in groups.values():
            h = self.backbone(torch.cat([step.views[k] for k in members]) if len(members) > 1 else step.views[members[0]])
            z = self.projector(h)
            for k, h_k, z_k in zip(members, h.chunk(len(members)), z.chunk(len(members))):
                features[k], projections[k] = h_k, z_k
        return features, projections

    def training_step(self, step: StepInput) -> dict[str, torch.Tensor]:
        """Returns ``{"loss": scalar, "features": (B, D) detached backbone output of view 0,
        ...further scalars to log}``; a true ``"skip_step"`` (bool scalar) asks the trainer to
        skip this batch's update (counted as ``skipped_steps``)."""
        raise NotImplementedError

    def forward(self, step: StepInput) -> dict[str, torch.Tensor]:
        return self.training_step(step)

    def on_after_optimizer_step(self, progress: float) -> None:
        """Called after every optimiser step (EMA teachers, queues); nothing by default."""

    def build_encoders(self, build_encoder: Callable[[], nn.Module]) -> None:
        """Called once after construction, before the method moves to the device and the
        optimisers are built: ``build_encoder()`` makes a new, independently initialised encoder
        of the configured backbone (a second trained encoder, a teacher). Nothing by default."""

    def parameter_groups(self, optim: OptimConfig) -> list[ParameterGroup]:
        """Parameters with optimiser settings of their own (``optim``: the run's main optimiser
        settings, to derive from); the trainer owns, schedules and checkpoints their optimisers.
        None by default: every trainable parameter is in the main optimiser."""
        return []

    def outer_parameters(self) -> list[nn.Parameter]:
        """Parameters the method updates itself (meta-learned ones: augmentation generators, a
        dimensional mask); the trainer's optimiser leaves them out. None by default."""
        return []

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Called once by the trainer with its optimiser, for methods whose virtual steps mimic
        its next update; nothing by default."""
