"""torch.distributed helpers: process-group setup from torchrun's environment, collectives
with the right gradients for contrastive losses, DDP / SyncBatchNorm wrapping and sharding.

Every helper is a no-op (identity) when no process group is initialised, so single-process
code paths need no special casing.
"""

from __future__ import annotations

import datetime
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

DEVICE_PREFERENCES = ("auto", "cpu", "cuda")


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


# ----------------------------------------------------------------------------- setup
def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer") from None


def _select_device(device_preference: str, local_rank: int) -> torch.device:
    if device_preference not in DEVICE_PREFERENCES:
        raise ValueError(f"device must be one of {DEVICE_PREFERENCES}, got {device_preference!r}")
    cuda = torch.cuda.is_available()
    if device_preference == "cuda" and not cuda:
        raise ValueError("device 'cuda' was requested but CUDA is not available; use 'cpu' or 'auto'")
    if device_preference == "cpu" or not cuda:
        return torch.device("cpu")
    if local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices are visible"
        )
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    return device


def init_distributed(
    device_preference: str = "auto", timeout: datetime.timedelta = datetime.timedelta(minutes=30)
) -> DistEnv:
    """Read torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``
    and pick the device: ``"auto"`` = ``cuda:{LOCAL_RANK}`` when CUDA is available, else cpu;
    ``"cpu"``/``"cuda"`` forced. With ``WORLD_SIZE > 1`` the default process group is
    initialised (NCCL on CUDA, gloo on CPU; ``timeout`` bounds every collective); a single
    process gets no process group.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(
            f"need WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE, got RANK={rank} WORLD_SIZE={world}"
        )
    device = _select_device(device_preference, local_rank)
    distributed = world > 1
    if distributed and not dist.is_initialized():
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
        if missing:
            raise ValueError(f"WORLD_SIZE={world} but {', '.join(missing)} is not set; launch with torchrun")
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world, timeout=timeout)
    return DistEnv(rank, world, local_rank, device, distributed)


def cleanup_distributed() -> None:
    """Destroy the default process group if there is one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- wrapping
def maybe_sync_batchnorm(model: nn.Module, enabled: bool, env: DistEnv) -> nn.Module:
    """Convert BatchNorm layers to SyncBatchNorm when ``enabled`` in a distributed CUDA job.

    SyncBatchNorm does not run on CPU, so a distributed CPU job keeps per-process BatchNorm
    and warns. A no-op when disabled or not distributed.
    """
    if not enabled or not env.distributed:
        return model
    if env.device.type != "cuda":
        warnings.warn(
            f"train.sync_batchnorm is ignored on {env.device}: SyncBatchNorm needs CUDA, so each "
            f"process keeps its own BatchNorm statistics",
            stacklevel=2,
        )
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap_ddp(module: nn.Module, env: DistEnv, find_unused_parameters: bool = False) -> nn.Module:
    """``DistributedDataParallel(module)`` (on ``env.device`` for CUDA) in a distributed job;
    ``module`` itself otherwise. Move ``module`` to ``env.device`` first."""
    if not env.distributed:
        return module
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(
        module, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )


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
