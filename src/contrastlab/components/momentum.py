"""Momentum (EMA) teachers, as used by MoCo, BYOL and later ISD/HaLP."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def cosine_momentum(base: float, final: float, progress: float) -> float:
    """BYOL's schedule: ``final - (final - base) * (cos(pi * progress) + 1) / 2``.

    ``progress`` in [0, 1]: ``base`` at the start, ``final`` at the end; ``base == final``
    gives a constant momentum (MoCo).
    """
    return final - (final - base) * (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1) / 2


class EMATeacher(nn.Module):
    """A frozen copy of the student modules, chained (``nn.Sequential``), updated as
    ``teacher <- m * teacher + (1 - m) * student``.

    Buffers (BatchNorm running statistics) are copied from the student at each update. The
    teacher keeps the student's train/eval mode, so in training it normalises with batch
    statistics like the student (as in MoCo and BYOL).
    """

    def __init__(self, *student: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(nn.Sequential(*student))
        self.module.requires_grad_(False)

    @torch.no_grad()
    def update(self, momentum: float, *student: nn.Module) -> None:
        """EMA step towards ``student`` (the same modules, in the same order, as at construction)."""
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
        source = nn.Sequential(*student)
        for teacher_param, student_param in zip(self.module.parameters(), source.parameters(), strict=True):
            teacher_param.lerp_(student_param.detach(), 1.0 - momentum)
        for teacher_buffer, student_buffer in zip(self.module.buffers(), source.buffers(), strict=True):
            teacher_buffer.copy_(student_buffer)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)
