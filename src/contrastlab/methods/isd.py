"""ISD: Iterative Similarity Distillation (Tejankar, Koohpayegani, Pillai, Favaro, Pirsiavash;
ICCV 2021), a soft MoCo.

A student (backbone, optional projection MLP, predictor MLP) sees view 1; an EMA teacher
(backbone and projection, no predictor) sees view 0 and fills a FIFO memory bank with its
embeddings. The student matches the teacher's softened similarities to the bank
(:func:`~contrastlab.losses.similarity_distillation`); the two views are never contrasted, so
bank images similar to the query are not pushed away.

Two forms of the official code: ``projection: false`` (``train_isd.py``, ResNet-18: no
projection, a 512-512-512 predictor, both views MoCo v2's strong augmentation, temperature 0.02
for both, momentum 0.999) and ``projection: true`` (``train_isd_plus.py``, ResNet-50:
projections 2048-4096-512 on both encoders, a 512-4096-512 predictor, a *weak* teacher view
(crop + flip) and a strong student view, temperatures 0.01 / 0.1, momentum 0.99).

Readings: the official code updates the teacher before its forward pass each step; we update it
after each optimiser step (:meth:`ISD.on_after_optimizer_step`), which is the same update
before the next step's forward (the student's weights do not change in between). The bank
starts as random unit vectors, normalised per row (``train_isd.py`` normalises along the other
axis; harmless once the first ``queue_size / batch`` steps have filled it). The bank is
snapshotted before the step's keys are enqueued (they are enqueued after the optimiser step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from contrastlab.components.heads import MLPHead
from contrastlab.components.momentum import EMATeacher, cosine_momentum
from contrastlab.components.queue import FeatureQueue
from contrastlab.components.shuffle_bn import guarded_forward
from contrastlab.core.config import MethodConfig
from contrastlab.losses import similarity_distillation
from contrastlab.methods.base import WITH_EMA_TEACHER, Method, StepInput
from contrastlab.methods.registry import METHODS


@dataclass
class ISDConfig(MethodConfig):
    RANGES: ClassVar[dict[str, str]] = {
        "pred_hidden_dim": ">= 1", "teacher_temperature": "> 0", "student_temperature": "> 0",
        "queue_size": ">= 1", "base_momentum": "in [0, 1]", "final_momentum": "in [0, 1]", "bn_splits": ">= 1",
    }
    TRAIN_CAPPED_FIELDS: ClassVar[tuple[str, ...]] = ("queue_size",)  # at most the training-set size

    projection: bool = False  # true: the "plus" form, projection MLPs on both encoders
    proj_hidden_dim: int = 4096  # projection (when projection): out_dim -> proj_hidden_dim -> proj_out_dim
    proj_out_dim: int = 512
    pred_hidden_dim: int = 512  # predictor: embedding -> pred_hidden_dim -> embedding
    teacher_temperature: float = 0.02  # softens the teacher's similarities to the bank
    student_temperature: float = 0.02  # softens the student's similarities to the bank
    queue_size: int = 128_000  # lowered to the training-set size when larger (engine.setup)
    base_momentum: float = 0.999  # the EMA teacher's momentum
    final_momentum: float = 0.999  # > base_momentum: cosine schedule towards it
    bn_guard: Literal["shuffle", "none"] = "shuffle"  # or none + train.sync_batchnorm=true
    bn_splits: int = 2  # one process: shuffled chunks for the teacher's BatchNorm


@METHODS.register("isd", "ISD: an EMA teacher's similarities to a memory bank distilled into the student (Tejankar et al., 2021)")
class ISD(Method):
    Config = ISDConfig
    EVAL_ENCODERS = WITH_EMA_TEACHER

    def __init__(self, cfg: ISDConfig, backbone: nn.Module) -> None:
        super().__init__(cfg, backbone)
        self.projector = self.make_projector() if cfg.projection else nn.Identity()
        dim = cfg.proj_out_dim if cfg.projection else backbone.out_dim
        self.predictor = MLPHead(dim, cfg.pred_hidden_dim, dim)
        self.teacher = EMATeacher(self.backbone, self.projector)
        self.bank = FeatureQueue(cfg.queue_size, dim)
        self._keys: torch.Tensor | None = None

    def training_step(self, step: StepInput) -> dict[str, torch.Tensor]:
        """View 0 to the teacher, view 1 to the student. ``features``: the student's backbone
        output (on view 1, the only view it sees)."""
        x_teacher, x_student = step.views
        h = self.backbone(x_student)
        student = self.predictor(self.projector(h))
        keys = guarded_forward(self.teacher.module, x_teacher, self.cfg.bn_guard, self.cfg.bn_splits, step.generator)
        # The keys are enqueued after the optimiser step: the loss sees the bank from before it.
        loss = similarity_distillation(student, keys, self.bank.features, self.cfg.student_temperature,
                                       self.cfg.teacher_temperature)
        self._keys = keys
        return {"loss": loss, "features": h.detach()}

    def on_after_optimizer_step(self, progress: float) -> None:
        momentum = cosine_momentum(self.cfg.base_momentum, self.cfg.final_momentum, progress)
        self.teacher.update(momentum, self.backbone, self.projector)
        if self._keys is not None:
            self.bank.push(self._keys)
            self._keys = None
