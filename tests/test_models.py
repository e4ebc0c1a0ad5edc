"""Backbones and heads: shapes, reference parameter counts, functional_call, memory formats,
autocast, gradients, argument errors."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from contrastlab.components.heads import MLPHead
from contrastlab.models import BACKBONES, build_backbone
from contrastlab.models.backbones import GlobalAvgPool, ResidualBlock

# Tiny variants of every registry entry, with the feature size each must report.
TINY = {
    "resnet18": ({"width": 0.125}, 64),
    "resnet34": ({"width": 0.0625}, 32),
    "resnet50": ({"width": 0.0625}, 128),
    "convnet": ({"channels": (4, 8, 8, 6)}, 6),
    "mlp": ({"hidden": (16, 12)}, 12),
}
RESNETS = ["resnet18", "resnet34", "resnet50"]


def tiny(name: str, channels: int = 3, size: int = 16, **extra) -> nn.Module:
    torch.manual_seed(0)
    return build_backbone(name, (channels, size, size), **TINY[name][0], **extra)


def images(channels: int = 3, size: int = 16, batch: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def test_tiny_table_covers_the_registry():
    # alexnet_half needs >= 63 px and lab_split 3 channels: tested in test_metaug_lab.py; gin
    # encodes graphs (test_graphs.py), bigru and tconv skeleton sequences (test_skeletons.py)
    assert sorted([*TINY, "alexnet_half", "bigru", "gin", "lab_split", "tconv"]) == BACKBONES.names()
    assert all(summary for _, summary in BACKBONES.summaries())


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape_and_out_dim(name, channels):
    model = tiny(name, channels)
    out = model(images(channels))
    assert model.out_dim == TINY[name][1]
    assert out.shape == (4, model.out_dim) and out.dtype == torch.float32


@pytest.mark.parametrize("name", RESNETS)
@pytest.mark.parametrize("cifar_stem", [False, True])
def test_resnet_stems(name, cifar_stem):
    model = tiny(name, 1, size=32, cifar_stem=cifar_stem)
    stem_out = model.stem(images(1, size=32))
    assert stem_out.shape[-1] == (32 if cifar_stem else 8)
    assert model(images(1, size=32)).shape == (4, TINY[name][1])


@pytest.mark.parametrize("name, expected", [("resnet18", 11_176_512), ("resnet50", 23_508_032)])
def test_resnet_parameter_count_matches_torchvision_without_fc(name, expected):
    model = build_backbone(name, (3, 224, 224))
    assert sum(p.numel() for p in model.parameters()) == expected


def test_resnet_width_rounds_stage_widths():
    model = build_backbone("resnet18", (3, 8, 8), width=0.3)  # 19.2, 38.4, 76.8, 153.6
    assert model.stem[0].out_channels == 19 and model.out_dim == 154
    assert build_backbone("resnet50", (3, 8, 8), width=0.001).out_dim == 4  # widths clamp to 1


def test_resnet_init():
    model = tiny("resnet18")
    conv = model.blocks[2].residual[0]  # 16 -> 32 channels, 3x3: fan_out = 32 * 9
    expected_std = (2 / (conv.out_channels * 9)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.15)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)


@pytest.mark.parametrize("name", RESNETS)
def test_zero_init_residual_zeroes_last_bn_of_each_block(name):
    model = tiny(name, zero_init_residual=True)
    blocks = [m for m in model.modules() if isinstance(m, ResidualBlock)]
    assert len(blocks) == {"resnet18": 8, "resnet34": 16, "resnet50": 16}[name]
    for block in blocks:
        last = block.residual[-1]
        assert isinstance(last, nn.BatchNorm2d) and torch.all(last.weight == 0)
        # the block then passes its shortcut through a ReLU
        x = torch.randn(2, block.residual[0].in_channels, 4, 4)
        assert torch.allclose(block(x), torch.relu(block.shortcut(x)))
    assert torch.all(tiny(name).blocks[0].residual[-1].weight == 1)


def reference_mlp_encoder(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-sample loops for the Linear layers and an explicit train-mode BatchNorm."""
    h = x.reshape(x.shape[0], -1)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    for linear, norm in zip(linears, norms):
        h = torch.stack([linear.weight @ row + linear.bias for row in h])
        mean, var = h.mean(0), h.var(0, unbiased=False)
        h = torch.relu((h - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias)
    return h


def test_mlp_backbone_matches_reference():
    model = tiny("mlp", 2, size=5)
    x = images(2, size=5, batch=6)
    assert torch.allclose(model(x), reference_mlp_encoder(model, x), atol=1e-5)


def test_convnet_default_channels_and_odd_sizes():
    model = build_backbone("convnet", (1, 28, 28))
    assert model.out_dim == 256
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert tiny("convnet", 1, size=7)(images(1, size=7)).shape == (4, 6)


def reference_convnet(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The ConvNet as its paper-style definition reads: conv-BN-ReLU, then the 2x2 max-pool."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for index, (conv, norm) in enumerate(zip(convs, norms)):
        if index > 0:
            x = nn.functional.max_pool2d(x, 2, ceil_mode=True)
        x = torch.relu(norm(conv(x)))
    return x.mean(dim=(2, 3))


def test_convnet_pools_before_relu_with_the_same_values_and_gradients():
    model = build_backbone("convnet", (1, 15, 15), channels=[4, 6, 8])
    x = torch.randn(5, 1, 15, 15, dtype=torch.float64)  # odd sizes: ceil-mode windows at the border
    model = model.double()
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    out = model(x)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    model.load_state_dict(reference)  # the same BatchNorm running statistics for the reference pass
    expected = reference_convnet(model, x)
    expected_grads = torch.autograd.grad(expected.square().sum(), list(model.parameters()))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    assert [type(m).__name__ for m in model.features][2:4] == ["MaxPool2d", "ReLU"]


def test_global_pool_keeps_the_gradient_in_the_input_layout():
    pool = GlobalAvgPool()
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    for layout in (torch.contiguous_format, torch.channels_last):
        given = x.contiguous(memory_format=layout).requires_grad_()
        out = pool(given)
        torch.testing.assert_close(out, x.mean(dim=(2, 3)), rtol=0, atol=1e-12)
        grad, = torch.autograd.grad((out * torch.arange(5.0, dtype=torch.float64)).sum(), given)
        torch.testing.assert_close(grad, torch.arange(5.0, dtype=torch.float64)[:, None, None].expand(3, 5, 4, 6) / 24)
        assert grad.is_contiguous(memory_format=layout)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every parameter and buffer, so BatchNorm statistic updates stay local."""
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    return {k: v.detach().clone() for k, v in tensors.items()}


@pytest.mark.parametrize("name", sorted(TINY))
def test_functional_call_matches_forward_and_follows_parameters(name):
    model = tiny(name)
    x = images()
    own = functional_call(model, state(model), (x,))
    direct = model(x)
    assert torch.allclose(own, direct, atol=1e-6)
    g = torch.Generator().manual_seed(2)
    perturbed = {k: v + 0.1 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                 for k, v in state(model).items()}
    assert not torch.allclose(functional_call(model, perturbed, (x,)), direct, atol=1e-3)
    model.eval()
    assert torch.allclose(functional_call(model, state(model), (x,)), model(x), atol=1e-6)


@pytest.mark.parametrize("name", sorted(TINY))
def test_channels_last_equals_contiguous(name):
    model = tiny(name).eval()
    x = images()
    expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    out = model(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("name", sorted(TINY))
def test_bfloat16_autocast(name):
    model = tiny(name).eval()
    x = images()
    expected = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == expected.shape and torch.isfinite(out).all()
    assert torch.allclose(out.float(), expected, rtol=0.1, atol=0.1 * expected.abs().max().item())


@pytest.mark.parametrize("name", sorted(TINY))
def test_gradient_reaches_every_parameter(name):
    model = tiny(name)
    x = images()
    # a random projection: a plain sum would be flat through the batch-normalised features
    weights = torch.randn(4, model.out_dim, generator=torch.Generator().manual_seed(3))
    (model(x) * weights).sum().backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, param_name


def test_unknown_backbone_name():
    with pytest.raises(ValueError, match="unknown backbone 'resnet19'.*did you mean 'resnet18'"):
        build_backbone("resnet19", (3, 32, 32))


def test_unknown_option_names_valid_options():
    valid = "cifar_stem, width, zero_init_residual"
    with pytest.raises(ValueError, match=rf"'resnet50' has no option 'widht'.*{valid}"):
        build_backbone("resnet50", (3, 32, 32), widht=0.5)
    with pytest.raises(ValueError, match=r"'mlp' has no option 'channels'.*hidden"):
        build_backbone("mlp", (3, 32, 32), channels=(4,))


@pytest.mark.parametrize("name, options, field", [
    ("resnet18", {"width": 0}, "width"),
    ("resnet18", {"width": "wide"}, "width"),
    ("resnet18", {"cifar_stem": "yes"}, "cifar_stem"),
    ("convnet", {"channels": []}, "channels"),
    ("convnet", {"channels": [8, -1]}, "channels"),
    ("mlp", {"hidden": 16}, "hidden"),
])
def test_bad_option_values(name, options, field):
    with pytest.raises(ValueError, match=f"'{field}'"):
        build_backbone(name, (3, 8, 8), **options)


def test_bad_input_shape():
    with pytest.raises(ValueError, match=r"'convnet' encodes images: \(C, H, W\).*input shape \(3, 32\)"):
        build_backbone("convnet", (3, 32))
    with pytest.raises(ValueError, match=r"'gin' encodes graphs: \(F,\).*input shape \(3, 8, 8\)"):
        build_backbone("gin", (3, 8, 8))


def test_option_lists_from_yaml_are_accepted():
    assert build_backbone("convnet", (3, 8, 8), channels=[4, 5]).out_dim == 5


def layer_types(head: nn.Module) -> list[str]:
    return [type(m).__name__ for m in head]


@pytest.mark.parametrize("kwargs, types", [
    ({}, ["Linear", "BatchNorm1d", "ReLU", "Linear"]),
    ({"num_layers": 1}, ["Linear"]),
    ({"num_layers": 3, "batch_norm": False}, ["Linear", "ReLU", "Linear", "ReLU", "Linear"]),
    ({"last_batch_norm": True}, ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]),
])
def test_head_layer_structure_and_shapes(kwargs, types):
    head = MLPHead(10, 7, 5, **kwargs)
    assert layer_types(head) == types
    linears = [m for m in head if isinstance(m, nn.Linear)]
    assert linears[0].in_features == 10 and linears[-1].out_features == 5
    assert all(m.in_features == 7 for m in linears[1:])
    assert head(torch.randn(3, 10)).shape == (3, 5) and head.out_dim == 5


def test_head_bias_and_last_bn_affine_flags():
    head = MLPHead(4, 6, 3, last_batch_norm=True, last_bn_affine=False, bias=False)
    assert all(m.bias is None for m in head if isinstance(m, nn.Linear))
    assert head[-1].weight is None and head[1].weight is not None


def test_head_matches_reference():
    head = MLPHead(4, 6, 3, num_layers=2, last_batch_norm=True)
    x = torch.randn(5, 4)
    h = torch.stack([head[0].weight @ row + head[0].bias for row in x])
    h = torch.relu((h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + 1e-5))
    z = torch.stack([head[3].weight @ row + head[3].bias for row in h])
    z = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)
    assert torch.allclose(head(x), z, atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_layers": 0}, "num_layers must be an int >= 1, got 0"),
    ({"in_dim": 0}, "in_dim must be a positive int, got 0"),
    ({"hidden_dim": -3}, "hidden_dim must be a positive int, got -3"),
    ({"out_dim": 2.5}, "out_dim must be a positive int, got 2.5"),
])
def test_head_argument_errors(kwargs, message):
    args = {"in_dim": 4, "hidden_dim": 6, "out_dim": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        MLPHead(**args)


def test_head_functional_call():
    head = MLPHead(4, 6, 3, last_batch_norm=True)
    x = torch.randn(5, 4)
    assert torch.allclose(functional_call(head, state(head), (x,)), head(x), atol=1e-6)
