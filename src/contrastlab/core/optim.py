"""Optimisers (SGD, LARS, Adam, AdamW) and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from contrastlab.core.config import OptimConfig


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017).

    For each parameter tensor ``w`` with gradient ``g`` the update direction is
    ``r * (g + wd * w)`` with trust ratio ``r = trust * ||w|| / (||g|| + wd * ||w|| + eps)``
    (``r = 1`` when ``||w||`` or ``||g||`` is 0), then heavy-ball momentum. Parameter groups
    with ``lars_adapt=False`` take a plain momentum step on ``g`` (no adaptation, no decay).
    :func:`build_optimizer` puts biases and normalisation weights in such a group unless
    ``optim.lars_exclude_bias_and_norm`` is false, which reproduces torchlars (every tensor
    adapted and decayed).
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust: float = 1e-3, eps: float = 1e-8) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust=trust, eps=eps,
                        lars_adapt=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = None if closure is None else closure()
        for group in self.param_groups:
            for w in group["params"]:
                if w.grad is None:
                    continue
                g = w.grad
                if group["lars_adapt"]:
                    g = (g + group["weight_decay"] * w) * lars_trust_ratio(w, g, group)
                buf = self.state[w].get("momentum_buffer")
                if buf is None:
                    buf = self.state[w]["momentum_buffer"] = g.clone()
                else:
                    buf.mul_(group["momentum"]).add_(g)
                w.add_(buf, alpha=-group["lr"])
        return loss


def lars_trust_ratio(w: torch.Tensor, g: torch.Tensor, group: dict) -> torch.Tensor:
    """LARS' factor on ``g + wd * w`` for one tensor (a 0-dim tensor): ``trust * ||w|| / (||g||
    + wd * ||w|| + eps)``, or 1 when ``||w||`` or ``||g||`` is 0 (``group``: its param group)."""
    w_norm, g_norm = w.norm(), g.norm()
    ratio = group["trust"] * w_norm / (g_norm + group["weight_decay"] * w_norm + group["eps"])
    return torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))


def trainable(model: nn.Module, exclude: Iterable[nn.Parameter] = ()) -> list[nn.Parameter]:
    """``model``'s parameters that require grad, without those in ``exclude``."""
    excluded = {id(p) for p in exclude}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in excluded]


def parameter_groups(params: Iterable[nn.Parameter], weight_decay: float) -> list[dict]:
    """Two groups: weights (decayed, LARS-adapted) and biases/normalisation (neither)."""
    decay, no_decay = [], []
    for param in params:
        (decay if param.ndim > 1 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "lars_adapt": True},
        {"params": no_decay, "weight_decay": 0.0, "lars_adapt": False},
    ]


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, exclude: Iterable[nn.Parameter] = ()
) -> torch.optim.Optimizer:
    """The optimiser of ``cfg`` over ``model``'s trainable parameters except ``exclude`` (those a
    method updates itself, e.g. meta-learned ones, or those in optimiser groups of their own)."""
    return optimizer_over(trainable(model, exclude), cfg)


def optimizer_over(params: list[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser of ``cfg`` over ``params`` (biases and normalisation weights undecayed and,
    for LARS, unadapted unless ``cfg.lars_exclude_bias_and_norm`` is false)."""
    if cfg.name == "lars" and not cfg.lars_exclude_bias_and_norm:
        groups = [{"params": params}]
    else:
        groups = parameter_groups(params, cfg.weight_decay)
    if cfg.name == "lars":
        return LARS(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                    trust=cfg.lars_trust)
    for group in groups:
        group.pop("lars_adapt", None)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def learning_rate(cfg: OptimConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Linear warm-up over ``warmup_epochs`` then cosine decay to ``min_lr``, constant, or
    ``step``: multiplied by ``gamma`` at the start of each epoch of ``milestones``."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** sum(step >= m * steps_per_epoch for m in cfg.milestones)
    progress = (step - warmup) / max(1, total_steps - warmup)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
