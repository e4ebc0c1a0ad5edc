"""In-memory datasets (the fast path for small data: images, and the protocol any in-memory
tensor data shares), and the error type for bad data files."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from contrastlab.data.dataset import Batch, SampleKey, image_kind


class DataError(ValueError):
    """A data file or folder is missing or not in the expected format.

    The message always names the file (or folder) and what was expected.
    """


class InMemorySamples:
    """The dataset protocol for a dataclass whose per-sample tensors (first dimension ``N``)
    are its ``INPUTS`` field, ``labels``, ``targets`` and ``extras``: one gather per field
    (:meth:`get_batch`, the loader's fast path), samples as batches of one, subsets."""

    INPUTS: str = "images"  # the field that holds the model inputs

    def __len__(self) -> int:
        return getattr(self, self.INPUTS).shape[0]

    def get_batch(self, index: torch.Tensor) -> Batch:
        """The batch of the samples at ``index``: ``(B,)`` int64:
        ``{"inputs", "index": (B,), "labels", "targets", extras}``."""
        batch: Batch = {"inputs": getattr(self, self.INPUTS)[index], "index": index}
        if self.labels is not None:
            batch["labels"] = self.labels[index]
        if self.targets is not None:
            batch["targets"] = self.targets[index]
        batch.update({key: value[index] for key, value in self.extras.items()})
        return batch

    def __getitem__(self, key: int | SampleKey) -> Batch:
        """One sample as a batch of one (the seed of a :class:`SampleKey` is not needed)."""
        index = key.index if isinstance(key, SampleKey) else int(key)
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: sample {index} out of range for {len(self)} samples")
        return self.get_batch(torch.tensor([index % len(self)]))

    def collate(self, samples: list[Batch]) -> Batch:
        """Samples from :meth:`__getitem__` -> one batch (fields concatenated)."""
        return {key: torch.cat([s[key] for s in samples]) for key in samples[0]}

    @property
    def num_classes(self) -> int | None:
        """Number of classes, or ``None`` when the split has no labels."""
        if self.labels is None:
            return None
        return len(self.classes) if self.classes else int(self.labels.max()) + 1

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one sample's inputs."""
        return tuple(getattr(self, self.INPUTS).shape[1:])

    def subset(self, index: torch.Tensor):  # noqa: ANN201 - the same class
        """The samples at ``index`` (a 1-D index or boolean mask tensor)."""

        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[index]

        return dataclasses.replace(self, **{self.INPUTS: getattr(self, self.INPUTS)[index]},
                                   labels=take(self.labels), targets=take(self.targets),
                                   extras={k: v[index] for k, v in self.extras.items()})

    def check_per_sample(self) -> None:
        """Every per-sample field has one row per sample, and one name per target column."""
        n = len(self)
        per_sample = {"labels": self.labels, "targets": self.targets, **self.extras}
        for key, value in per_sample.items():
            if value is not None and value.shape[0] != n:
                raise DataError(f"{self.name}: {n} samples but {value.shape[0]} {key}; expected one per sample")
        if self.targets is not None and len(self.target_names) != self.targets.shape[1]:
            raise DataError(f"{self.name}: {self.targets.shape[1]} target columns but "
                            f"{len(self.target_names)} target names")


@dataclass
class ImageData(InMemorySamples):
    """One split of an image dataset, held in memory; implements the dataset protocol
    (:class:`~contrastlab.data.dataset.Dataset`) with a vectorised :meth:`get_batch` fast path.

    Attributes:
        name: dataset name (``"fashion-mnist"``, ``"spirograph"``, ...).
        images: ``(N, C, H, W)`` uint8 tensor.
        labels: ``(N,)`` int64 class labels, or ``None`` for unlabelled data.
        targets: ``(N, T)`` float32 continuous targets (Spirograph's factors), or ``None``.
        target_names: one name per column of ``targets``.
        classes: class names, indexable by label; empty when unlabelled.
        extras: further per-sample tensors with first dimension ``N`` (e.g. Spirograph's
            ``nuisance`` parameters).
        kind: the data kind (:func:`~contrastlab.data.dataset.image_kind` of the image shape
            unless given).
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    target_names: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    kind: str = ""

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(
                f"{self.name}: images must be a uint8 tensor (N, C, H, W), "
                f"got {self.images.dtype} with shape {tuple(self.images.shape)}"
            )
        self.check_per_sample()
        self.kind = self.kind or image_kind(self.shape)
