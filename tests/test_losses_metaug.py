"""MetAug's OUCL and margin-injected regulariser against float64 loop references."""

import math

import pytest
import torch

from contrastlab.losses import MARGIN_TYPES, info_nce, margin_injection, oucl


def scores(rows, cols, seed, low=-1.0, high=1.0):
    """``(rows, cols)`` float64 scores drawn uniformly in [low, high], with grad."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(rows, cols, generator=g, dtype=torch.float64) * (high - low) + low).requires_grad_()


def assert_same_values_and_grads(ours, ref, inputs, atol=1e-10):
    assert torch.allclose(ours, ref, rtol=0, atol=atol), (ours.item(), ref.item())
    g_ours = torch.autograd.grad(ours, inputs, retain_graph=True)
    g_ref = torch.autograd.grad(ref, inputs, retain_graph=True)
    for a, b in zip(g_ours, g_ref):
        assert torch.allclose(a, b, rtol=0, atol=atol)


# ------------------------------------------------------------------ OUCL
def reference_oucl(pos, neg, gamma, circle=False, m=0.25, rescale=True, detach_weights=True):
    """Spec 1.6 literally: per anchor, log(1 + an explicit sum over every (positive, negative) pair)."""
    if rescale:
        pos, neg = (pos + 1) / 2, (neg + 1) / 2
    total = pos.new_zeros(())
    for i in range(pos.shape[0]):
        pair_sum = pos.new_zeros(())
        for p in range(pos.shape[1]):
            for n in range(neg.shape[1]):
                s_p, s_n = pos[i, p], neg[i, n]
                if circle:
                    alpha_p, alpha_n = torch.clamp(1 + m - s_p, min=0), torch.clamp(s_n + m, min=0)
                    if detach_weights:
                        alpha_p, alpha_n = alpha_p.detach(), alpha_n.detach()
                    exponent = gamma * alpha_n * (s_n - m) - gamma * alpha_p * (s_p - (1 - m))
                else:
                    exponent = gamma * (s_n - s_p)
                pair_sum = pair_sum + torch.exp(exponent)
        total = total + torch.log(1 + pair_sum)
    return 16 / gamma * total / pos.shape[0]


@pytest.mark.parametrize("gamma", [1.0, 16.0, 64.0])
@pytest.mark.parametrize("circle", [False, True])
@pytest.mark.parametrize("rescale", [True, False])
def test_oucl_matches_double_loop_reference(gamma, circle, rescale):
    pos, neg = scores(3, 2, seed=0), scores(3, 5, seed=1)
    ours = oucl(pos, neg, gamma, circle=circle, rescale=rescale)
    ref = reference_oucl(pos, neg, gamma, circle=circle, rescale=rescale)
    assert ours.dtype == torch.float64
    assert_same_values_and_grads(ours, ref, (pos, neg), atol=1e-9)


def test_oucl_circle_margin_is_used():
    pos, neg = scores(3, 2, seed=2), scores(3, 4, seed=3)
    ours = oucl(pos, neg, 8.0, circle=True, circle_margin=0.4, rescale=False)
    assert_same_values_and_grads(ours, reference_oucl(pos, neg, 8.0, True, m=0.4, rescale=False), (pos, neg))
    assert not torch.allclose(ours, oucl(pos, neg, 8.0, circle=True, rescale=False))


def test_oucl_circle_weights_are_detached():
    pos, neg = scores(3, 2, seed=4), scores(3, 4, seed=5)
    ours = oucl(pos, neg, 16.0, circle=True)
    with_weight_grads = reference_oucl(pos, neg, 16.0, circle=True, detach_weights=False)
    assert torch.allclose(ours, with_weight_grads, rtol=0, atol=1e-10)  # same value ...
    g_ours = torch.autograd.grad(ours, (pos, neg), retain_graph=True)
    g_other = torch.autograd.grad(with_weight_grads, (pos, neg))
    for a, b in zip(g_ours, g_other):  # ... but the weights' own gradient is not taken
        assert not torch.allclose(a, b, rtol=0, atol=1e-6)


def test_oucl_with_one_positive_is_info_nce():
    # log(1 + sum_n e^{g(s_n - s_p)}) is InfoNCE's -log softmax at temperature 1 / g
    pos, neg = scores(4, 1, seed=6), scores(4, 6, seed=7)
    gamma = 5.0
    ours = oucl(pos, neg, gamma, rescale=False) * gamma / 16
    assert_same_values_and_grads(ours, info_nce(pos[:, 0], neg, 1 / gamma), (pos, neg))


def test_oucl_gamma_16_on_rescaled_scores_is_inverse_temperature_8_on_raw_scores():
    pos, neg = scores(3, 2, seed=8), scores(3, 5, seed=9)
    raw = pos.new_zeros(())
    for i in range(3):
        pair_sum = sum(torch.exp(8 * (neg[i, n] - pos[i, p])) for p in range(2) for n in range(5))
        raw = raw + torch.log(1 + pair_sum)
    assert_same_values_and_grads(oucl(pos, neg, 16.0, rescale=True), raw / 3, (pos, neg))
    assert torch.allclose(oucl(pos, neg, 16.0), oucl(pos, neg, 8.0, rescale=False) / 2)


def extreme_scores(rows, cols, seed):
    """Scores within 1e-3 of +-1, float64."""
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (rows, cols), generator=g).double() * 2 - 1
    return signs * (1 - 1e-3 * torch.rand(rows, cols, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("circle", [False, True])
@pytest.mark.parametrize("rescale", [True, False])
@pytest.mark.parametrize("case", ["mixed", "worst", "best"])
def test_oucl_float32_is_stable_at_gamma_256(circle, rescale, case):
    if case == "mixed":
        pos64, neg64 = extreme_scores(4, 3, seed=10), extreme_scores(4, 6, seed=11)
    else:  # every pair maximally wrong (positives at -1, negatives at +1) or maximally right
        sign = 1.0 if case == "worst" else -1.0
        pos64, neg64 = torch.full((4, 3), -sign, dtype=torch.float64), torch.full((4, 6), sign, dtype=torch.float64)
    pos32, neg32 = pos64.float().requires_grad_(), neg64.float().requires_grad_()
    pos64.requires_grad_(), neg64.requires_grad_()
    loss32 = oucl(pos32, neg32, 256.0, circle=circle, rescale=rescale)
    loss64 = oucl(pos64, neg64, 256.0, circle=circle, rescale=rescale)
    grads32 = torch.autograd.grad(loss32, (pos32, neg32))
    grads64 = torch.autograd.grad(loss64, (pos64, neg64))
    assert loss32.dtype == torch.float32 and torch.isfinite(loss32)
    assert torch.allclose(loss32.double(), loss64, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads32, grads64):
        assert torch.isfinite(a).all()
        assert torch.allclose(a.double(), b, rtol=1e-4, atol=1e-6)
    if case == "worst" and not circle:
        # log(1 + P N e^{g d}) ~ g d with d the largest score gap (2 raw, 1 rescaled)
        gap = 1.0 if rescale else 2.0
        assert math.isclose(loss32.item(), 16 / 256 * (256 * gap + math.log(18)), rel_tol=1e-5)


def test_oucl_promotes_half_precision():
    pos, neg = scores(2, 2, seed=12).detach(), scores(2, 3, seed=13).detach()
    loss = oucl(pos.half(), neg.half())
    assert loss.dtype == torch.float32
    assert torch.allclose(loss.double(), oucl(pos, neg), atol=1e-2)


@pytest.mark.parametrize("call, message", [
    (lambda p, n: oucl(p[0], n), "positives must be a \\(B >= 1, K >= 1\\) score matrix, got shape \\(2,\\)"),
    (lambda p, n: oucl(p, n[None]), "negatives must be a \\(B >= 1, K >= 1\\)"),
    (lambda p, n: oucl(p[:, :0], n), "positives must be .* got shape \\(3, 0\\)"),
    (lambda p, n: oucl(p, n[:, :0]), "negatives must be .* got shape \\(3, 0\\)"),
    (lambda p, n: oucl(p[:0], n[:0]), "positives must be .* got shape \\(0, 2\\)"),
    (lambda p, n: oucl(p, n[:2]), "negatives has 2 anchors \\(rows\\) but positives has 3"),
    (lambda p, n: oucl(p, n, 0.0), "gamma must be > 0, got 0.0"),
    (lambda p, n: oucl(p, n, -16.0), "gamma must be > 0"),
])
def test_oucl_rejects_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call(scores(3, 2, seed=0), scores(3, 4, seed=1))


# ------------------------------------------------------------------ margin injection
def reference_margin_injection(orig_pos, orig_neg, gen_pos, gen_neg, margin, positive_scale, detach):
    """Spec 1.7 one anchor and one element at a time (scores already in their final units)."""
    b = orig_pos.shape[0]
    positive_total, negative_total = orig_pos.new_zeros(()), orig_pos.new_zeros(())
    for i in range(b):
        p_min = min(orig_pos[i, c] for c in range(orig_pos.shape[1]))
        n_max = max(orig_neg[i, c] for c in range(orig_neg.shape[1]))
        if margin == "mean":
            xi_pos = xi_neg = (p_min + n_max) / 2
        else:
            low, high = (p_min, n_max) if p_min < n_max else (n_max, p_min)
            xi_pos, xi_neg = (low, high) if margin == "large" else (high, low)
        if detach:
            xi_pos, xi_neg = xi_pos.detach(), xi_neg.detach()
        for c in range(gen_pos.shape[1]):
            if gen_pos[i, c] > xi_pos:
                positive_total = positive_total + gen_pos[i, c] - xi_pos
        for c in range(gen_neg.shape[1]):
            if gen_neg[i, c] < xi_neg:
                negative_total = negative_total + xi_neg - gen_neg[i, c]
    return positive_scale * positive_total / gen_pos.numel() + negative_total / gen_neg.numel()


@pytest.mark.parametrize("margin", MARGIN_TYPES)
@pytest.mark.parametrize("detach", [False, True])
def test_margin_injection_matches_loop_reference(margin, detach):
    orig_pos, orig_neg = scores(4, 3, seed=20, low=0.0, high=1.0), scores(4, 5, seed=21, low=0.0, high=1.0)
    gen_pos, gen_neg = scores(4, 6, seed=22, low=0.0, high=1.0), scores(4, 10, seed=23, low=0.0, high=1.0)
    inputs = (orig_pos, orig_neg, gen_pos, gen_neg)
    ours = margin_injection(*inputs, margin=margin, positive_scale=0.3, detach_margins=detach, rescale=False)
    ref = reference_margin_injection(*inputs, margin, 0.3, detach)
    assert ours > 0
    assert_same_values_and_grads(ours, ref, (gen_pos, gen_neg))
    if not detach:
        assert_same_values_and_grads(ours, ref, (orig_pos, orig_neg))


def test_margin_injection_rescale_measures_hinges_in_unit_interval():
    raw = [scores(3, k, seed=30 + k) for k in (2, 4, 3, 5)]
    mapped = [(s + 1) / 2 for s in raw]
    ours = margin_injection(*raw, positive_scale=0.5)
    assert_same_values_and_grads(ours, reference_margin_injection(*mapped, "large", 0.5, False), raw)
    assert torch.allclose(ours, margin_injection(*raw, positive_scale=0.5, rescale=False) / 2)


def hand_built(gen_pos, gen_neg):
    """One anchor with p_min = 0.6, n_max = 0.5, so 'large' gives xi_pos = 0.5, xi_neg = 0.6."""
    orig_pos = torch.tensor([[0.8, 0.6]], dtype=torch.float64, requires_grad=True)
    orig_neg = torch.tensor([[0.3, 0.5, 0.1]], dtype=torch.float64, requires_grad=True)
    gen_pos = torch.tensor([gen_pos], dtype=torch.float64, requires_grad=True)
    gen_neg = torch.tensor([gen_neg], dtype=torch.float64, requires_grad=True)
    return orig_pos, orig_neg, gen_pos, gen_neg


def test_margin_injection_is_zero_when_generated_pairs_are_hard_enough():
    inputs = hand_built([0.5, 0.2, -0.4], [0.6, 0.9])  # positives <= 0.5, negatives >= 0.6
    loss = margin_injection(*inputs, positive_scale=1.0, rescale=False)
    assert loss.item() == 0.0
    for grad in torch.autograd.grad(loss, inputs, allow_unused=True, materialize_grads=True):
        assert torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("positive_scale", [1.0, 1e-4])
def test_margin_injection_single_violations_cost_exactly_their_hinge(positive_scale):
    positive_violation = hand_built([0.5, 0.7, 0.1], [0.6, 0.9])  # 0.7 is 0.2 above xi_pos = 0.5
    loss = margin_injection(*positive_violation, positive_scale=positive_scale, rescale=False)
    assert math.isclose(loss.item(), positive_scale * 0.2 / 3, rel_tol=1e-12)
    grad_gen_pos, grad_gen_neg = torch.autograd.grad(loss, positive_violation[2:])
    assert torch.allclose(grad_gen_pos, torch.tensor([[0.0, positive_scale / 3, 0.0]], dtype=torch.float64))
    assert torch.count_nonzero(grad_gen_neg) == 0

    negative_violation = hand_built([0.5, 0.2, 0.1], [0.6, 0.25])  # 0.25 is 0.35 below xi_neg = 0.6
    loss = margin_injection(*negative_violation, positive_scale=positive_scale, rescale=False)
    assert math.isclose(loss.item(), 0.35 / 2, rel_tol=1e-12)  # positive_scale does not touch it
    grad_gen_pos, grad_gen_neg = torch.autograd.grad(loss, negative_violation[2:])
    assert torch.count_nonzero(grad_gen_pos) == 0
    assert torch.allclose(grad_gen_neg, torch.tensor([[0.0, -0.5]], dtype=torch.float64))


@pytest.mark.parametrize("p_min, n_max", [(0.6, 0.5), (0.3, 0.7)])
@pytest.mark.parametrize("margin", MARGIN_TYPES)
def test_margin_types_pick_the_right_boundaries(margin, p_min, n_max):
    expected_xi = {
        "large": (min(p_min, n_max), max(p_min, n_max)),
        "small": (max(p_min, n_max), min(p_min, n_max)),
        "mean": ((p_min + n_max) / 2, (p_min + n_max) / 2),
    }[margin]
    orig_pos = torch.tensor([[0.95, p_min]], dtype=torch.float64)
    orig_neg = torch.tensor([[0.0, n_max, 0.1]], dtype=torch.float64)
    one, zero = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    # a generated positive at 1 costs 1 - xi_pos; a generated negative at 0 costs xi_neg
    xi_pos = 1 - margin_injection(orig_pos, orig_neg, one, one, margin, positive_scale=1.0, rescale=False)
    xi_neg = margin_injection(orig_pos, orig_neg, zero, zero, margin, positive_scale=1.0, rescale=False)
    assert math.isclose(xi_pos.item(), expected_xi[0], abs_tol=1e-12)
    assert math.isclose(xi_neg.item(), expected_xi[1], abs_tol=1e-12)


def test_detach_margins_stops_the_gradient_into_the_original_scores():
    # violations on both sides: xi_pos = n_max = 0.5 (orig_neg[1]), xi_neg = p_min = 0.6 (orig_pos[1])
    inputs = hand_built([0.7, 0.2, 0.1], [0.6, 0.25])
    attached = margin_injection(*inputs, positive_scale=1.0, rescale=False)
    grad_orig_pos, grad_orig_neg = torch.autograd.grad(attached, inputs[:2])
    assert torch.allclose(grad_orig_pos, torch.tensor([[0.0, 0.5]], dtype=torch.float64))  # one of 2 negatives
    assert torch.allclose(grad_orig_neg, torch.tensor([[0.0, -1 / 3, 0.0]], dtype=torch.float64))  # 1 of 3
    detached = margin_injection(*inputs, positive_scale=1.0, detach_margins=True, rescale=False)
    assert detached.item() == attached.item()
    grads = torch.autograd.grad(detached, inputs, allow_unused=True, materialize_grads=True)
    assert torch.count_nonzero(grads[0]) == 0 and torch.count_nonzero(grads[1]) == 0
    assert torch.count_nonzero(grads[2]) == 1 and torch.count_nonzero(grads[3]) == 1


@pytest.mark.parametrize("call, message", [
    (lambda op, on, gp, gn: margin_injection(op, on, gp, gn, "largest"), "expected one of large, small, mean"),
    (lambda op, on, gp, gn: margin_injection(op, on, gp, gn, positive_scale=-1.0), "positive_scale must be >= 0"),
    (lambda op, on, gp, gn: margin_injection(op[0], on, gp, gn), "orig_pos must be a \\(B >= 1, K >= 1\\)"),
    (lambda op, on, gp, gn: margin_injection(op, on[:, :0], gp, gn), "orig_neg must be .* got shape \\(3, 0\\)"),
    (lambda op, on, gp, gn: margin_injection(op, on, gp[None], gn), "gen_pos must be .* got shape \\(1, 3, 6\\)"),
    (lambda op, on, gp, gn: margin_injection(op, on, gp, gn[:2]), "gen_neg has 2 anchors .* orig_pos has 3"),
])
def test_margin_injection_rejects_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call(scores(3, 2, seed=0), scores(3, 4, seed=1), scores(3, 6, seed=2), scores(3, 8, seed=3))
