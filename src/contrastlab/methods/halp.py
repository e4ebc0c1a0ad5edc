"""HaLP: Hallucinating Latent Positives (Shah, Roy, Shah, Mishra, Jacobs, Cherian, Chellappa;
CVPR 2023), an addition to MoCo for any data kind.

Prototypes are found by spherical k-means on the most recent ``prototype_keys`` queue entries
and refreshed every ``refresh_every`` steps. From each key the step hallucinates
``num_positives`` positives in closed form (a slerp toward another prototype, up to the
boundary of the key's own prototype region, hardness ``lambda ~ U(0, lambda_max)``, the rank
filter: :func:`~contrastlab.losses.hallucinate_positives`), and the loss is
``L_moco + halp_weight * L_halp`` (:func:`~contrastlab.losses.halp_loss`: the query pulled
toward its key's kept positives, at MoCo's temperature).

Gating as in the official code: no generation until the queue has been filled twice, i.e. more
than ``2 * queue_size`` keys enqueued since the start (the code's ``>= 2K + 1``); the
prototypes are first computed at that moment, then every ``refresh_every`` optimiser steps.

Readings: the count of keys enqueued is a buffer, saved in checkpoints (the official code
counts from each resume; here a resumed run continues exactly as an uninterrupted one), and
so are the prototypes and the steps left before the next refresh. The prototypes are computed
after the optimiser step, right after the step's keys are enqueued (as the official code does
after its enqueue); the k-means++ draws are seeded by the number of keys enqueued so far, the
same on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from contrastlab.components.queue import FeatureQueue
from contrastlab.core.config import ConfigError
from contrastlab.core.distributed import rank_and_world
from contrastlab.losses import hallucinate_positives, halp_loss, spherical_kmeans
from contrastlab.losses.halp import ALWAYS_HARDEST
from contrastlab.methods.base import StepInput
from contrastlab.methods.moco import MoCo, MoCoConfig
from contrastlab.methods.registry import METHODS


@dataclass
class HaLPConfig(MoCoConfig):
    RANGES: ClassVar[dict[str, str]] = {
        "num_prototypes": ">= 2", "prototype_keys": ">= 2", "refresh_every": ">= 1", "num_positives": ">= 1",
        "num_candidates": ">= 1", "skip": ">= 0", "halp_weight": ">= 0", "kmeans_tol": "> 0",
        "kmeans_iterations": ">= 1",
    }

    num_prototypes: int = 20  # P: spherical k-means clusters
    prototype_keys: int = 256  # the most recent queue entries the prototypes are computed from
    refresh_every: int = 10  # optimiser steps between prototype refreshes
    num_positives: int = 100  # G: hallucinated positives per key
    num_candidates: int = 20  # targets: this many most similar prototypes after skipping `skip`
    skip: int = 1  # most similar prototypes not used as targets (the first is the key's own)
    lambda_max: float = 0.8  # hardness: lambda ~ U(0, lambda_max), t = (1 - lambda) t_max; 1000: t_max - 0.01
    halp_weight: float = 1.0  # mu (2 on NTU, 1 on PKU-MMD in the paper's scripts)
    kmeans_tol: float = 1e-3  # stop when no centroid moves more than this
    kmeans_iterations: int = 100  # spherical k-means: iteration cap per refresh

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        if not (0 <= self.lambda_max <= 1 or self.lambda_max == ALWAYS_HARDEST):
            raise ConfigError(f"{prefix}.lambda_max must be in [0, 1], or {ALWAYS_HARDEST:g} for always the "
                              f"hardest positive (t = t_max - 0.01), got {self.lambda_max!r}")
        if self.prototype_keys > self.queue_size:
            raise ConfigError(f"{prefix}.prototype_keys={self.prototype_keys} must be at most {prefix}.queue_size="
                              f"{self.queue_size}: the prototypes come from the most recent queue entries (the "
                              f"queue is lowered to the training-set size when larger)")
        if self.num_prototypes > self.prototype_keys:
            raise ConfigError(f"{prefix}.num_prototypes={self.num_prototypes} must be at most {prefix}."
                              f"prototype_keys={self.prototype_keys}: k-means needs a key per cluster")
        if self.skip >= self.num_prototypes:
            raise ConfigError(f"{prefix}.skip={self.skip} must be smaller than {prefix}.num_prototypes="
                              f"{self.num_prototypes}: no prototype would be left as a target")


def recent_entries(queue: FeatureQueue, count: int) -> torch.Tensor:
    """``(count, D)``: the ``count`` most recently enqueued rows of ``queue``, oldest first."""
    size = queue.features.shape[0]
    positions = (queue.pointer - count + torch.arange(count, device=queue.features.device)) % size
    return queue.features[positions]


@METHODS.register("halp", "HaLP: MoCo plus positives hallucinated toward other prototypes (Shah et al., 2023)")
class HaLP(MoCo):
    Config = HaLPConfig

    def __init__(self, cfg: HaLPConfig, backbone: nn.Module) -> None:
        super().__init__(cfg, backbone)
        self.register_buffer("keys_seen", torch.zeros((), dtype=torch.long))  # enqueued since the start
        self.register_buffer("prototypes", torch.zeros(cfg.num_prototypes, cfg.proj_out_dim))
        self.register_buffer("steps_to_refresh", torch.zeros((), dtype=torch.long))  # 0: refresh at the next one

    @property
    def generating(self) -> bool:
        """Whether the queue has been filled twice (and the prototypes computed)."""
        return int(self.keys_seen) > 2 * self.cfg.queue_size

    def training_step(self, step: StepInput) -> dict[str, torch.Tensor]:
        """MoCo's step, plus the HaLP term on each query-key pair."""
        features, queries, keys, terms = self.contrast_with_queue(step)
        moco = terms.pop("loss")
        halp, kept = self._halp_terms(queries, keys, step.generator)
        return {**terms, "loss": moco + self.cfg.halp_weight * halp, "features": features,
                "moco_loss": moco.detach(), "halp_loss": halp.detach(), "halp_kept": kept,
                "halp_active": torch.tensor(float(self.generating))}

    def _halp_terms(self, queries: tuple[torch.Tensor, ...], keys: list[torch.Tensor],
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The HaLP loss averaged over the query-key pairs, and the fraction of positives kept
        by the rank filter; both 0 before generation starts."""
        if not self.generating:
            return queries[0].new_zeros(()), torch.zeros(())
        losses, kept = [], []
        for q, k in zip(queries, keys):
            made = hallucinate_positives(k, self.prototypes, self.cfg.num_positives, self.cfg.num_candidates,
                                         self.cfg.skip, self.cfg.lambda_max, generator)
            losses.append(halp_loss(q, made, self.cfg.temperature))
            kept.append(made.kept.float().mean())
        return sum(losses) / len(losses), (sum(kept) / len(kept)).cpu()

    def on_after_optimizer_step(self, progress: float) -> None:
        """MoCo's (EMA, enqueue), then count the keys enqueued and refresh the prototypes when due."""
        pushed = 0 if self._keys is None else self._keys.shape[0] * rank_and_world()[1]
        super().on_after_optimizer_step(progress)
        self.keys_seen += pushed
        if not self.generating:
            return
        if int(self.steps_to_refresh) == 0:
            self._refresh_prototypes()
            self.steps_to_refresh.fill_(self.cfg.refresh_every)
        self.steps_to_refresh -= 1

    @torch.no_grad()
    def _refresh_prototypes(self) -> None:
        generator = torch.Generator().manual_seed(int(self.keys_seen))
        points = recent_entries(self.queue, self.cfg.prototype_keys).float()
        result = spherical_kmeans(points, self.cfg.num_prototypes, generator, self.cfg.kmeans_tol,
                                  self.cfg.kmeans_iterations)
        self.prototypes.copy_(result.centroids)
