"""Skeleton sequences as a data kind: ``(N, 3, T, V, M)`` float32 joint coordinates (x, y, z;
frames; joints; persons), the layout of the NTU RGB+D loaders of the skeleton literature.

Their views (:mod:`contrastlab.data.skeleton_augment`) are batched, seeded transforms on the
training device; the encoders (:mod:`contrastlab.models.sequence`) read ``(B, 3, T, V, M)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from contrastlab.data.base import DataError, InMemorySamples

SKELETON_KIND = "skeleton"
"""The data kind of every skeleton dataset (its views: :mod:`contrastlab.data.skeleton_augment`)."""


@dataclass
class SkeletonData(InMemorySamples):
    """One split of skeleton sequences, held in memory (the dataset protocol, with the
    vectorised :meth:`get_batch`).

    Attributes:
        name: dataset name.
        sequences: ``(N, 3, T, V, M)`` float32 joint coordinates; an absent person is zeros.
        labels: ``(N,)`` int64 action labels, or ``None``.
        classes: action names, indexable by label.
        extras: further per-sample tensors (the generator's ``nuisance``).
    """

    INPUTS = "sequences"

    name: str
    sequences: torch.Tensor
    labels: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    target_names: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    kind: str = SKELETON_KIND

    def __post_init__(self) -> None:
        if self.sequences.dtype != torch.float32 or self.sequences.dim() != 5 or self.sequences.shape[1] != 3:
            raise DataError(f"{self.name}: sequences must be float32 (N, 3, T, V, M), got "
                            f"{self.sequences.dtype} with shape {tuple(self.sequences.shape)}")
        if not torch.isfinite(self.sequences).all():
            raise DataError(f"{self.name}: sequences hold NaN or infinite coordinates")
        self.check_per_sample()
