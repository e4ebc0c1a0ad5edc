"""Image encoders (ResNet-18/34/50, a small ConvNet, an MLP) and the ``BACKBONES`` registry.

Every backbone maps ``x: (B, C, H, W) float`` to features ``(B, out_dim) float`` and records
``out_dim`` as an int attribute. Builders take ``input_shape = (C, H, W)`` plus keyword options;
:func:`build_backbone` checks option names against the builder's signature.
"""

from __future__ import annotations

import inspect
from numbers import Real
from typing import Callable, Sequence

import torch
from torch import nn

from contrastlab.registry import Registry

BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")

RESNET_STAGE_WIDTHS = (64, 128, 256, 512)


def build_backbone(name: str, input_shape: tuple[int, int, int], **options) -> nn.Module:
    """The backbone registered as ``name`` for inputs of shape ``(C, H, W)``.

    Raises ``ValueError`` for an unknown name or an option the builder does not take.
    """
    try:
        builder = BACKBONES.get(name)
    except KeyError as err:
        raise ValueError(err.args[0]) from None
    valid = [p for p in inspect.signature(builder).parameters if p != "input_shape"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"backbone '{name}' has no option {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(valid) or '(none)'}"
        )
    return builder(_check_input_shape(input_shape), **options)


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(
            f"backbone input_shape must be (C, H, W) positive ints, got {input_shape!r}"
        )
    return shape


def _positive_ints(option: str, values: Sequence[int]) -> tuple[int, ...]:
    """``values`` as a non-empty tuple of positive ints (YAML gives lists), else ``ValueError``."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(
            f"backbone option '{option}' must be a non-empty list of ints, got {values!r}"
        )
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ValueError(f"backbone option '{option}' must contain positive ints, got {values!r}")
    return tuple(values)


def _check_flag(option: str, value: bool) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"backbone option '{option}' must be true or false, got {value!r}")
    return value


def conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    """Bias-free ``kernel x kernel`` conv (same padding) followed by BatchNorm."""
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=False)
    return [conv, nn.BatchNorm2d(out_channels)]


class GlobalAvgPool(nn.Module):
    """``(B, C, H, W) -> (B, C)`` mean over the spatial positions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class ResidualBlock(nn.Module):
    """``relu(residual(x) + shortcut(x))``; ``residual`` ends with a BatchNorm.

    ``x: (B, in_channels, H, W) -> (B, out_channels, H / stride, W / stride)``.
    """

    def __init__(self, residual: nn.Sequential, shortcut: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.residual = residual
        self.shortcut = shortcut
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.residual(x) + self.shortcut(x))


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(*conv_bn(in_channels, out_channels, 1, stride))


def basic_block(in_channels: int, width: int, stride: int) -> ResidualBlock:
    """ResNet-18/34 block: two 3x3 convs, ``width`` output channels."""
    residual = nn.Sequential(
        *conv_bn(in_channels, width, 3, stride), nn.ReLU(), *conv_bn(width, width, 3)
    )
    return ResidualBlock(residual, _shortcut(in_channels, width, stride), width)


def bottleneck_block(in_channels: int, width: int, stride: int) -> ResidualBlock:
    """ResNet-50 block: 1x1 reduce, 3x3 (strided), 1x1 expand to ``4 * width`` channels."""
    out_channels = 4 * width
    residual = nn.Sequential(
        *conv_bn(in_channels, width, 1), nn.ReLU(),
        *conv_bn(width, width, 3, stride), nn.ReLU(),
        *conv_bn(width, out_channels, 1),
    )
    return ResidualBlock(residual, _shortcut(in_channels, out_channels, stride), out_channels)


class ResNet(nn.Module):
    """ResNet trunk without the classifier: stem, four stages, global average pool.

    ``x: (B, in_channels, H, W) -> (B, out_dim)``. The CIFAR stem is a stride-1 3x3 conv;
    the ImageNet stem is a stride-2 7x7 conv and a stride-2 3x3 max-pool.
    """

    def __init__(
        self,
        make_block: Callable[[int, int, int], ResidualBlock],
        depths: Sequence[int],
        in_channels: int,
        cifar_stem: bool = False,
        width: float = 1.0,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, Real) or width <= 0:
            raise ValueError(f"backbone option 'width' must be a positive number, got {width!r}")
        widths = [max(1, round(w * width)) for w in RESNET_STAGE_WIDTHS]
        if _check_flag("cifar_stem", cifar_stem):
            stem = [*conv_bn(in_channels, widths[0], 3), nn.ReLU()]
        else:
            stem = [*conv_bn(in_channels, widths[0], 7, stride=2), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        self.stem = nn.Sequential(*stem)
        blocks, channels = [], widths[0]
        for stage, (stage_width, depth) in enumerate(zip(widths, depths)):
            for index in range(depth):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(make_block(channels, stage_width, stride))
                channels = blocks[-1].out_channels
        self.blocks = nn.Sequential(*blocks)
        self.pool = GlobalAvgPool()
        self.out_dim = channels
        self._init_weights(_check_flag("zero_init_residual", zero_init_residual))

    def _init_weights(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for block in self.blocks:
                nn.init.zeros_(block.residual[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.blocks(self.stem(x)))


def _register_resnet(
    name: str, make_block: Callable, depths: tuple[int, ...], summary: str
) -> None:
    def build(
        input_shape: tuple[int, int, int],
        cifar_stem: bool = False,
        width: float = 1.0,
        zero_init_residual: bool = False,
    ) -> ResNet:
        return ResNet(make_block, depths, input_shape[0], cifar_stem, width, zero_init_residual)

    build.__doc__ = f"{summary}; ``width`` scales the stage widths 64/128/256/512."
    BACKBONES.register(name, summary)(build)


_register_resnet("resnet18", basic_block, (2, 2, 2, 2), "ResNet-18, 512*width features")
_register_resnet("resnet34", basic_block, (3, 4, 6, 3), "ResNet-34, 512*width features")
_register_resnet("resnet50", bottleneck_block, (3, 4, 6, 3), "ResNet-50, 2048*width features")


class ConvNet(nn.Module):
    """conv3x3-BN-ReLU blocks with a 2x2 max-pool between them, then global average pool.

    ``x: (B, in_channels, H, W) -> (B, channels[-1])``.
    """

    def __init__(self, in_channels: int, channels: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index, out_channels in enumerate(channels):
            if index > 0:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            layers += [*conv_bn(in_channels, out_channels, 3), nn.ReLU()]
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = GlobalAvgPool()
        self.out_dim = channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x))


@BACKBONES.register("convnet", "small 4-block ConvNet (32-64-128-256), fast on CPU")
def convnet(
    input_shape: tuple[int, int, int], channels: Sequence[int] = (32, 64, 128, 256)
) -> ConvNet:
    """``channels``: output channels of each conv block; features are ``channels[-1]``."""
    return ConvNet(input_shape[0], _positive_ints("channels", channels))


class MLPEncoder(nn.Module):
    """Flatten, then Linear-BN-ReLU blocks. ``x: (B, C, H, W) -> (B, hidden[-1])``."""

    def __init__(self, in_features: int, hidden: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.Linear(in_features, width), nn.BatchNorm1d(width), nn.ReLU()]
            in_features = width
        self.layers = nn.Sequential(*layers)
        self.out_dim = hidden[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@BACKBONES.register("mlp", "MLP on flattened pixels (512-512)")
def mlp(input_shape: tuple[int, int, int], hidden: Sequence[int] = (512, 512)) -> MLPEncoder:
    """``hidden``: widths of the Linear-BN-ReLU blocks; features are ``hidden[-1]``."""
    channels, height, width = input_shape
    return MLPEncoder(channels * height * width, _positive_ints("hidden", hidden))
