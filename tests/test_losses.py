"""NT-Xent against a slow loop-based reference, values and gradients."""

import math

import pytest
import torch

from contrastlab.losses import nt_xent


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


# ------------------------------------------------------------------ DCL, HCL, MoCo, BYOL, Barlow
from contrastlab.losses import (  # noqa: E402
    barlow_twins_loss,
    batch_pairs,
    byol_loss,
    contrastive_loss,
    queue_pairs,
)


def reference_debiased(pos, neg, t, tau_plus, beta):
    """Spec 2.3/2.4 literally, one anchor at a time, unshifted exponentials."""
    total = pos.new_zeros(())
    n_anchors, m = neg.shape
    for a in range(n_anchors):
        e_pos = torch.exp(pos[a] / t)
        e_neg = [torch.exp(neg[a, j] / t) for j in range(m)]
        imp = [torch.exp(beta * neg[a, j] / t) for j in range(m)]
        mean_imp = sum(imp) / m
        reweighted = sum(imp[j] * e_neg[j] for j in range(m)) / mean_imp
        ng = (reweighted - tau_plus * m * e_pos) / (1 - tau_plus)
        ng = torch.maximum(ng, torch.tensor(m * math.exp(-1 / t), dtype=ng.dtype))
        total = total - torch.log(e_pos / (e_pos + ng))
    return total / n_anchors


def cosine_pairs(n=5, m=7, seed=0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    pos = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * spread
    neg = (torch.rand(n, m, generator=g, dtype=torch.float64) * 2 - 1) * spread
    return pos.requires_grad_(), neg.requires_grad_()


@pytest.mark.parametrize("kind, tau_plus, beta, t", [
    ("dcl", 0.1, 0.0, 0.5), ("hcl", 0.1, 1.0, 0.5), ("hcl", 0.05, 0.5, 0.2), ("dcl", 0.0, 0.0, 0.3),
])
def test_debiased_losses_match_reference(kind, tau_plus, beta, t):
    pos, neg = cosine_pairs()
    ours = contrastive_loss(pos, neg, t, kind, tau_plus, beta)
    if tau_plus > 0:
        assert not torch.allclose(ours, contrastive_loss(pos, neg, t))  # the debiasing changes the value
    ref = reference_debiased(pos, neg, t, tau_plus, beta if kind == "hcl" else 0.0)
    assert torch.allclose(ours, ref, atol=1e-10)
    for a, b in zip(torch.autograd.grad(ours, (pos, neg)), torch.autograd.grad(ref, (pos, neg))):
        assert torch.allclose(a, b, atol=1e-10)


def test_debiased_clamp_is_honoured():
    # positives much closer than negatives and a large prior: the estimate goes below the floor
    pos = torch.full((3,), 0.99, dtype=torch.float64, requires_grad=True)
    neg = torch.full((3, 4), -0.9, dtype=torch.float64, requires_grad=True)
    ours = contrastive_loss(pos, neg, 0.5, "dcl", tau_plus=0.5)
    ref = reference_debiased(pos, neg, 0.5, 0.5, 0.0)
    floor = -torch.log(torch.exp(pos[0] / 0.5) / (torch.exp(pos[0] / 0.5) + 4 * math.exp(-2)))
    assert torch.allclose(ours, ref) and torch.allclose(ours, floor)
    assert torch.autograd.grad(ours, neg)[0].abs().max() == 0  # clamped: no gradient to negatives


def test_section9_identities():
    pos, neg = cosine_pairs(seed=3)
    # tau_plus = 0: Ng = sum_j e^{neg_j/t} (never below the floor M e^{-1/t} since cosines >= -1),
    # so DCL is InfoNCE with the positive plus the N negatives in the denominator.
    assert torch.allclose(contrastive_loss(pos, neg, 0.5, "dcl", tau_plus=0.0), contrastive_loss(pos, neg, 0.5))
    assert torch.allclose(contrastive_loss(pos, neg, 0.5, "hcl", 0.1, beta=0.0),
                          contrastive_loss(pos, neg, 0.5, "dcl", 0.1))
    with pytest.raises(ValueError, match="expected one of infonce, dcl, hcl"):
        contrastive_loss(pos, neg, 0.5, "dlc")
    with pytest.raises(ValueError, match="tau_plus"):
        contrastive_loss(pos, neg, 0.5, "dcl", tau_plus=1.0)


def test_small_temperature_does_not_overflow():
    pos, neg = cosine_pairs(seed=4)
    for kind in ("infonce", "dcl", "hcl"):
        loss = contrastive_loss(pos.float(), neg.float(), 0.01, kind)
        assert torch.isfinite(loss), kind


def test_batch_pairs_match_explicit_construction():
    g = torch.Generator().manual_seed(5)
    z1, z2 = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    pos, neg = batch_pairs(z1, z2)
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    for a in range(6):
        p = (a + 3) % 6
        assert torch.isclose(pos[a], z[a] @ z[p])
        expected = [z[a] @ z[k] for k in range(6) if k not in (a, p)]
        assert torch.allclose(neg[a], torch.stack(expected))


@pytest.mark.parametrize("kind", ["dcl", "hcl"])
def test_nt_xent_switch_uses_the_batch_negatives(kind):
    z1, z2 = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    pos, neg = batch_pairs(z1, z2)
    ref = reference_debiased(pos, neg, 0.5, 0.1, 1.0 if kind == "hcl" else 0.0)
    assert torch.allclose(nt_xent(z1, z2, 0.5, kind=kind), ref)


def test_queue_pairs_and_moco_infonce_match_reference():
    g = torch.Generator().manual_seed(6)
    q = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    queue = torch.nn.functional.normalize(torch.randn(5, 4, generator=g, dtype=torch.float64), dim=1)
    loss = contrastive_loss(*queue_pairs(q, k, queue), 0.2)
    ref = q.new_zeros(())
    for i in range(3):
        qi, ki = q[i] / q[i].norm(), k[i].detach() / k[i].detach().norm()
        logits = [qi @ ki / 0.2] + [qi @ queue[j] / 0.2 for j in range(5)]
        ref = ref - torch.log(torch.exp(logits[0]) / sum(torch.exp(v) for v in logits))
    ref = ref / 3
    assert torch.allclose(loss, ref)
    assert torch.allclose(torch.autograd.grad(loss, q, retain_graph=True)[0], torch.autograd.grad(ref, q)[0])
    assert torch.autograd.grad(loss, k, allow_unused=True)[0] is None  # keys are constants


def test_byol_loss_reference_and_stop_gradient():
    p = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    loss = byol_loss(p, z)
    ref = sum(((p[i] / p[i].norm() - z[i] / z[i].norm()) ** 2).sum() for i in range(4)) / 4
    assert torch.allclose(loss.double(), ref, atol=1e-6)
    loss.backward()
    assert z.grad is None and p.grad is not None


def test_barlow_twins_matches_double_loop_reference():
    g = torch.Generator().manual_seed(7)
    z1 = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    lambd = 0.3
    loss = barlow_twins_loss(z1, z2, lambd)

    def standardise(z, d):
        column = [z[b, d] for b in range(6)]
        mean = sum(column) / 6
        var = sum((v - mean) ** 2 for v in column) / 6
        return [(v - mean) / torch.sqrt(var + 1e-5) for v in column]

    a = [standardise(z1, d) for d in range(3)]
    b = [standardise(z2, d) for d in range(3)]
    ref = z1.new_zeros(())
    for i in range(3):
        for j in range(3):
            c = sum(a[i][n] * b[j][n] for n in range(6)) / 6
            ref = ref + ((1 - c) ** 2 if i == j else lambd * c ** 2)
    assert torch.allclose(loss, ref)
    for x, y in zip(torch.autograd.grad(loss, (z1, z2)), torch.autograd.grad(ref, (z1, z2))):
        assert torch.allclose(x, y)
    identical = torch.randn(64, 3, dtype=torch.float64)
    assert barlow_twins_loss(identical, identical, 0.0) < 1e-3  # diagonal ~1
