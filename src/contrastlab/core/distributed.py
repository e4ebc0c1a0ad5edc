"""torch.distributed primitives used by every layer: where this process sits in the job, the
collectives with the right gradients for contrastive losses, and sharding an epoch's order.

Every helper is a no-op (identity) when no process group is initialised, so single-process
code paths need no special casing. Process-group setup and DDP wrapping live in
:mod:`contrastlab.engine.distributed`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job and which device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single process)."""
    return rank_and_world()[0] == 0


# ----------------------------------------------------------------------------- collectives
def _gather_equal_shapes(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x: (B, ...)`` from every rank into ``(world * B, ...)`` in rank order.

    Gathers the shapes first (one tiny collective) and raises ``ValueError`` on every rank
    when they differ, instead of hanging or returning garbage.
    """
    _, world = rank_and_world()
    shape = torch.tensor(x.shape, dtype=torch.int64, device=x.device)
    shapes = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    shapes = [tuple(s.tolist()) for s in shapes]
    if any(s != shapes[0] for s in shapes):
        raise ValueError(
            f"all-gather needs the same tensor shape on every rank (equal per-process batch "
            f"sizes), got shapes by rank {shapes}"
        )
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums the incoming gradients over ranks and keeps this
    rank's slice: rank r receives ``sum_s dL_s / dx_r``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.batch = x.shape[0]
        return _gather_equal_shapes(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        rank, _ = rank_and_world()
        return grad[rank * ctx.batch : (rank + 1) * ctx.batch]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x: (B, ...)`` into ``(world * B, ...)`` (rank order), differentiably.

    The backward pass all-reduces (sums) the gradient of the gathered tensor and returns this
    rank's slice. Hence, when each rank takes the mean loss over its own anchors and DDP
    averages parameter gradients over ranks, the gradients equal those of one process taking
    the mean loss over the concatenated batch. Needs equal ``B`` on every rank (checked:
    ``ValueError``). Identity without a process group or with one rank.
    """
    if rank_and_world()[1] == 1:
        return x
    return _GatherWithGrad.apply(x)


def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x: (B, ...)`` into a detached ``(world * B, ...)`` (rank order), e.g. to
    fill a queue or memory bank. Needs equal ``B`` on every rank. Identity (detached)
    without a process group."""
    if rank_and_world()[1] == 1:
        return x.detach()
    with torch.no_grad():
        return _gather_equal_shapes(x.detach())


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` (any shape, floating) over ranks, detached, for logging. Identity
    (detached) without a process group."""
    _, world = rank_and_world()
    if world == 1:
        return x.detach()
    total = x.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / world


def broadcast_object(value: object) -> object:
    """Rank 0's ``value`` (any picklable object) on every rank; ``value`` itself without a
    process group."""
    _, world = rank_and_world()
    if world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ----------------------------------------------------------------------------- sharding
def shard_indices(permutation: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """This rank's share of an epoch's ``permutation: (N,) int64``: every ``world``-th entry
    starting at ``rank`` (as ``DistributedSampler`` without padding).

    The last ``N % world`` entries are dropped so every rank gets exactly ``N // world``
    indices (equal step counts keep the collectives in lock-step); with a fresh permutation
    each epoch, different samples are dropped each time. Returns ``(N // world,) int64``.
    """
    if permutation.dim() != 1 or permutation.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"permutation must be a 1-D integer tensor, got shape {tuple(permutation.shape)} "
            f"dtype {permutation.dtype}"
        )
    per_rank = permutation.shape[0] // env.world_size
    return permutation[env.rank : per_rank * env.world_size : env.world_size]
