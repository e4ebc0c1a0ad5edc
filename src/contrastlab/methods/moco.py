"""MoCo v2 (Chen et al., 2020): queries against a momentum encoder's keys and a queue.

``method.loss=difficulty`` (our reading: the paper's code weighs a SimCLR batch's negatives
only): the biased encoder sees both views, its query-key cosine is the triplet loss's positive
(gradients through both views: it has no momentum copy) and a second FIFO queue of its
embeddings of the enqueued images, filled in step with MoCo's, holds its negatives. A queue
entry is then the same image in both queues, so the difficulty weights compare the two
encoders' similarities to the same negatives, each as old as MoCo's key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from contrastlab.components.momentum import EMATeacher, cosine_momentum
from contrastlab.components.queue import FeatureQueue
from contrastlab.components.shuffle_bn import guarded_forward
from contrastlab.core.config import ConfigError
from contrastlab.losses import contrastive_loss, queue_pairs
from contrastlab.methods.base import WITH_EMA_TEACHER, StepInput
from contrastlab.methods.registry import METHODS
from contrastlab.methods.simclr import ContrastiveConfig, ContrastiveMethod


@dataclass
class MoCoConfig(ContrastiveConfig):
    RANGES: ClassVar[dict[str, str]] = {"queue_size": ">= 1", "base_momentum": "in [0, 1]",
                                        "final_momentum": "in [0, 1]", "bn_splits": ">= 1"}
    TRAIN_CAPPED_FIELDS: ClassVar[tuple[str, ...]] = ("queue_size",)  # at most the training-set size

    temperature: float = 0.2
    queue_size: int = 65536  # lowered to the training-set size when larger (engine.setup)
    base_momentum: float = 0.99  # key encoder EMA; MoCo v2 uses 0.999 at 200+ epochs
    final_momentum: float = 0.99  # > base_momentum: cosine schedule towards it
    bn_guard: Literal["shuffle", "none"] = "shuffle"  # or none + train.sync_batchnorm=true
    bn_splits: int = 2  # one process: shuffled chunks for the key encoder's BatchNorm
    symmetric: bool = False  # also contrast view 2's query with view 1's key

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        if self.loss == "mmcl":
            k = self.queue_size
            raise ConfigError(
                f"{prefix}.loss=mmcl solves an SVM per query over its negatives: over MoCo's queue of "
                f"{prefix}.queue_size={k} keys the closed form needs a Gram tensor of batch x {k} x {k} "
                f"({4 * 256 * k**2 / 2**30:,.0f} GiB in float32 at batch 256) and the projected gradient a "
                f"{k} x {k} kernel matrix and batch x {k} x {k} multiply-adds per iteration; use "
                f"method.name=simclr (the batch's own negatives)")


@METHODS.register("moco", "MoCo v2: momentum key encoder and a queue of negatives (Chen et al., 2020)")
class MoCo(ContrastiveMethod):
    Config = MoCoConfig
    EVAL_ENCODERS = WITH_EMA_TEACHER

    def __init__(self, cfg: MoCoConfig, backbone: nn.Module) -> None:
        super().__init__(cfg, backbone)
        self.projector = self.make_projector()
        self.teacher = EMATeacher(self.backbone, self.projector)
        self.queue = FeatureQueue(cfg.queue_size, cfg.proj_out_dim)
        if cfg.loss == "difficulty":
            self.biased_queue = FeatureQueue(cfg.queue_size, cfg.proj_out_dim)
        self._keys: torch.Tensor | None = None
        self._biased_keys: torch.Tensor | None = None

    def _keys_of(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return guarded_forward(self.teacher.module, x, self.cfg.bn_guard, self.cfg.bn_splits, generator)

    def training_step(self, step: StepInput) -> dict[str, torch.Tensor]:
        features, _, _, terms = self.contrast_with_queue(step)
        return {**terms, "features": features}

    def contrast_with_queue(self, step: StepInput) -> tuple[torch.Tensor, tuple[torch.Tensor, ...],
                                                             list[torch.Tensor], dict[str, torch.Tensor]]:
        """The backbone features of view 1 (detached), the queries, their keys (the other
        view's, from the teacher; kept for the enqueue after the optimiser step) and the loss
        terms: ``"loss"``, averaged over the query-key pairs (two when symmetric), and with
        ``loss: difficulty`` its logged terms and ``skip_step``."""
        x1, x2 = step.views
        views = (x1, x2) if self.cfg.symmetric else (x1,)
        h = self.backbone(torch.cat(views))
        queries = self.projector(h).chunk(len(views))
        keys = [self._keys_of(x2, step.generator)]
        if self.cfg.symmetric:
            keys.append(self._keys_of(x1, step.generator))
        # The keys are enqueued only after the optimiser step, when backward no longer needs the queue.
        self._keys = torch.cat(keys)
        pairs = [queue_pairs(q, k, self.queue.features) for q, k in zip(queries, keys)]
        if self.cfg.loss == "difficulty":
            terms = self._difficulty_terms(step.views, pairs)
        else:
            losses = [contrastive_loss(pos, neg, self.cfg.temperature, **self.cfg.loss_options()) for pos, neg in pairs]
            terms = {"loss": sum(losses) / len(losses)}
        return h[: x1.shape[0]].detach(), queries, keys, terms

    def _difficulty_terms(self, views: list[torch.Tensor],
                          pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """:meth:`difficulty_terms` of each query-key pair against the two queues (see the
        module docstring), averaged over the pairs; the step is skipped when any pair's main
        loss is not finite."""
        b1, b2 = self.biased_projections(views)
        biased = [(b1, b2), (b2, b1)][: len(pairs)]
        self._biased_keys = torch.cat([key for _, key in biased]).detach()
        terms = [self.difficulty_terms(pos, neg, *queue_pairs(query, key, self.biased_queue.features,
                                                              key_grad=True))
                 for (pos, neg), (query, key) in zip(pairs, biased)]
        mean = {name: sum(t[name] for t in terms) / len(terms) for name in terms[0] if name != "skip_step"}
        return {**mean, "skip_step": torch.stack([t["skip_step"] for t in terms]).any()}

    def on_after_optimizer_step(self, progress: float) -> None:
        momentum = cosine_momentum(self.cfg.base_momentum, self.cfg.final_momentum, progress)
        self.teacher.update(momentum, self.backbone, self.projector)
        if self._keys is not None:
            self.queue.push(self._keys)
            self._keys = None
        if self._biased_keys is not None:
            self.biased_queue.push(self._biased_keys)
            self._biased_keys = None
