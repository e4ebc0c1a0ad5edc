"""Process groups and wrapping: setup from torchrun's environment, DDP / SyncBatchNorm.

The collectives and sharding that losses and components use too live in
:mod:`contrastlab.core.distributed`; these helpers are no-ops without a process group.
"""

from __future__ import annotations

import datetime
import os
import warnings

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from contrastlab.core.distributed import DistEnv

DEVICE_PREFERENCES = ("auto", "cpu", "cuda")


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
