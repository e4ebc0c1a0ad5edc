"""MoCo's feature queue and shuffle-BN in a real 2-process gloo job, against one process over
the concatenated batch (the losses' own 2-process tests are in test_losses_distributed.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from contrastlab.components.queue import FeatureQueue
from contrastlab.components.shuffle_bn import shuffled_forward
from contrastlab.core.distributed import DistEnv
from multiproc import run_ranks

WORLD, BATCH, DIM = 2, 8, 6


def keys() -> torch.Tensor:
    return torch.randn(BATCH, DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def shuffle_module() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(DIM, 4), nn.BatchNorm1d(4)).double().train()


def worker(env: DistEnv) -> dict:
    local = slice(env.rank * BATCH // WORLD, (env.rank + 1) * BATCH // WORLD)
    queue = FeatureQueue(size=12, dim=DIM).double()
    queue.features.zero_()
    queue.push(keys()[local])
    shuffled = shuffled_forward(shuffle_module(), keys()[local], 1, torch.Generator().manual_seed(5))
    return {"queue": (queue.features.clone(), int(queue.pointer)), "shuffled": shuffled}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return run_ranks(worker, tmp_path_factory.mktemp("baselines"), WORLD)


def test_every_rank_holds_the_same_queue_of_gathered_keys(ranks):
    expected = torch.nn.functional.normalize(keys(), dim=1)
    for features, pointer in (r["queue"] for r in ranks):
        assert pointer == BATCH
        assert torch.allclose(features[:BATCH], expected)  # rank 0's keys, then rank 1's
        assert torch.equal(features[BATCH:], torch.zeros(12 - BATCH, DIM, dtype=torch.float64))


def test_shuffle_bn_across_ranks(ranks):
    z1 = keys()
    order = torch.randperm(BATCH, generator=torch.Generator().manual_seed(5))  # rank 0's draw, broadcast
    module, expected = shuffle_module(), torch.empty(BATCH, 4, dtype=torch.float64)
    for chunk in order.view(WORLD, -1):  # each rank normalises its shuffled share
        expected[chunk] = module(z1[chunk]).detach()
    got = torch.cat([r["shuffled"] for r in ranks])
    assert torch.allclose(got, expected, atol=1e-10)
