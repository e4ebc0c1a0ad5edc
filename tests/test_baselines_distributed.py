"""DCL/HCL, Barlow Twins, the feature queue and shuffle-BN in a real 2-process gloo job,
each against one process over the concatenated batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from contrastlab.engine.distributed import DistEnv
from contrastlab.losses import barlow_twins_loss, nt_xent
from contrastlab.methods.queue import FeatureQueue
from contrastlab.methods.shuffle_bn import shuffled_forward
from multiproc import run_ranks

WORLD, BATCH, DIM = 2, 8, 6
LOSSES = {
    "dcl": lambda z1, z2: nt_xent(z1, z2, 0.5, kind="dcl", tau_plus=0.1),
    "hcl": lambda z1, z2: nt_xent(z1, z2, 0.5, kind="hcl", tau_plus=0.1, beta=1.0),
    "barlow": lambda z1, z2: barlow_twins_loss(z1, z2, 0.1),
}


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(BATCH, DIM, generator=g, dtype=torch.float64),
            torch.randn(BATCH, DIM, generator=g, dtype=torch.float64))


def shuffle_module() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(DIM, 4), nn.BatchNorm1d(4)).double().train()


def worker(env: DistEnv) -> dict:
    local = slice(env.rank * BATCH // WORLD, (env.rank + 1) * BATCH // WORLD)
    results = {}
    for name, loss_fn in LOSSES.items():
        z1, z2 = (z[local].clone().requires_grad_() for z in batch())
        loss = loss_fn(z1, z2)
        loss.backward()
        results[name] = (loss.detach(), z1.grad, z2.grad)
    queue = FeatureQueue(size=12, dim=DIM).double()
    queue.features.zero_()
    z1, _ = batch()
    queue.push(z1[local])
    results["queue"] = (queue.features.clone(), int(queue.pointer))
    results["shuffled"] = shuffled_forward(shuffle_module(), z1[local], 1, torch.Generator().manual_seed(5))
    return results


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return run_ranks(worker, tmp_path_factory.mktemp("baselines"), WORLD)


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_and_gradients_match_one_process(ranks, name):
    z1, z2 = (z.clone().requires_grad_() for z in batch())
    loss = LOSSES[name](z1, z2)
    g1, g2 = torch.autograd.grad(loss, (z1, z2))
    mean_loss = sum(r[name][0] for r in ranks) / WORLD
    assert torch.allclose(mean_loss, loss, atol=1e-10)
    for rank, res in enumerate(ranks):
        local = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        # DDP averages parameter gradients over ranks: the input gradients are divided by WORLD
        assert torch.allclose(res[name][1] / WORLD, g1[local], atol=1e-10)
        assert torch.allclose(res[name][2] / WORLD, g2[local], atol=1e-10)


def test_every_rank_holds_the_same_queue_of_gathered_keys(ranks):
    z1, _ = batch()
    expected = torch.nn.functional.normalize(z1, dim=1)
    for features, pointer in (r["queue"] for r in ranks):
        assert pointer == BATCH
        assert torch.allclose(features[:BATCH], expected)  # rank 0's keys, then rank 1's
        assert torch.equal(features[BATCH:], torch.zeros(12 - BATCH, DIM, dtype=torch.float64))


def test_shuffle_bn_across_ranks(ranks):
    z1, _ = batch()
    order = torch.randperm(BATCH, generator=torch.Generator().manual_seed(5))  # rank 0's draw, broadcast
    module, expected = shuffle_module(), torch.empty(BATCH, 4, dtype=torch.float64)
    for chunk in order.view(WORLD, -1):  # each rank normalises its shuffled share
        expected[chunk] = module(z1[chunk]).detach()
    got = torch.cat([r["shuffled"] for r in ranks])
    assert torch.allclose(got, expected, atol=1e-10)
