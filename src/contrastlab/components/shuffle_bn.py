"""MoCo's guard against BatchNorm leakage in the key encoder: shuffled batch statistics."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from contrastlab.core.distributed import all_gather_no_grad, rank_and_world


@torch.no_grad()
def shuffled_forward(module: nn.Module, x: torch.Tensor, splits: int, generator: torch.Generator) -> torch.Tensor:
    """``module(x)`` with the batch shuffled before BatchNorm sees it, then unshuffled.

    Each output row is computed with BatchNorm statistics of a random subset of the batch, so
    a query and its key are not normalised with the same statistics (the leak MoCo guards
    against). Under torch.distributed the global batch is shuffled across ranks (a
    permutation broadcast from rank 0) and each rank forwards its share, as MoCo's shuffle-BN;
    in one process the shuffled batch is forwarded in ``splits`` chunks.

    Args:
        x: ``(B, ...)`` this rank's inputs. Returns ``(B, D)``.
    """
    rank, world = rank_and_world()
    if world > 1:
        everything = all_gather_no_grad(x)
        order = torch.randperm(everything.shape[0], generator=generator).to(x.device)
        dist.broadcast(order, src=0)
        mine = order.view(world, -1)[rank]
        out = all_gather_no_grad(module(everything[mine]))
        return out[torch.argsort(order)].view(world, x.shape[0], -1)[rank]
    if splits < 1 or x.shape[0] < splits:
        raise ValueError(f"shuffle-BN needs 1 <= bn_splits <= batch size, got {splits} for {x.shape[0]}")
    order = torch.randperm(x.shape[0], generator=generator).to(x.device)
    out = torch.cat([module(chunk) for chunk in x[order].chunk(splits)])
    return out[torch.argsort(order)]


def guarded_forward(module: nn.Module, x: torch.Tensor, guard: str, splits: int,
                    generator: torch.Generator) -> torch.Tensor:
    """A teacher's ``module(x)`` under its BatchNorm guard: ``"shuffle"`` (:func:`shuffled_forward`)
    or ``"none"`` (a plain forward, e.g. with ``train.sync_batchnorm=true``); without gradients."""
    if guard == "shuffle":
        return shuffled_forward(module, x, splits, generator)
    if guard != "none":
        raise ValueError(f"unknown BatchNorm guard '{guard}'; expected shuffle or none")
    with torch.no_grad():
        return module(x)
