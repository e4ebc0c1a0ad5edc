"""BatchNorm helpers: batch statistics without touching running statistics, and the composite
BatchNorm whose forward-mode tangent back-propagates correctly."""

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn

from contrastlab.models.batchnorm import batch_statistics_only

LAYERS = {"1d": (nn.BatchNorm1d, (6, 3)), "2d": (nn.BatchNorm2d, (5, 3, 4, 4))}


def make_layer(kind: str, training: bool) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    cls, shape = LAYERS[kind]
    layer = cls(3).double()
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
        layer.running_mean.normal_()
        layer.running_var.uniform_(0.5, 2.0)
    return layer.train(training), torch.randn(shape, dtype=torch.float64)


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_composite_equals_native_in_value_and_gradient_and_keeps_running_statistics(kind, training):
    layer, x = make_layer(kind, training)
    stats = [b.clone() for b in layer.buffers()]
    outputs, grads = [], []
    for composite in (False, True):
        leaf = x.clone().requires_grad_()
        with batch_statistics_only(layer, composite=composite):
            out = layer(leaf)
        outputs.append(out.detach())
        grads.append(torch.autograd.grad(out.sin().sum(), [leaf, layer.weight, layer.bias]))
    torch.testing.assert_close(outputs[1], outputs[0])
    for got, expected in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, expected)
    assert all(torch.equal(b, s) for b, s in zip(layer.buffers(), stats))
    assert "forward" not in vars(layer)  # the instance override is removed again


@pytest.mark.parametrize("kind", LAYERS)
def test_composite_tangent_back_propagates_like_a_double_backward(kind):
    """Reverse over forward through the layer (input and weight both carry tangents and require
    grad) equals the Hessian-vector product by double backward."""
    layer, x = make_layer(kind, True)
    x = x.requires_grad_()
    x_dot, w_dot = torch.randn_like(x), torch.randn_like(layer.weight)
    with batch_statistics_only(layer, composite=True), fwAD.dual_level():
        dual_weight = fwAD.make_dual(layer.weight, w_dot)
        out = torch.func.functional_call(layer, {"weight": dual_weight}, (fwAD.make_dual(x, x_dot),))
        tangent = fwAD.unpack_dual(out.sin().sum()).tangent
    got = torch.autograd.grad(tangent, [x, layer.weight])
    value = layer(x).sin().sum()
    gx, gw = torch.autograd.grad(value, [x, layer.weight], create_graph=True)
    expected = torch.autograd.grad((gx * x_dot).sum() + (gw * w_dot).sum(), [x, layer.weight])
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
