"""torch.distributed helpers, checked against single-process references in a real 2-process
gloo job on CPU (one spawn for the whole module; every collective is bounded by a timeout)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from contrastlab.core.distributed import (
    DistEnv,
    all_gather_no_grad,
    all_reduce_mean,
    gather_with_grad,
    is_main_process,
    rank_and_world,
    shard_indices,
)
from contrastlab.engine.distributed import (
    cleanup_distributed,
    init_distributed,
    maybe_sync_batchnorm,
    wrap_ddp,
)
from contrastlab.losses import nt_xent
from multiproc import run_ranks

WORLD = 2
BATCH, DIM, IN_DIM = 8, 16, 5
TEMPERATURE = 0.5
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def fixed_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``z1, z2: (BATCH, DIM)`` float64 projections and ``x: (2 * BATCH, IN_DIM)`` model inputs."""
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(BATCH, DIM, generator=g, dtype=torch.float64)
    z2 = torch.randn(BATCH, DIM, generator=g, dtype=torch.float64)
    x = torch.randn(2 * BATCH, IN_DIM, generator=g, dtype=torch.float64)
    return z1, z2, x


def tiny_model() -> nn.Linear:
    torch.manual_seed(1)
    return nn.Linear(IN_DIM, DIM).double()


def linear_loss(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """NT-Xent of the model's projections of two views ``x1, x2: (B, IN_DIM)``."""
    z1, z2 = model(torch.cat([x1, x2])).chunk(2)
    return nt_xent(z1, z2, TEMPERATURE)


# ----------------------------------------------------------------------------- worker
def worker(env: DistEnv) -> dict:
    """One rank of the 2-process job: runs every distributed check and returns the results."""
    rank = env.rank
    results: dict = {"env": env, "rank_and_world": rank_and_world(), "is_main": is_main_process()}
    local = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)

    z1, z2, x = fixed_batch()
    z1, z2 = z1[local].requires_grad_(), z2[local].requires_grad_()
    loss = nt_xent(z1, z2, TEMPERATURE)
    loss.backward()
    results["nt_xent"] = (loss.detach(), z1.grad, z2.grad)

    model = wrap_ddp(tiny_model(), env)
    x1, x2 = x[:BATCH][local], x[BATCH:][local]
    linear_loss(model, x1, x2).backward()
    results["ddp_type"] = type(model).__name__
    results["ddp_grads"] = {name: p.grad for name, p in model.module.named_parameters()}

    results["gathered"] = all_gather_no_grad(torch.full((2, 3), float(rank), requires_grad=True))
    results["mean"] = all_reduce_mean(torch.tensor([rank + 1.0, 10.0 * rank]))
    try:
        gather_with_grad(torch.zeros(3 + rank, 4))
    except ValueError as err:
        results["uneven_error"] = str(err)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bn_model = maybe_sync_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), True, env)
    results["bn_types"] = [type(m).__name__ for m in bn_model]
    results["bn_warnings"] = [str(w.message) for w in caught]

    return results


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """The results of :func:`worker` on ranks 0 and 1."""
    return run_ranks(worker, tmp_path_factory.mktemp("dist"), WORLD)


# ----------------------------------------------------------------------------- 2-process tests
def test_init_distributed_reads_torchrun_environment(ranks):
    for r, res in enumerate(ranks):
        assert res["env"] == DistEnv(r, WORLD, r, torch.device("cpu"), True)
        assert res["rank_and_world"] == (r, WORLD)
        assert res["is_main"] == (r == 0)


def test_nt_xent_over_two_ranks_matches_one_process(ranks):
    z1, z2, _ = fixed_batch()
    z1.requires_grad_()
    z2.requires_grad_()
    full = nt_xent(z1, z2, TEMPERATURE)
    full.backward()

    mean_loss = sum(res["nt_xent"][0] for res in ranks) / WORLD
    assert abs(mean_loss.item() - full.item()) < 1e-10
    half = BATCH // WORLD
    for r, res in enumerate(ranks):
        _, g1, g2 = res["nt_xent"]
        local = slice(r * half, (r + 1) * half)
        # DDP averages over ranks, so the per-rank gradient divided by WORLD must match
        torch.testing.assert_close(g1 / WORLD, z1.grad[local], rtol=0, atol=1e-10)
        torch.testing.assert_close(g2 / WORLD, z2.grad[local], rtol=0, atol=1e-10)


def test_ddp_parameter_gradients_match_one_process(ranks):
    _, _, x = fixed_batch()
    model = tiny_model()
    linear_loss(model, x[:BATCH], x[BATCH:]).backward()
    for res in ranks:
        assert res["ddp_type"] == "DistributedDataParallel"
        for name, p in model.named_parameters():
            torch.testing.assert_close(res["ddp_grads"][name], p.grad, rtol=0, atol=1e-10)


def test_gather_and_reduce_collectives(ranks):
    expected = torch.cat([torch.zeros(2, 3), torch.ones(2, 3)])
    for res in ranks:
        assert torch.equal(res["gathered"], expected)
        assert not res["gathered"].requires_grad
        assert torch.equal(res["mean"], torch.tensor([1.5, 5.0]))
        assert "same tensor shape on every rank" in res["uneven_error"]
        assert "[(3, 4), (4, 4)]" in res["uneven_error"]


def test_sync_batchnorm_on_cpu_warns_and_keeps_batchnorm(ranks):
    for res in ranks:
        assert res["bn_types"] == ["Conv2d", "BatchNorm2d"]
        assert len(res["bn_warnings"]) == 1 and "SyncBatchNorm needs CUDA" in res["bn_warnings"][0]


# ----------------------------------------------------------------------------- single process
@pytest.fixture
def no_torchrun(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)


def test_single_process_helpers_are_identities(no_torchrun):
    env = init_distributed("cpu")
    assert env == DistEnv(0, 1, 0, torch.device("cpu"), False)
    assert rank_and_world() == (0, 1) and is_main_process()
    x = torch.randn(4, 3, requires_grad=True)
    assert gather_with_grad(x) is x
    assert torch.equal(all_gather_no_grad(x), x) and not all_gather_no_grad(x).requires_grad
    assert torch.equal(all_reduce_mean(x), x)
    model = nn.Linear(3, 2)
    assert wrap_ddp(model, env) is model
    assert maybe_sync_batchnorm(model, True, env) is model
    cleanup_distributed()  # nothing to clean up: must not raise


def test_init_distributed_rejects_bad_settings(no_torchrun, monkeypatch):
    with pytest.raises(ValueError, match="device must be one of"):
        init_distributed("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            init_distributed("cuda")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        init_distributed("cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="MASTER_ADDR, MASTER_PORT is not set"):
        init_distributed("cpu")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2 WORLD_SIZE=2"):
        init_distributed("cpu")


def test_sync_batchnorm_cpu_fallback_never_touches_process_group():
    env = DistEnv(0, 2, 0, torch.device("cpu"), True)  # looks distributed, no process group
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.warns(UserWarning, match="SyncBatchNorm needs CUDA"):
        assert maybe_sync_batchnorm(model, True, env) is model
    assert isinstance(model[1], nn.BatchNorm2d)
    assert maybe_sync_batchnorm(model, False, env) is model  # disabled: silent no-op


@pytest.mark.parametrize("n, world", [(10, 3), (12, 4), (7, 2), (5, 1)])
def test_shard_indices_are_disjoint_equal_and_drop_only_the_tail(n, world):
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    envs = [DistEnv(r, world, r, torch.device("cpu"), world > 1) for r in range(world)]
    shards = [shard_indices(permutation, env) for env in envs]
    per_rank = n // world
    assert all(s.shape == (per_rank,) for s in shards)
    covered = torch.cat(shards)
    assert len(set(covered.tolist())) == per_rank * world  # disjoint
    assert set(covered.tolist()) == set(permutation[: per_rank * world].tolist())  # all but the tail


def test_shard_indices_rejects_non_index_tensors():
    env = DistEnv(0, 1, 0, torch.device("cpu"), False)
    with pytest.raises(ValueError, match="1-D integer tensor"):
        shard_indices(torch.rand(5), env)
