"""Every loss against a slow loop-based reference in float64: values and gradients."""

import math

import pytest
import torch

from contrastlab.losses import (
    barlow_twins_loss,
    batch_pairs,
    byol_loss,
    contrastive_loss,
    cross_correlation,
    debiased_info_nce,
    hard_negative_log_weights,
    info_nce,
    nt_xent,
    queue_pairs,
)


def reference_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """Literal transcription of SimCLR's loss: for each of the 2B anchors, -log of the
    positive's share of exp(cos / t) over every other embedding."""
    z = torch.cat([z1, z2])
    n, b = z.shape[0], z1.shape[0]
    total = z.new_zeros(())
    for a in range(n):
        positive = (a + b) % n
        sims = [torch.dot(z[a], z[k]) / (z[a].norm() * z[k].norm()) / t for k in range(n)]
        denominator = sum(torch.exp(sims[k]) for k in range(n) if k != a)
        total = total - torch.log(torch.exp(sims[positive]) / denominator)
    return total / n


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_nt_xent_matches_reference_values_and_gradients(temperature):
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    ours = nt_xent(z1, z2, temperature)
    ref = reference_nt_xent(z1, z2, temperature)
    assert torch.allclose(ours.double(), ref, atol=1e-6)
    g_ours = torch.autograd.grad(ours, (z1, z2))
    g_ref = torch.autograd.grad(ref, (z1, z2))
    for a, b in zip(g_ours, g_ref):
        assert torch.allclose(a.double(), b, atol=1e-6)


def test_nt_xent_perfect_pairs_beat_random_pairs():
    g = torch.Generator().manual_seed(1)
    z = torch.nn.functional.normalize(torch.randn(32, 64, generator=g), dim=1)
    aligned = nt_xent(z, z, 0.1)
    shuffled = nt_xent(z, z[torch.randperm(32, generator=g)], 0.1)
    assert aligned < shuffled
    # identical views of orthogonal-ish embeddings: the loss approaches its floor log(1) = 0
    assert aligned < math.log(2 * 32 - 1)


def test_nt_xent_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="z1 and z2"):
        nt_xent(torch.randn(4, 8), torch.randn(5, 8))


# ------------------------------------------------------------------ InfoNCE, DCL, HCL on similarities
def reference_info_nce(pos, neg, t):
    """-log of the positive's share of exp(s / t) over the positive and every negative."""
    total = pos.new_zeros(())
    for a in range(neg.shape[0]):
        denominator = torch.exp(pos[a] / t) + sum(torch.exp(neg[a, j] / t) for j in range(neg.shape[1]))
        total = total - torch.log(torch.exp(pos[a] / t) / denominator)
    return total / neg.shape[0]


def reference_debiased(pos, neg, t, tau_plus, beta):
    """Spec 2.3/2.4 literally, one anchor at a time, unshifted exponentials.

    Returns the loss and, per anchor, whether the floor ``M e^{-1/t}`` was active."""
    total, clamped = pos.new_zeros(()), []
    n_anchors, m = neg.shape
    floor = torch.tensor(m * math.exp(-1 / t), dtype=pos.dtype)
    for a in range(n_anchors):
        e_pos = torch.exp(pos[a] / t)
        e_neg = [torch.exp(neg[a, j] / t) for j in range(m)]
        imp = [torch.exp(beta * neg[a, j] / t) for j in range(m)]
        mean_imp = sum(imp) / m
        reweighted = sum(imp[j] / mean_imp * e_neg[j] for j in range(m))
        estimate = (reweighted - tau_plus * m * e_pos) / (1 - tau_plus)
        clamped.append(bool(estimate < floor))
        total = total - torch.log(e_pos / (e_pos + torch.maximum(estimate, floor)))
    return total / n_anchors, clamped


def cosine_pairs(n=5, m=7, seed=0, low=-1.0, high=1.0):
    """``pos: (n,)``, ``neg: (n, m)`` float64 cosines drawn uniformly in [low, high], with grad."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(n, generator=g, dtype=torch.float64) * (high - low) + low
    neg = torch.rand(n, m, generator=g, dtype=torch.float64) * (high - low) + low
    return pos.requires_grad_(), neg.requires_grad_()


def assert_same_values_and_grads(ours, ref, inputs, atol=1e-10):
    assert torch.allclose(ours, ref, rtol=0, atol=atol), (ours.item(), ref.item())
    g_ours = torch.autograd.grad(ours, inputs, retain_graph=True, allow_unused=True)
    g_ref = torch.autograd.grad(ref, inputs, retain_graph=True, allow_unused=True)
    for a, b in zip(g_ours, g_ref):
        assert torch.allclose(a, b, rtol=0, atol=atol)


@pytest.mark.parametrize("t", [0.07, 0.5, 2.0])
def test_info_nce_matches_reference(t):
    pos, neg = cosine_pairs(seed=1)
    assert_same_values_and_grads(info_nce(pos, neg, t), reference_info_nce(pos, neg, t), (pos, neg))


@pytest.mark.parametrize("kind, tau_plus, beta, t", [
    ("dcl", 0.1, 0.0, 0.5), ("hcl", 0.1, 1.0, 0.5), ("hcl", 0.05, 0.5, 0.2), ("dcl", 0.0, 0.0, 0.3),
    ("hcl", 0.02, 2.0, 0.1),
])
def test_debiased_losses_match_reference_without_clamp(kind, tau_plus, beta, t):
    pos, neg = cosine_pairs()
    ours = contrastive_loss(pos, neg, t, kind, tau_plus, beta)
    ref, clamped = reference_debiased(pos, neg, t, tau_plus, beta if kind == "hcl" else 0.0)
    assert not any(clamped)
    if tau_plus > 0:
        assert not torch.allclose(ours, info_nce(pos, neg, t))  # the debiasing changes the value
    assert_same_values_and_grads(ours, ref, (pos, neg))


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_debiased_clamp_is_honoured_per_anchor(beta):
    # anchor 0: aligned positive, far negatives and a large prior push the estimate below the
    # floor; the other anchors stay above it
    pos, neg = cosine_pairs(n=4, m=5, seed=2, low=-0.3, high=0.3)
    with torch.no_grad():
        pos[0], neg[0] = 0.99, -0.9
    ours = debiased_info_nce(pos, neg, 0.5, tau_plus=0.4, beta=beta)
    ref, clamped = reference_debiased(pos, neg, 0.5, 0.4, beta)
    assert clamped == [True, False, False, False]
    assert_same_values_and_grads(ours, ref, (pos, neg))
    assert torch.autograd.grad(ours, neg)[0][0].abs().max() == 0  # clamped: Ng is a constant


def test_fully_clamped_loss_equals_the_floor():
    pos = torch.full((3,), 0.99, dtype=torch.float64, requires_grad=True)
    neg = torch.full((3, 4), -0.9, dtype=torch.float64, requires_grad=True)
    ours = contrastive_loss(pos, neg, 0.5, "dcl", tau_plus=0.5)
    floor = -torch.log(torch.exp(pos[0] / 0.5) / (torch.exp(pos[0] / 0.5) + 4 * math.exp(-2)))
    assert torch.allclose(ours, floor, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["infonce", "dcl", "hcl"])
def test_small_temperature_in_float32_matches_float64_reference(kind):
    # t = 0.01: every e^{s/t} here is below float32's range; the loss must still be right
    pos, neg = cosine_pairs(seed=4, low=-0.6, high=-0.2)
    ours = contrastive_loss(pos.float(), neg.float(), 0.01, kind, tau_plus=0.1, beta=1.0)
    if kind == "infonce":
        ref = reference_info_nce(pos, neg, 0.01)
    else:
        ref, _ = reference_debiased(pos, neg, 0.01, 0.1, 1.0 if kind == "hcl" else 0.0)
    assert ours.dtype == torch.float32
    assert torch.allclose(ours.double(), ref, rtol=1e-5, atol=0)


def test_dcl_without_prior_is_infonce_over_the_negatives_plus_the_positive():
    # Section 9 item 1. With tau_plus = 0, Ng = sum_j e^{neg_j/t} (never below the floor, as
    # cosines are >= -1), so the denominator is e^{pos/t} + Ng: the positive appears once, next
    # to the N negatives, which is exactly SimCLR's 2B - 1 terms (the spec's "without the positive"
    # means Ng itself excludes it).
    pos, neg = cosine_pairs(seed=3)
    assert_same_values_and_grads(contrastive_loss(pos, neg, 0.5, "dcl", tau_plus=0.0),
                                 reference_info_nce(pos, neg, 0.5), (pos, neg))
    z1, z2 = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    assert torch.allclose(nt_xent(z1, z2, 0.5, "dcl", tau_plus=0.0), reference_nt_xent(z1, z2, 0.5))


def test_hcl_with_zero_concentration_is_dcl():
    pos, neg = cosine_pairs(seed=5)
    assert_same_values_and_grads(contrastive_loss(pos, neg, 0.5, "hcl", 0.1, beta=0.0),
                                 contrastive_loss(pos, neg, 0.5, "dcl", 0.1, beta=3.0), (pos, neg))


def test_hcl_weights_match_reference_have_mean_one_and_carry_gradient():
    _, neg = cosine_pairs(seed=6)
    weights = hard_negative_log_weights(neg, 0.5, 2.0).exp()
    for a in range(neg.shape[0]):
        imp = [math.exp(2.0 * neg[a, j].item() / 0.5) for j in range(neg.shape[1])]
        expected = [v / (sum(imp) / len(imp)) for v in imp]
        assert torch.allclose(weights[a], torch.tensor(expected, dtype=torch.float64), rtol=1e-12)
    assert torch.allclose(weights.mean(dim=1), torch.ones(neg.shape[0], dtype=torch.float64))
    assert weights.requires_grad  # not detached, as in the HCL code
    assert torch.equal(hard_negative_log_weights(neg, 0.5, 0.0), torch.zeros_like(neg))


@pytest.mark.parametrize("call, message", [
    (lambda p, n: contrastive_loss(p, n, 0.5, "dlc"), "expected one of infonce, dcl, hcl"),
    (lambda p, n: contrastive_loss(p, n, 0.5, "dcl", tau_plus=1.0), "tau_plus must be in"),
    (lambda p, n: contrastive_loss(p, n, 0.5, "dcl", tau_plus=-0.1), "tau_plus must be in"),
    (lambda p, n: contrastive_loss(p, n, 0.5, "hcl", beta=-1.0), "beta >= 0"),
    (lambda p, n: contrastive_loss(p, n, 0.0, "hcl"), "temperature must be > 0"),
    (lambda p, n: info_nce(p, n, -1.0), "temperature must be > 0"),
    (lambda p, n: info_nce(p[:2], n, 0.5), "expected pos: \\(N,\\) and neg"),
    (lambda p, n: info_nce(p, n[:, :0], 0.5), "M >= 1"),
])
def test_contrastive_losses_reject_bad_arguments(call, message):
    pos, neg = cosine_pairs()
    with pytest.raises(ValueError, match=message):
        call(pos, neg)


# ------------------------------------------------------------------ batch and queue pairs
def test_batch_pairs_match_explicit_construction_with_gradients():
    g = torch.Generator().manual_seed(5)
    z1 = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    pos, neg = batch_pairs(z1, z2)
    z = torch.cat([z1, z2])
    z = [z[k] / z[k].norm() for k in range(6)]
    ref_pos = torch.stack([z[a] @ z[(a + 3) % 6] for a in range(6)])
    ref_neg = torch.stack([torch.stack([z[a] @ z[k] for k in range(6) if k not in (a, (a + 3) % 6)])
                           for a in range(6)])
    assert pos.shape == (6,) and neg.shape == (6, 4)
    probe = torch.randn(6, 5, generator=g, dtype=torch.float64)  # a random linear read-out of both
    assert_same_values_and_grads((pos * probe[:, 0]).sum() + (neg * probe[:, 1:]).sum(),
                                 (ref_pos * probe[:, 0]).sum() + (ref_neg * probe[:, 1:]).sum(), (z1, z2))
    assert torch.allclose(pos, ref_pos) and torch.allclose(neg, ref_neg)


@pytest.mark.parametrize("kind, beta", [("dcl", 0.0), ("hcl", 1.0)])
def test_nt_xent_switch_uses_the_batch_negatives(kind, beta):
    g = torch.Generator().manual_seed(8)
    z1 = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    ref, _ = reference_debiased(*batch_pairs(z1, z2), 0.5, 0.1, beta)
    assert_same_values_and_grads(nt_xent(z1, z2, 0.5, kind=kind), ref, (z1, z2))


def test_nt_xent_keeps_float64_and_promotes_half_precision():
    z = torch.randn(4, 3, dtype=torch.float64)
    assert nt_xent(z, z).dtype == torch.float64
    for half in (torch.float16, torch.bfloat16):
        loss = nt_xent(z.to(half), z.to(half), kind="hcl")
        assert loss.dtype == torch.float32
        assert torch.allclose(loss.double(), nt_xent(z, z, kind="hcl"), atol=1e-2)


def test_queue_pairs_and_moco_infonce_match_reference():
    g = torch.Generator().manual_seed(6)
    q = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    queue = torch.nn.functional.normalize(torch.randn(5, 4, generator=g, dtype=torch.float64), dim=1)
    queue.requires_grad_()
    pos, neg = queue_pairs(q, k, queue)
    assert pos.shape == (3,) and neg.shape == (3, 5)
    loss = info_nce(pos, neg, 0.2)
    ref = q.new_zeros(())
    for i in range(3):
        qi, ki = q[i] / q[i].norm(), k[i].detach() / k[i].detach().norm()
        logits = [qi @ ki / 0.2] + [qi @ queue[j].detach() / 0.2 for j in range(5)]
        ref = ref - torch.log(torch.exp(logits[0]) / sum(torch.exp(v) for v in logits))
    assert_same_values_and_grads(loss, ref / 3, (q,))
    assert torch.autograd.grad(loss, (k, queue), allow_unused=True) == (None, None)  # constants


def test_pair_builders_reject_bad_shapes():
    with pytest.raises(ValueError, match="z1 and z2"):
        batch_pairs(torch.randn(4, 8), torch.randn(4, 7))
    with pytest.raises(ValueError, match="queue: \\(K, D\\)"):
        queue_pairs(torch.randn(4, 8), torch.randn(4, 8), torch.randn(10, 7))


# ------------------------------------------------------------------ BYOL, Barlow Twins
def test_byol_loss_reference_and_stop_gradient():
    p = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    loss = byol_loss(p, z)
    ref = sum(((p[i] / p[i].norm() - z[i].detach() / z[i].detach().norm()) ** 2).sum() for i in range(4)) / 4
    assert_same_values_and_grads(loss, ref, (p,))
    loss.backward()
    assert z.grad is None and p.grad is not None
    with pytest.raises(ValueError, match="p and z"):
        byol_loss(p, z[:3])


def loop_cross_correlation(z1, z2):
    """``C[i][j]`` by explicit loops: per-dimension standardisation (biased variance + 1e-5)."""
    n, d = z1.shape

    def standardise(z, k):
        column = [z[b, k] for b in range(n)]
        mean = sum(column) / n
        var = sum((v - mean) ** 2 for v in column) / n
        return [(v - mean) / torch.sqrt(var + 1e-5) for v in column]

    a = [standardise(z1, k) for k in range(d)]
    b = [standardise(z2, k) for k in range(d)]
    return [[sum(a[i][s] * b[j][s] for s in range(n)) / n for j in range(d)] for i in range(d)]


def test_barlow_twins_matches_double_loop_reference():
    g = torch.Generator().manual_seed(7)
    z1 = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    c = loop_cross_correlation(z1, z2)
    assert torch.allclose(cross_correlation(z1, z2), torch.stack([torch.stack(row) for row in c]))
    ref = z1.new_zeros(())
    for i in range(3):
        for j in range(3):
            ref = ref + ((1 - c[i][j]) ** 2 if i == j else 0.3 * c[i][j] ** 2)
    assert_same_values_and_grads(barlow_twins_loss(z1, z2, 0.3), ref, (z1, z2))
    identical = torch.randn(64, 3, dtype=torch.float64)
    assert barlow_twins_loss(identical, identical, 0.0) < 1e-3  # diagonal ~1


def test_barlow_twins_rejects_bad_shapes_and_single_samples():
    with pytest.raises(ValueError, match="z1 and z2"):
        barlow_twins_loss(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="needs >= 2 samples"):
        barlow_twins_loss(torch.randn(1, 3), torch.randn(1, 3))


# --- log-sum-exp usable through forward mode -------------------------------------------------


def test_composite_logsumexp_matches_torch_in_value_and_gradient():
    from contrastlab.losses.logsumexp import log_softmax, logsumexp

    torch.manual_seed(0)
    x = (30 * torch.randn(5, 7, dtype=torch.float64)).requires_grad_()
    def masked():
        return x.masked_fill(torch.eye(5, 7, dtype=torch.bool), float("-inf"))

    torch.testing.assert_close(logsumexp(masked(), 1), torch.logsumexp(masked(), 1))
    torch.testing.assert_close(log_softmax(masked(), 0), torch.log_softmax(masked(), 0))
    weights = torch.randn(5, dtype=torch.float64)
    ours = torch.autograd.grad((logsumexp(masked(), 1) * weights).sum(), x)[0]
    theirs = torch.autograd.grad((torch.logsumexp(masked(), 1) * weights).sum(), x)[0]
    torch.testing.assert_close(ours, theirs)
    assert logsumexp(torch.full((2, 3), float("-inf")), 1).eq(float("-inf")).all()


def test_composite_logsumexp_tangent_can_be_back_propagated():
    """Reverse over forward (what the meta core's jvp mode does) equals the Hessian-vector
    product by double backward."""
    import torch.autograd.forward_ad as fwAD

    from contrastlab.losses.logsumexp import logsumexp

    torch.manual_seed(0)
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    direction = torch.randn(4, 6, dtype=torch.float64)
    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(logsumexp(fwAD.make_dual(x, direction), 1).pow(2).sum()).tangent
    got = torch.autograd.grad(tangent, x)[0]
    grad = torch.autograd.grad(logsumexp(x, 1).pow(2).sum(), x, create_graph=True)[0]
    expected = torch.autograd.grad((grad * direction).sum(), x)[0]
    torch.testing.assert_close(got, expected)
