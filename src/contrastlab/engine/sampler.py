"""The training sample keys of each epoch, per rank: seeded order, shard, batches."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from contrastlab.core.distributed import DistEnv, shard_indices
from contrastlab.data.dataset import SampleKey, sample_seed


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A CPU generator determined by (seed, epoch, stream): resuming at an epoch boundary
    replays exactly the same data order (stream 0) and augmentations (stream 1 + rank)."""
    return torch.Generator().manual_seed(((seed * 1_000_003) + epoch) * 1_009 + stream)


class EpochBatches:
    """This rank's batches of :class:`SampleKey` for the epoch set by :meth:`set_epoch`.

    The order is a permutation of the ``size`` samples seeded by (``seed``, epoch), sharded over
    the ranks (:func:`shard_indices`); ``steps`` batches of ``batch_size`` keys are yielded (the
    last one smaller when ``steps`` reaches into the epoch's remainder; the rest is dropped). Each key's seed depends on (``seed``, epoch, index) only.
    Usable as a DataLoader ``batch_sampler`` whose content changes from epoch to epoch.
    """

    def __init__(self, size: int, batch_size: int, steps: int, seed: int, env: DistEnv) -> None:
        self.size, self.batch_size, self.steps, self.seed, self.env = size, batch_size, steps, seed, env
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        """This rank's sample positions of the epoch: ``(size // world,)`` int64."""
        permutation = torch.randperm(self.size, generator=epoch_generator(self.seed, self.epoch, 0))
        return shard_indices(permutation, self.env)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        local = self.order().tolist()
        for i in range(self.steps):
            index = local[i * self.batch_size : (i + 1) * self.batch_size]
            yield [SampleKey(j, sample_seed(self.seed, self.epoch, j)) for j in index]

    def __len__(self) -> int:
        return self.steps
