"""MMCL, the decoupled loss (DCL / DCLW) and the difficulty pieces in a real 2-process gloo job
(one spawn for the module), each against one process over the concatenated batch, in float64."""

from __future__ import annotations

import pytest
import torch

from contrastlab.core.distributed import DistEnv
from contrastlab.losses import (
    KernelSpec,
    SolverSpec,
    batch_pairs,
    debiased_info_nce,
    debiased_triplet_loss,
    difficulty_weights,
    mmcl_loss,
    nt_xent,
)
from multiproc import run_ranks

WORLD, BATCH, DIM = 2, 8, 5
PGD = SolverSpec("pgd", c=-1.0, step="frobenius", momentum="nesterov", max_iter=5000, tol=1e-12, stop="batch",
                 dtype="float64")


def mmcl(kernel: KernelSpec, solver: SolverSpec):
    def loss(z1, z2, b1, b2):
        value, stats = mmcl_loss(z1, z2, kernel, solver, torch.Generator().manual_seed(0))
        return value, stats["svm_iterations"]
    return loss


def difficulty(z1, z2, b1, b2):
    """The difficulty method's two losses: weighted DCL of the main encoder (weights from both
    encoders' batch negatives) plus the biased encoder's debiased triplet loss."""
    pos, neg = batch_pairs(z1, z2)
    pos_b, neg_b = batch_pairs(b1, b2)
    weights = difficulty_weights(neg, neg_b, 0.5)
    main = debiased_info_nce(pos, neg, 0.5, 0.1, log_weights=weights.log())
    return main + debiased_triplet_loss(pos_b, neg_b, 0.1), weights.mean()


LOSSES = {
    "mmcl_inverse_rbf": mmcl(KernelSpec("rbf", sigma=1.0), SolverSpec("inverse", dtype="float64")),
    "mmcl_inverse_poly_bounded": mmcl(KernelSpec("poly"), SolverSpec("inverse", c=0.05, dtype="float64")),
    "mmcl_pgd_rbf": mmcl(KernelSpec("rbf", sigma=2.0), PGD),
    "decoupled": lambda z1, z2, b1, b2: (nt_xent(z1, z2, 0.5, kind="decoupled"), None),
    "dclw": lambda z1, z2, b1, b2: (nt_xent(z1, z2, 0.5, kind="decoupled", vmf_sigma=0.5), None),
    "difficulty": difficulty,
}
# PGD starts each rank from its own random point: the ranks agree to the solver's tolerance only
ATOL = {"mmcl_pgd_rbf": 1e-7}


def batch() -> list[torch.Tensor]:
    """``z1, z2, b1, b2: (BATCH, DIM)`` float64: both views of the (global) batch through the
    main and the biased encoder."""
    g = torch.Generator().manual_seed(0)
    return [torch.randn(BATCH, DIM, generator=g, dtype=torch.float64) for _ in range(4)]


def local_slice(rank: int) -> slice:
    return slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)


def worker(env: DistEnv) -> dict:
    """Per loss: this rank's loss, its extra value (SVM iterations, mean weight) and the
    gradients of its slice of the four inputs (None where unused)."""
    local = local_slice(env.rank)
    results = {}
    for name, loss_fn in LOSSES.items():
        inputs = [x[local].clone().requires_grad_() for x in batch()]
        loss, extra = loss_fn(*inputs)
        loss.backward()
        results[name] = (loss.detach(), None if extra is None else extra.detach(), [x.grad for x in inputs])
    return results


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return run_ranks(worker, tmp_path_factory.mktemp("negatives"), WORLD)


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_and_input_gradients_match_one_process(ranks, name):
    inputs = [x.clone().requires_grad_() for x in batch()]
    loss, extra = LOSSES[name](*inputs)
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    atol = ATOL.get(name, 1e-10)
    mean_loss = sum(r[name][0] for r in ranks) / WORLD
    torch.testing.assert_close(mean_loss, loss.detach(), rtol=0, atol=atol)
    if name == "difficulty":  # the weights are per anchor row: their mean over ranks is the batch's
        torch.testing.assert_close(sum(r[name][1] for r in ranks) / WORLD, extra, rtol=0, atol=1e-12)
    for rank, res in enumerate(ranks):
        local = local_slice(rank)
        for ours, full in zip(res[name][2], grads):
            assert (ours is None) == (full is None)
            if full is not None:
                # DDP averages parameter gradients over ranks: the input gradients are divided by WORLD
                torch.testing.assert_close(ours / WORLD, full[local], rtol=0, atol=atol)


def test_batch_stopping_stops_every_rank_at_the_same_iteration(ranks):
    """Additions A3 under torch.distributed: the stop is the mean over every rank's anchors."""
    iterations = [r["mmcl_pgd_rbf"][1] for r in ranks]
    assert iterations[0] == iterations[1]
    assert 0 < iterations[0] < PGD.max_iter
