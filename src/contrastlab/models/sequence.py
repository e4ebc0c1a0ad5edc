"""Encoders of skeleton sequences ``(B, 3, T, V, M)``: each frame's coordinates of every joint
and person flattened to ``3 * V * M`` channels (150 for NTU's 25 joints x 2 persons), as the
skeleton papers' "sequence-based" input.

- ``bigru``: the BiGRU of CMD, AimCLR and HaLP: batch norm over the input channels, a
  ``layers``-layer bidirectional GRU of width ``hidden``, the output at the last frame:
  ``2 * hidden`` features (HaLP: hidden 1024).
- ``tconv``: a small temporal ConvNet for fast CPU runs: input batch norm, 1-D convolutions over
  time (kernel 5, stride 2 after the first) with batch norm and ReLU, mean over time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from contrastlab.models.backbones import _positive_ints
from contrastlab.models.registry import BACKBONES, INPUT_KINDS


def frame_channels(x: torch.Tensor) -> torch.Tensor:
    """``(B, 3, T, V, M)`` -> ``(B, 3 * V * M, T)``: one channel per coordinate, joint, person."""
    batch, channels, frames, joints, persons = x.shape
    return x.permute(0, 1, 3, 4, 2).reshape(batch, channels * joints * persons, frames)


class BiGRU(nn.Module):
    def __init__(self, in_channels: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(in_channels)
        self.gru = nn.GRU(in_channels, hidden, num_layers=layers, batch_first=True, bidirectional=True)
        self.out_dim = 2 * hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(self.norm(frame_channels(x)).transpose(1, 2))  # (B, T, 2 * hidden)
        return h[:, -1]


class TemporalConvNet(nn.Module):
    def __init__(self, in_channels: int, channels: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.BatchNorm1d(in_channels)]
        for index, (a, b) in enumerate(zip([in_channels, *channels], channels)):
            layers += [nn.Conv1d(a, b, 5, stride=1 if index == 0 else 2, padding=2, bias=False), nn.BatchNorm1d(b),
                       nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.out_dim = channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(frame_channels(x)).mean(dim=2)


def _in_channels(input_shape: tuple[int, int, int, int]) -> int:
    channels, _, joints, persons = input_shape
    return channels * joints * persons


@BACKBONES.register("bigru", "BiGRU of the skeleton papers (input BN, 3-layer bidirectional GRU, last frame), "
                             "for skeleton sequences")
def bigru(input_shape: tuple[int, int, int, int], hidden: int = 1024, layers: int = 3) -> BiGRU:
    """``input_shape``: ``(3, T, V, M)``; ``hidden``: the GRU width (output ``2 * hidden``)."""
    hidden, layers = _positive_ints("hidden", [hidden])[0], _positive_ints("layers", [layers])[0]
    return BiGRU(_in_channels(input_shape), hidden, layers)


@BACKBONES.register("tconv", "small temporal ConvNet over frames, for skeleton sequences on the CPU")
def tconv(input_shape: tuple[int, int, int, int], channels: Sequence[int] = (64, 128, 256)) -> TemporalConvNet:
    """``input_shape``: ``(3, T, V, M)``; ``channels``: the widths of the convolutions."""
    return TemporalConvNet(_in_channels(input_shape), _positive_ints("channels", channels))


INPUT_KINDS.update(bigru="skeleton sequences", tconv="skeleton sequences")
