"""The in-memory dataset every loader returns, and the error type for bad data files."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


class DataError(ValueError):
    """A data file or folder is missing or not in the expected format.

    The message always names the file (or folder) and what was expected.
    """


@dataclass
class ImageData:
    """One split of a dataset, held in memory.

    Attributes:
        name: dataset name (``"fashion-mnist"``, ``"spirograph"``, ...).
        images: ``(N, C, H, W)`` uint8 tensor.
        labels: ``(N,)`` int64 class labels, or ``None`` for unlabelled data.
        targets: ``(N, T)`` float32 continuous targets (Spirograph's factors), or ``None``.
        target_names: one name per column of ``targets``.
        classes: class names, indexable by label; empty when unlabelled.
        extras: further per-sample tensors with first dimension ``N`` (e.g. Spirograph's
            ``nuisance`` parameters).
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    target_names: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(
                f"{self.name}: images must be a uint8 tensor (N, C, H, W), "
                f"got {self.images.dtype} with shape {tuple(self.images.shape)}"
            )
        n = self.images.shape[0]
        per_sample = {"labels": self.labels, "targets": self.targets, **self.extras}
        for key, value in per_sample.items():
            if value is not None and value.shape[0] != n:
                raise DataError(
                    f"{self.name}: {n} images but {value.shape[0]} {key}; expected one per image"
                )
        if self.targets is not None and len(self.target_names) != self.targets.shape[1]:
            raise DataError(
                f"{self.name}: {self.targets.shape[1]} target columns but "
                f"{len(self.target_names)} target names"
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int | None:
        """Number of classes, or ``None`` when the split has no labels."""
        if self.labels is None:
            return None
        return len(self.classes) if self.classes else int(self.labels.max()) + 1

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, index: torch.Tensor) -> "ImageData":
        """The samples at ``index`` (a 1-D index or boolean mask tensor)."""

        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[index]

        return ImageData(
            name=self.name,
            images=self.images[index],
            labels=take(self.labels),
            targets=take(self.targets),
            target_names=self.target_names,
            classes=self.classes,
            extras={k: v[index] for k, v in self.extras.items()},
        )
