"""Image encoders (ResNet-18/34/50, a small ConvNet, an MLP, CMC's half AlexNet, the Lab channel
split of MetAug/CMC), each registered in ``BACKBONES``, and :func:`build_backbone`.

Every backbone maps ``x: (B, C, H, W) float`` to features ``(B, out_dim) float`` and records
``out_dim`` as an int attribute. Builders take ``input_shape = (C, H, W)`` plus keyword options;
:func:`build_backbone` checks option names against the builder's signature.
"""

from __future__ import annotations

import inspect
from numbers import Real
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from contrastlab.models.registry import BACKBONES, INPUT_KINDS, INPUT_SHAPES

RESNET_STAGE_WIDTHS = (64, 128, 256, 512)


def build_backbone(name: str, input_shape: tuple[int, int, int], **options) -> nn.Module:
    """The backbone registered as ``name`` for inputs of shape ``(C, H, W)`` (images), ``(F,)``
    (graphs' node features) or ``(3, T, V, M)`` (skeleton sequences), as
    :data:`~contrastlab.models.registry.INPUT_KINDS` says.

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
    return builder(_check_input_shape(name, input_shape), **options)


def _check_input_shape(name: str, input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(input_shape)
    kind = INPUT_KINDS.get(name, "images")
    dims, layout = INPUT_SHAPES[kind]
    if len(shape) != dims or not all(isinstance(s, int) and s > 0 for s in shape):
        hint = next((f" ({other} need a backbone such as '{backbone}')" for backbone, other in INPUT_KINDS.items()
                     if other != kind and INPUT_SHAPES[other][0] == len(shape)), "")
        raise ValueError(f"backbone '{name}' encodes {kind}: {layout} positive ints, got input shape "
                         f"{input_shape!r}{hint}")
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
    """``(B, C, H, W) -> (B, C)`` mean over the spatial positions.

    A channels-last ``x`` is averaged as its ``(B, H, W, C)`` view, so that the gradient comes
    back channels-last too: averaged as ``(B, C, H, W)``, the gradient is contiguous, and the
    backward of the layer before (a ReLU) mixes the two layouts, 15x slower on this project's CPUs
    (6 ms of a 125 ms ConvNet step; 0.3 ms averaged this way, ``benchmarks/results/step_profile_convnet.md``).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            return x.permute(0, 2, 3, 1).mean(dim=(1, 2))
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

    ``x: (B, in_channels, H, W) -> (B, channels[-1])``. Between blocks the max-pool runs before
    the ReLU: the same function and gradients (ReLU is monotonic, so the two commute), with the
    ReLU's forward and backward on a quarter of the elements.
    """

    def __init__(self, in_channels: int, channels: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index, out_channels in enumerate(channels):
            layers += conv_bn(in_channels, out_channels, 3)
            if index + 1 < len(channels):
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            layers.append(nn.ReLU())
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


# CMC's half-width AlexNet (MetAug, spec 1.4): (out channels, kernel, stride, padding, max-pool after)
ALEXNET_HALF_CONVS = ((48, 11, 4, 2, True), (128, 5, 1, 2, True), (192, 3, 1, 1, False),
                      (192, 3, 1, 1, False), (128, 3, 1, 1, True))


def alexnet_half_grid(size: int) -> int:
    """Side of :class:`AlexNetHalf`'s pooled conv5 output for an input side ``size``; 0 when
    ``size`` is too small for its three 3x3 stride-2 max-pools (6 for 224)."""
    side = size
    for _, kernel, stride, padding, pool in ALEXNET_HALF_CONVS:
        side = (side + 2 * padding - kernel) // stride + 1 if side + 2 * padding >= kernel else 0
        if pool:
            side = (side - 3) // 2 + 1 if side >= 3 else 0
    return side


ALEXNET_HALF_MIN_SIZE = next(size for size in range(1, 1024) if alexnet_half_grid(size) >= 1)  # 63


class AlexNetHalf(nn.Module):
    """Half-width AlexNet (CMC, MetAug) up to fc6: five bias-free conv-BN-ReLU layers (48, 128,
    192, 192, 128 channels; 11x11 stride 4, 5x5, then 3x3) with a 3x3 stride-2 max-pool after
    conv1, conv2 and conv5, then fc6 = Linear-BN1d-ReLU on the flattened grid.

    ``x: (B, in_channels, H, W) -> (B, fc6_width)`` for the ``(H, W)`` it was built for
    (``128 x 6 x 6`` flattened at 224x224). With ``resize_input`` inputs of another size are
    first resized bilinearly to ``(H, W)`` (e.g. native 32x32 CIFAR images at evaluation, like
    the official probe's resize to 224); otherwise they are an error.
    """

    def __init__(self, input_shape: tuple[int, int, int], fc6_width: int, resize_input: bool) -> None:
        super().__init__()
        channels, height, width = input_shape
        grid = (alexnet_half_grid(height), alexnet_half_grid(width))
        if min(grid) < 1:
            raise ValueError(
                f"backbone 'alexnet_half' needs inputs of at least {ALEXNET_HALF_MIN_SIZE}x{ALEXNET_HALF_MIN_SIZE} "
                f"pixels for its pooling (the paper uses 224x224), got {height}x{width}; set augment.size"
            )
        layers: list[nn.Module] = []
        for out_channels, kernel, stride, padding, pool in ALEXNET_HALF_CONVS:
            layers += [nn.Conv2d(channels, out_channels, kernel, stride, padding, bias=False),
                       nn.BatchNorm2d(out_channels), nn.ReLU()]
            if pool:
                layers.append(nn.MaxPool2d(3, 2))
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.fc6 = nn.Sequential(nn.Linear(channels * grid[0] * grid[1], fc6_width), nn.BatchNorm1d(fc6_width),
                                 nn.ReLU())
        self.input_size = (height, width)
        self.resize_input = resize_input
        self.out_dim = fc6_width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.input_size:
            if not self.resize_input:
                height, width = self.input_size
                raise ValueError(
                    f"alexnet_half was built for {height}x{width} inputs (fc6 takes the flattened conv5 grid), "
                    f"got {x.shape[-2]}x{x.shape[-1]}; build it for that size (at least "
                    f"{ALEXNET_HALF_MIN_SIZE}x{ALEXNET_HALF_MIN_SIZE}) or set its option resize_input"
                )
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        return self.fc6(self.features(x).flatten(1))


@BACKBONES.register("alexnet_half", "CMC/MetAug half AlexNet (conv1-5 + fc6, 2048 features), 224x224 inputs")
def alexnet_half(
    input_shape: tuple[int, int, int], fc6_width: int = 2048, resize_input: bool = False
) -> AlexNetHalf:
    """``fc6_width``: features (fc6 units); ``resize_input``: resize inputs of another size to
    the built one instead of failing."""
    (fc6_width,) = _positive_ints("fc6_width", [fc6_width])
    return AlexNetHalf(input_shape, fc6_width, _check_flag("resize_input", resize_input))


LAB_VIEWS = ("L", "ab", "ori")  # channel 0, channels 1-2, all three channels of a Lab image
LAB_VIEW_CHANNELS = ((0, 1), (1, 3), (0, 3))  # [start, stop) of each view


class LabSplit(nn.Module):
    """One independent encoder per channel view of a 3-channel (normalised Lab) image: ``L``
    (channel 0), ``ab`` (channels 1-2), ``ori`` (all three), as in CMC and MetAug.

    ``encoders``: three modules with an ``out_dim``, taking 1, 2 and 3 channels. ``forward``:
    ``x: (B, 3, H, W) -> (B, sum of out_dims)``, the per-view features concatenated in
    :data:`LAB_VIEWS` order (what evaluation and probes see).
    """

    def __init__(self, encoders: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(encoders) != len(LAB_VIEWS):
            raise ValueError(f"LabSplit needs one encoder per view {LAB_VIEWS}, got {len(encoders)}")
        self.encoders = nn.ModuleList(encoders)
        self.view_dims = tuple(int(encoder.out_dim) for encoder in encoders)
        self.out_dim = sum(self.view_dims)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x: (B, 3, H, W)`` -> the views ``(B, 1, H, W)``, ``(B, 2, H, W)``, ``(B, 3, H, W)``."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"lab_split needs (B, 3, H, W) images, got shape {tuple(x.shape)}")
        return tuple(x[:, start:stop] for start, stop in LAB_VIEW_CHANNELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([encoder(view) for encoder, view in zip(self.encoders, self.split(x))], dim=1)


@BACKBONES.register("lab_split", "L / ab / Lab views of a Lab image, one encoder each, features concatenated")
def lab_split(
    input_shape: tuple[int, int, int], encoder: str = "alexnet_half", encoder_options: dict | None = None
) -> LabSplit:
    """``encoder``: the backbone built for each view (``(1|2|3, H, W)`` inputs) with the options
    ``encoder_options``; features are three times the encoder's."""
    channels, height, width = input_shape
    if channels != 3:
        raise ValueError(f"backbone 'lab_split' splits 3-channel (Lab) images into L / ab / all views, "
                         f"got {channels} channel(s)")
    if encoder == "lab_split":
        raise ValueError("backbone option 'encoder' of lab_split cannot be lab_split")
    options = {} if encoder_options is None else encoder_options
    if not isinstance(options, dict):
        raise ValueError(f"backbone option 'encoder_options' must be a mapping of '{encoder}' options, got {options!r}")
    encoders = []
    for view, (start, stop) in zip(LAB_VIEWS, LAB_VIEW_CHANNELS):
        try:
            encoders.append(build_backbone(encoder, (stop - start, height, width), **options))
        except ValueError as err:
            raise ValueError(f"lab_split's {view} encoder: {err}") from None
    return LabSplit(encoders)
