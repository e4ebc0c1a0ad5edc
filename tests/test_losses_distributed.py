"""DCL, HCL and Barlow Twins in a real 2-process gloo job (one spawn for the module), each
against one process over the concatenated batch, in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from contrastlab.core.distributed import DistEnv
from contrastlab.engine.distributed import wrap_ddp
from contrastlab.losses import barlow_twins_loss, nt_xent
from multiproc import run_ranks

WORLD, BATCH, DIM, IN_DIM = 2, 8, 6, 4
LOSSES = {
    "dcl": lambda z1, z2: nt_xent(z1, z2, 0.5, kind="dcl", tau_plus=0.1),
    "hcl": lambda z1, z2: nt_xent(z1, z2, 0.2, kind="hcl", tau_plus=0.05, beta=1.0),
    "barlow": lambda z1, z2: barlow_twins_loss(z1, z2, 0.1),
}


def views() -> tuple[torch.Tensor, torch.Tensor]:
    """``z1, z2: (BATCH, DIM)`` float64 projections of the whole (global) batch."""
    g = torch.Generator().manual_seed(0)
    return (torch.randn(BATCH, DIM, generator=g, dtype=torch.float64),
            torch.randn(BATCH, DIM, generator=g, dtype=torch.float64))


def inputs() -> torch.Tensor:
    """``x: (2 * BATCH, IN_DIM)`` model inputs: first view of every image, then second."""
    return torch.randn(2 * BATCH, IN_DIM, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def projector() -> nn.Linear:
    torch.manual_seed(2)
    return nn.Linear(IN_DIM, DIM).double()


def local_slice(rank: int) -> slice:
    return slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)


def worker(env: DistEnv) -> dict:
    """Per loss: this rank's loss and input gradients; for Barlow Twins also the parameter
    gradients of a DDP-wrapped projector (every rank computes the full-batch loss)."""
    local = local_slice(env.rank)
    results = {}
    for name, loss_fn in LOSSES.items():
        z1, z2 = (z[local].clone().requires_grad_() for z in views())
        loss = loss_fn(z1, z2)
        loss.backward()
        results[name] = (loss.detach(), z1.grad, z2.grad)
    model = wrap_ddp(projector(), env)
    x = inputs()
    z1, z2 = model(torch.cat([x[:BATCH][local], x[BATCH:][local]])).chunk(2)
    LOSSES["barlow"](z1, z2).backward()
    results["ddp_grads"] = {name: p.grad for name, p in model.module.named_parameters()}
    return results


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return run_ranks(worker, tmp_path_factory.mktemp("losses"), WORLD)


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_and_input_gradients_match_one_process(ranks, name):
    z1, z2 = (z.clone().requires_grad_() for z in views())
    loss = LOSSES[name](z1, z2)
    g1, g2 = torch.autograd.grad(loss, (z1, z2))
    mean_loss = sum(r[name][0] for r in ranks) / WORLD
    torch.testing.assert_close(mean_loss, loss.detach(), rtol=0, atol=1e-10)
    for rank, res in enumerate(ranks):
        local = local_slice(rank)
        # DDP averages parameter gradients over ranks: the input gradients are divided by WORLD
        torch.testing.assert_close(res[name][1] / WORLD, g1[local], rtol=0, atol=1e-10)
        torch.testing.assert_close(res[name][2] / WORLD, g2[local], rtol=0, atol=1e-10)


def test_barlow_twins_gives_every_rank_the_full_batch_loss(ranks):
    assert torch.equal(ranks[0]["barlow"][0], ranks[1]["barlow"][0])


def test_barlow_twins_ddp_parameter_gradients_match_one_process(ranks):
    model, x = projector(), inputs()
    z1, z2 = model(x).chunk(2)
    LOSSES["barlow"](z1, z2).backward()
    for res in ranks:
        for name, p in model.named_parameters():
            torch.testing.assert_close(res["ddp_grads"][name], p.grad, rtol=0, atol=1e-10)
