"""The dataset protocol every data kind implements, and the keys the trainer samples with.

A dataset is a map-style collection of samples plus a ``collate`` that turns a list of samples
into one batch dict. The trainer and evaluation only see this protocol; they move a batch to the
device with :func:`batch_to` without knowing what ``inputs`` holds (a tensor, a list of
per-view tensors, or any object with ``.to(device)`` such as a batch of graphs).

Batch dict:
    ``inputs``: the model inputs (images ``(B, C, H, W)`` uint8; per-view crops
        ``[(B, C, s_k, s_k) uint8, ...]`` when a streaming dataset crops at decode time; later
        sequences or graph batches);
    ``index``: ``(B,)`` int64 positions of the samples in the dataset;
    ``labels``: ``(B,)`` int64 and ``targets``: ``(B, T)`` float32 where the dataset has them;
    further per-sample extras (Spirograph's ``nuisance``).

Sample keys: evaluation asks for ``dataset[i]`` with ``i`` an int; training asks for
``dataset[SampleKey(i, seed)]``, where ``seed`` seeds whatever the dataset samples at load time
(a crop taken at decode time). Seeds depend only on (run seed, epoch, index), so resuming at an
epoch boundary replays the same samples. In-memory datasets ignore the seed.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch

Batch = dict[str, Any]


class SampleKey(NamedTuple):
    """The key of one training sample: its position and the seed of its load-time randomness."""

    index: int
    seed: int


def sample_seed(run_seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed determined by (run seed, epoch, sample index)."""
    return (((run_seed * 1_000_003 + epoch) * 1_000_033) + index) % (2**63 - 1)


@runtime_checkable
class Dataset(Protocol):
    """What the trainer and evaluation need of a dataset (see the module docstring).

    Attributes:
        name: dataset name, for messages.
        kind: the data kind, which picks the default views (``augment.preset: auto``):
            :func:`image_kind` for plain images, or a kind of the dataset's own
            (``"spirograph"``).
        labels: ``(N,)`` int64 class labels of every sample, or ``None``; available without
            decoding any sample (the probes and the online probe read them).
        targets: ``(N, T)`` float32 continuous targets, or ``None``.
        target_names: one name per column of ``targets``.
        classes: class names, indexable by label; empty when unlabelled.
    """

    name: str
    kind: str
    labels: torch.Tensor | None
    targets: torch.Tensor | None
    target_names: tuple[str, ...]
    classes: tuple[str, ...]

    def __len__(self) -> int: ...

    def __getitem__(self, key: int | SampleKey) -> Any: ...

    def collate(self, samples: list[Any]) -> Batch: ...

    def subset(self, index: torch.Tensor) -> "Dataset": ...


SMALL_IMAGE_SIDE = 64
"""Images at most this many pixels on a side are "small" (MNIST, CIFAR, STL at 64)."""


def image_kind(shape: tuple[int, int, int]) -> str:
    """The data kind of images of shape ``(C, H, W)``: ``gray-small`` / ``colour-small`` when
    the longer side is at most :data:`SMALL_IMAGE_SIDE`, else ``gray-large`` / ``colour-large``."""
    channels, height, width = shape
    tone = "gray" if channels == 1 else "colour"
    return f"{tone}-{'small' if max(height, width) <= SMALL_IMAGE_SIDE else 'large'}"


def num_classes(dataset: Dataset) -> int | None:
    """Number of classes of ``dataset``, or ``None`` when it has no labels."""
    if dataset.labels is None:
        return None
    return len(dataset.classes) if dataset.classes else int(dataset.labels.max()) + 1


def batch_to(batch: Batch, device: torch.device, non_blocking: bool = False) -> Batch:
    """``batch`` with every tensor, list of tensors or object with ``.to`` moved to ``device``."""

    def move(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return type(value)(move(v) for v in value)
        if torch.is_tensor(value):
            return value.to(device, non_blocking=non_blocking)
        if hasattr(value, "to"):
            return value.to(device)
        return value

    return {key: move(value) for key, value in batch.items()}
