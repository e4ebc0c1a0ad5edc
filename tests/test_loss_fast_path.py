"""NT-Xent's fast path (full similarity matrix, self masked, fused cross-entropy) against the
composite path it replaced and the slow loop reference; forward-mode tangents through it."""

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from test_losses import assert_same_values_and_grads, reference_nt_xent

from contrastlab.losses import batch_pairs, info_nce, nt_xent, queue_pairs
from contrastlab.losses.logsumexp import logsumexp

F64 = torch.float64


def composite_nt_xent(z1, z2, t):
    """The previous default: ``(pos, neg)`` gathered by :func:`batch_pairs`, concatenated, and
    the composite log-sum-exp."""
    pos, neg = batch_pairs(z1, z2)
    logits = torch.cat([pos[:, None], neg], dim=1) / t
    return (logsumexp(logits, dim=1) - logits[:, 0]).mean()


def views(b=6, d=5, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, d, generator=g, dtype=F64).to(dtype).requires_grad_() for _ in range(2))


def hessian_vector_product(loss_of, inputs, directions):
    """``H v`` by double backward of ``loss_of(*inputs)``."""
    grads = torch.autograd.grad(loss_of(*inputs), inputs, create_graph=True)
    return torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, directions)), inputs)


def reverse_over_forward(loss_of, inputs, directions):
    """The tangent of ``loss_of`` along ``directions`` (forward mode) and its gradient w.r.t.
    ``inputs`` (reverse mode), as the meta core's ``second_order="jvp"`` does."""
    with fwAD.dual_level():
        out = loss_of(*(fwAD.make_dual(x, v) for x, v in zip(inputs, directions)))
        tangent = fwAD.unpack_dual(out).tangent
    return tangent, torch.autograd.grad(tangent, inputs)


@pytest.mark.parametrize("t", [0.07, 0.5, 2.0])
@pytest.mark.parametrize("b", [1, 6])
def test_fast_path_equals_composite_and_loop_reference_in_float64(t, b):
    z1, z2 = views(b=b, seed=b)
    fast = nt_xent(z1, z2, t)
    assert type(fast.grad_fn).__name__.startswith("NllLoss")  # the fused cross-entropy ran
    assert_same_values_and_grads(fast, composite_nt_xent(z1, z2, t), (z1, z2))
    assert_same_values_and_grads(fast, reference_nt_xent(z1, z2, t), (z1, z2))


def test_fast_path_equals_composite_on_bfloat16_inputs():
    """bf16 projections (as autocast produces them) are promoted: both paths compute in float32
    on the same values, and match the float64 reference on those values."""
    z1, z2 = views(b=8, d=16, seed=1, dtype=torch.bfloat16)
    fast, composite = nt_xent(z1, z2, 0.2), composite_nt_xent(z1, z2, 0.2)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, composite, rtol=0, atol=1e-6)
    exact = [z.detach().double().requires_grad_() for z in (z1, z2)]
    torch.testing.assert_close(fast.double(), reference_nt_xent(*exact, 0.2), rtol=0, atol=1e-5)
    for ours, theirs in zip(torch.autograd.grad(fast, (z1, z2)), torch.autograd.grad(composite, (z1, z2))):
        assert ours.dtype == torch.bfloat16
        torch.testing.assert_close(ours.float(), theirs.float(), rtol=1e-2, atol=1e-2 * theirs.abs().max().item())


def test_fast_path_under_bfloat16_autocast_runs_in_float32():
    """Under autocast the similarity matmul is not demoted: the loss and its gradients are those
    of float32, the same in the fast and the composite path."""
    z1, z2 = views(b=8, d=16, seed=2, dtype=torch.float32)
    plain = nt_xent(z1, z2, 0.1)
    plain_grads = torch.autograd.grad(plain, (z1, z2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast, composite = nt_xent(z1, z2, 0.1), composite_nt_xent(z1, z2, 0.1)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-6)
    assert_same_values_and_grads(fast, composite, (z1, z2), atol=1e-6)
    for got, expected in zip(torch.autograd.grad(fast, (z1, z2)), plain_grads):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_reverse_over_forward_through_nt_xent_equals_double_backward_and_finite_differences():
    z1, z2 = views(b=5, d=4, seed=3)
    g = torch.Generator().manual_seed(4)
    directions = [torch.randn(z.shape, generator=g, dtype=F64) for z in (z1, z2)]
    tangent, hvp = reverse_over_forward(lambda a, b: nt_xent(a, b, 0.3), (z1, z2), directions)
    # the tangent is the directional derivative: central differences
    eps = 1e-6
    with torch.no_grad():
        plus = nt_xent(*(z + eps * v for z, v in zip((z1, z2), directions)), 0.3)
        minus = nt_xent(*(z - eps * v for z, v in zip((z1, z2), directions)), 0.3)
    torch.testing.assert_close(tangent, (plus - minus) / (2 * eps), rtol=0, atol=1e-8)
    # its gradient is the Hessian-vector product, of the composite path and of the fused one
    for loss_of in (composite_nt_xent, nt_xent):
        expected = hessian_vector_product(lambda a, b: loss_of(a, b, 0.3), (z1, z2), directions)
        for got, ref in zip(hvp, expected):
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)


def test_tangent_arriving_through_weights_takes_the_composite_path():
    """MetaMask's case: the tangent is on a head's weights, not on the loss inputs."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(12, 6, generator=g, dtype=F64)
    weight = torch.randn(4, 6, generator=g, dtype=F64, requires_grad=True)
    direction = torch.randn(4, 6, generator=g, dtype=F64)

    def loss_of(w):
        return nt_xent(*(x @ w.T).chunk(2), 0.5)

    _, (got,) = reverse_over_forward(loss_of, (weight,), (direction,))
    (expected,) = hessian_vector_product(lambda w: composite_nt_xent(*(x @ w.T).chunk(2), 0.5), (weight,), (direction,))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


def test_inputs_without_a_tangent_keep_the_fast_path_inside_a_dual_level():
    z1, z2 = views(seed=6)
    with fwAD.dual_level():
        loss = nt_xent(z1, z2, 0.5)
    assert type(loss.grad_fn).__name__.startswith("NllLoss")
    assert_same_values_and_grads(loss, composite_nt_xent(z1, z2, 0.5), (z1, z2))


def test_reverse_over_forward_through_the_queue_info_nce():
    g = torch.Generator().manual_seed(7)
    q, k = (torch.randn(4, 5, generator=g, dtype=F64, requires_grad=True) for _ in range(2))
    queue = torch.nn.functional.normalize(torch.randn(9, 5, generator=g, dtype=F64), dim=1)
    direction = torch.randn(4, 5, generator=g, dtype=F64)

    def fused(q):
        return info_nce(*queue_pairs(q, k, queue), 0.2)

    def composite(q):
        pos, neg = queue_pairs(q, k, queue)
        logits = torch.cat([pos[:, None], neg], dim=1) / 0.2
        return (logsumexp(logits, dim=1) - logits[:, 0]).mean()

    assert_same_values_and_grads(fused(q), composite(q), (q,))
    _, (got,) = reverse_over_forward(fused, (q,), (direction,))
    (expected,) = hessian_vector_product(composite, (q,), (direction,))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


def test_fast_path_rejects_bad_arguments():
    z1, z2 = views()
    with pytest.raises(ValueError, match="temperature must be > 0"):
        nt_xent(z1, z2, 0.0)
    with pytest.raises(ValueError, match="z1 and z2"):
        nt_xent(z1, z2[:3])
