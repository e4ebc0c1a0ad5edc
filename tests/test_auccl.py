"""AUC-CL: the loss in both modes against slow loops of the spec's formulas, the dual ascent and
its projection, the unbiasedness of the paper-mode mini-batch loss (and InfoNCE's bias), and the
method in the trainer (logging, its own optimiser group, exact resume); the official ImageNet
form (teacher targets, centre, temperature warm-up, EMA teacher, multi-crop pairs) likewise."""

import itertools
import math
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from contrastlab.cli import main
from contrastlab.core.config import ConfigError
from contrastlab.engine import checkpoint as ckpt
from contrastlab.engine.distributed import init_distributed
from contrastlab.engine.setup import make_method, trained_backbone
from contrastlab.engine.trainer import MAIN, Trainer
from contrastlab.losses import ascent, auc_dino_loss, auc_loss, auc_pairs, dino_pairs, nt_xent
from contrastlab.methods import auccl as auccl_module
from contrastlab.methods.auccl import AUCCL, teacher_temperature
from contrastlab.methods.base import StepInput
from test_trainer import losses, resumed_like_uninterrupted, tiny_config

OFFICIAL = ["method.name=auccl", "method.mode=official", "optim.name=adamw", "optim.lr=1e-3"]
PAPER = ["method.name=auccl", "method.mode=paper"]


def embeddings(b=5, d=6, seed=0):
    """Two views, positives correlated (some positive cosines below 0 so the official clamp bites)."""
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(b, d, generator=g, dtype=torch.float64)
    z2 = z1 + 2.5 * torch.randn(b, d, generator=g, dtype=torch.float64)
    return z1.requires_grad_(), z2.requires_grad_()


def cos(u, v):
    return (u * v).sum() / (u.norm() * v.norm())


def official_loop(z1, z2, b):
    """Spec additions F, term by term: 2B positives, each anchor's 2B - 1 negatives incl. its positive."""
    z = list(z1) + list(z2)
    n, half = len(z), len(z) // 2
    pos_terms, neg_sums = [], []
    for i in range(n):
        h_pos = torch.clamp(0.5 * (1 + cos(z[i], z[(i + half) % n])) - 0.5, 0.0, 1.0)
        pos_terms.append((h_pos - 10.0) ** 2 - 2.0 * h_pos)
        total = 0.0
        for j in range(n):
            if j != i:
                h_neg = 0.5 * (1 + cos(z[i], z[j]))
                total = total + (h_neg - b) ** 2 + 2.0 * h_neg
        neg_sums.append(total)
    return sum(pos_terms) / n + sum(neg_sums) / n - n


def paper_loop(z1, z2, a, b, alpha, m):
    """The module docstring's paper form: the negative term a mean over the 2B - 2 negatives."""
    z = list(z1) + list(z2)
    n, half = len(z), len(z) // 2
    pos_terms, neg_means = [], []
    for i in range(n):
        p = (i + half) % n
        h_pos = 0.5 * (1 + cos(z[i], z[p]))
        pos_terms.append((h_pos - a) ** 2 - 2.0 * alpha * h_pos)
        terms = [(0.5 * (1 + cos(z[i], z[j])) - b) ** 2 + 2.0 * alpha * 0.5 * (1 + cos(z[i], z[j]))
                 for j in range(n) if j not in (i, p)]
        assert len(terms) == n - 2
        neg_means.append(sum(terms) / len(terms))
    return sum(pos_terms) / n + sum(neg_means) / n + 2.0 * alpha * m - alpha**2


def grads(loss, inputs):
    return torch.autograd.grad(loss, inputs)


def assert_close_all(xs, ys):
    for x, y in zip(xs, ys, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- 1. the loss
def test_official_loss_matches_a_loop_of_the_cifar_formula():
    z1, z2 = embeddings()
    b = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    pos, neg = auc_pairs(z1, z2, "official")
    n = 2 * z1.shape[0]
    assert pos.dtype == torch.float64 and pos.shape == (n,) and neg.shape == (n, n - 1)
    assert (pos == 0).any() and (pos > 0).any()  # the clamp is exercised on both sides
    fast = auc_loss(pos, neg, 10.0, b, 1.0, None, 1.0, -float(n))
    slow = official_loop(z1, z2, b)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-10)
    assert_close_all(grads(fast, (z1, z2, b)), grads(slow, (z1, z2, b)))


def test_the_method_builds_the_official_and_paper_losses(monkeypatch):
    """The method's own constants (official: a = 10, alpha = 1, w = 1, no dual terms, -2B; paper:
    w = 1 / (2B - 2), margin m) give the loops' values on the same projections."""
    z1, z2 = embeddings()
    for extra in (OFFICIAL, PAPER + ["method.margin=0.7", "method.init_a=0.8", "method.init_b=0.1",
                                     "method.init_alpha=0.4"]):
        method = make_method(tiny_config(*extra), (1, 8, 8), 256).double()
        monkeypatch.setattr(method, "project_views", lambda step: ((z1.detach(), z2.detach()), (z1, z2)))
        out = method.training_step(None)
        if method.cfg.mode == "official":
            slow = official_loop(z1, z2, method.b)
            assert out["a"].item() == 10.0 and out["alpha"].item() == 1.0
        else:
            slow = paper_loop(z1, z2, method.a, method.b, method.alpha, 0.7)
            assert (out["a"].item(), out["alpha"].item()) == pytest.approx((0.8, 0.4))
        torch.testing.assert_close(out["loss"], slow, rtol=1e-12, atol=1e-10)


def test_the_own_positive_is_an_official_negative_but_not_a_paper_one():
    z1, z2 = embeddings()
    z = torch.nn.functional.normalize(torch.cat([z1, z2]).detach(), dim=1)
    h = 0.5 * (1 + z @ z.T)
    n = h.shape[0]
    _, official = auc_pairs(z1, z2, "official")
    pos, paper = auc_pairs(z1, z2, "paper")
    assert paper.shape == (n, n - 2)
    for i in range(n):
        p = (i + n // 2) % n
        torch.testing.assert_close(pos[i], h[i, p])
        others = [h[i, j] for j in range(n) if j not in (i, p)]
        expected_official = torch.stack(sorted(others + [h[i, p]]))
        torch.testing.assert_close(official[i].detach().sort().values, expected_official)
        torch.testing.assert_close(paper[i].detach().sort().values, torch.stack(sorted(others)))
        assert (official[i] - h[i, p]).abs().min() < 1e-12  # the own positive view is in ...
        assert (paper[i] - h[i, p]).abs().min() > 1e-6  # ... official, not paper (values distinct)


def test_paper_loss_matches_a_loop_of_the_docstring_formula():
    z1, z2 = embeddings(seed=1)
    a, b, alpha = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (0.9, 0.2, 0.6))
    m = 0.7
    pos, neg = auc_pairs(z1, z2, "paper")
    fast = auc_loss(pos, neg, a, b, alpha, m, 1.0 / neg.shape[1])
    slow = paper_loop(z1, z2, a, b, alpha, m)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-10)
    assert_close_all(grads(fast, (z1, z2, a, b, alpha)), grads(slow, (z1, z2, a, b, alpha)))
    # the dual gradient in closed form: -2 E h+ + 2 E h- + 2 m - 2 alpha
    (g_alpha,) = grads(auc_loss(pos, neg, a, b, alpha, m, 1.0 / neg.shape[1]), (alpha,))
    expected = -2 * pos.mean() + 2 * neg.mean() + 2 * m - 2 * alpha
    torch.testing.assert_close(g_alpha, expected.detach())


# ----------------------------------------------------------------------------- 2. the ascent
def test_ascent_is_the_identity_with_its_gradient_negated():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, dtype=torch.float64)
    y = ascent(x)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    assert torch.equal(x.grad, -w)
    x.grad = None
    (x * w).sum().backward()
    assert torch.equal(x.grad, w)


def one_step(tmp_path, monkeypatch, *overrides):
    """One trainer step; returns the method, (a, b, alpha) before, the true gradients of the loss
    (autograd without the reversal, on the step's own scores) and the auc learning rate."""
    captured = {}
    original = auccl_module.auc_pairs

    def recording(z1, z2, mode):
        pos, neg = original(z1, z2, mode)
        captured["pos"], captured["neg"] = pos.detach(), neg.detach()
        return pos, neg

    monkeypatch.setattr(auccl_module, "auc_pairs", recording)
    cfg = tiny_config("train.epochs=1", "train.max_steps_per_epoch=1", *PAPER, *overrides)
    trainer = Trainer(cfg, tmp_path, init_distributed("cpu"))
    m = trainer.method
    before = [p.detach().clone().requires_grad_() for p in (m.a, m.b, m.alpha)]
    trainer.fit()
    assert trainer.step == 1
    pos, neg = captured["pos"], captured["neg"]
    loss = auc_loss(pos, neg, *before, m.cfg.margin, 1.0 / neg.shape[1])
    return m, [x.detach() for x in before], grads(loss, before), m.cfg.auc_lr


def test_one_step_descends_on_a_b_and_ascends_on_alpha(tmp_path, monkeypatch):
    m, (a0, b0, alpha0), (ga, gb, galpha), lr = one_step(
        tmp_path, monkeypatch, "method.auc_lr=0.05", "method.init_alpha=0.2", "method.margin=1.0")
    assert galpha > 0 and ga.abs() > 1e-4 and gb.abs() > 1e-4  # (m = 1: the dual gradient is positive)
    assert alpha0 + lr * galpha > 0  # the projection does not bite here
    # SGD, momentum buffer = first gradient: p <- p - lr * grad (alpha's gradient reversed)
    torch.testing.assert_close(m.a.detach(), a0 - lr * ga, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(m.b.detach(), b0 - lr * gb, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(m.alpha.detach(), alpha0 + lr * galpha, rtol=1e-5, atol=1e-7)
    assert m.alpha > alpha0


def test_the_ascent_step_is_projected_onto_alpha_at_least_zero(tmp_path, monkeypatch):
    m, (_, _, alpha0), (_, _, galpha), lr = one_step(
        tmp_path, monkeypatch, "method.auc_lr=10.0", "method.init_alpha=0.5", "method.margin=0.0")
    assert galpha < 0 and alpha0 + lr * galpha < -1.0  # the unprojected ascent step is negative
    assert m.alpha.item() == 0.0 and math.copysign(1.0, m.alpha.item()) == 1.0


# ----------------------------------------------------------------------------- 3. unbiasedness
def test_paper_loss_is_unbiased_over_mini_batches_and_infonce_is_not():
    """With a, b, alpha fixed, E over uniform batches of the batch loss equals the full-data loss.

    Positive term: every (sample, view) is an anchor equally often. Negative term: given anchor
    ``(i, v)`` in the batch, the other B - 1 samples are a uniform draw from the N - 1 others, so
    the mean over their 2(B - 1) views has expectation the mean over the 2(N - 1) views of the
    full data; the dual terms are constant. Averaging over all C(N, B) batches this is exact.
    """
    n, batch, d = 16, 4, 5
    g = torch.Generator().manual_seed(3)
    x1 = torch.randn(n, d, generator=g, dtype=torch.float64)
    x2 = x1 + 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64)
    a, b, alpha, m = 0.9, 0.3, 0.5, 1.0

    def paper(z1, z2):
        pos, neg = auc_pairs(z1, z2, "paper")
        return auc_loss(pos, neg, a, b, alpha, m, 1.0 / neg.shape[1])

    full_auc, full_nce = paper(x1, x2).item(), nt_xent(x1, x2, 0.5).item()
    subsets = [list(s) for s in itertools.combinations(range(n), batch)]
    auc_values = torch.tensor([paper(x1[s], x2[s]).item() for s in subsets], dtype=torch.float64)
    nce_values = torch.tensor([nt_xent(x1[s], x2[s], 0.5).item() for s in subsets], dtype=torch.float64)
    assert len(subsets) == math.comb(n, batch)
    assert auc_values.std() > 1e-2  # batches do differ ...
    assert auc_values.mean().item() == pytest.approx(full_auc, rel=1e-12, abs=1e-12)  # ... exactly unbiased
    gap = full_nce - nce_values.mean().item()
    assert gap > 0.5, gap  # InfoNCE: far fewer negatives in the log-sum-exp, biased low
    assert gap > 100 * nce_values.std().item() / math.sqrt(len(subsets))
    # a random sample of batches (sampling error, not bias) for the AUC loss
    picks = torch.randint(len(subsets), (400,), generator=g)
    sampled = auc_values[picks]
    assert abs(sampled.mean().item() - full_auc) < 4 * sampled.std().item() / math.sqrt(len(picks))


# ----------------------------------------------------------------------------- 4. the method
@pytest.mark.parametrize("overrides", [PAPER, OFFICIAL], ids=["paper", "official"])
def test_the_method_trains_logs_and_owns_the_auc_group(tmp_path, overrides):
    trainer = Trainer(tiny_config("train.epochs=1", *overrides), tmp_path, init_distributed("cpu"))
    m = trainer.method
    assert isinstance(m, AUCCL) and set(trainer.optimizers) == {MAIN, "auc"}
    auc_params = {id(p) for g in trainer.optimizers["auc"][0].param_groups for p in g["params"]}
    main_params = {id(p) for g in trainer.optimizers[MAIN][0].param_groups for p in g["params"]}
    assert auc_params == {id(p) for p in m.auc_parameters()} and not auc_params & main_params
    assert len(auc_params) == (3 if m.cfg.mode == "paper" else 1)
    trainer.fit()
    steps = [r for r in trainer.logger.records if "loss" in r]
    assert len(steps) == 4 and all(math.isfinite(r["loss"]) for r in steps)
    for key in ("a", "b", "alpha", "positive_score", "negative_score"):
        assert all(math.isfinite(r[key]) for r in steps), key
    assert all(0 <= r["negative_score"] <= 1 and 0 <= r["positive_score"] <= 1 for r in steps)
    assert len({r["b"] for r in steps}) == 4 and m.b.item() != 0.0  # b learns
    if m.cfg.mode == "official":
        assert all(r["a"] == 10.0 and r["alpha"] == 1.0 for r in steps)
        assert not hasattr(m, "a") or not isinstance(getattr(m, "a", None), torch.nn.Parameter)
    else:
        assert len({r["a"] for r in steps}) == 4 and len({r["alpha"] for r in steps}) == 4
        assert all(r["alpha"] >= 0 for r in steps)


@pytest.mark.parametrize("overrides", [PAPER, OFFICIAL], ids=["paper", "official"])
def test_the_method_resumes_exactly(tmp_path, monkeypatch, overrides):
    a, b = resumed_like_uninterrupted(tiny_config("train.epochs=3", *overrides), tmp_path, monkeypatch)
    scalars = {"b"} | ({"a", "alpha"} if "method.mode=paper" in overrides else set())
    assert a["step"] == 12 and scalars <= set(a["method"])
    assert a["method"]["b"].item() != 0.0
    moment = "momentum_buffer" if "method.mode=paper" in overrides else "exp_avg"
    states = [list(c["optimizers"]["auc"]["state"].values()) for c in (a, b)]
    assert len(states[0]) == len(scalars) == len(states[1])
    assert all(torch.equal(x[moment], y[moment]) for x, y in zip(*states))


# ----------------------------------------------------------------------------- 5. official ImageNet form
VIEWS_2G_2L = ("augment.views=[{count: 2, size: 8, transforms: [{name: crop}]}, "
               "{count: 2, size: 6, transforms: [{name: crop, scale: [0.1, 0.4]}]}]")
IMAGENET = ["method.name=auccl", "method.mode=official_imagenet", "method.out_dim=64", "method.head_hidden_dim=32",
            "method.head_bottleneck_dim=16", "optim.name=adamw", "optim.lr=1e-3", VIEWS_2G_2L]


def dino_outputs(n=5, k=7, g=2, v=4, seed=0):
    """Teacher probabilities (softmax rows) for ``g`` global views, student logits for ``v`` views."""
    gen = torch.Generator().manual_seed(seed)
    probs = [torch.softmax(3.0 * torch.randn(n, k, generator=gen, dtype=torch.float64), dim=1) for _ in range(g)]
    logits = [(5.0 * torch.randn(n, k, generator=gen, dtype=torch.float64)).requires_grad_() for _ in range(v)]
    return probs, logits


def imagenet_pair_loop(p, s, numerator):
    """Spec 7.2, one (u, v) pair, entry by entry: H_ij = (1 + P_i . S_j) / 2."""
    n, k = p.shape
    h = [[0.5 * (1 + sum(p[i, c] * s[j, c] for c in range(k))) for j in range(n)] for i in range(n)]
    positive = sum((h[i][i] - 10.0) ** 2 - 2.0 * h[i][i] for i in range(n)) / n
    negative = sum(sum(h[i][j] ** 2 + 2.0 * h[i][j] for j in range(n) if j != i) for i in range(n)) / n
    return positive + (numerator / n) * negative + 1.0


def imagenet_loop(probs, logits, numerator=32.0, include_same=False):
    pairs = [(u, v) for u in range(len(probs)) for v in range(len(logits)) if include_same or v != u]
    return sum(imagenet_pair_loop(probs[u], logits[v], numerator) for u, v in pairs) / len(pairs), pairs


@pytest.mark.parametrize("numerator", [32.0, 5.0])
def test_imagenet_loss_matches_a_loop_over_the_pairs(numerator):
    probs, logits = dino_outputs()
    fast = auc_dino_loss(probs, logits, numerator)
    slow, pairs = imagenet_loop(probs, logits, numerator)
    assert len(pairs) == 2 * (4 - 1) == len(dino_pairs(2, 4)) and set(pairs) == set(dino_pairs(2, 4))
    assert not any(u == v for u, v in dino_pairs(2, 4))
    assert fast.dtype == torch.float64
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-10)
    assert_close_all(grads(fast, logits), grads(slow, logits))
    with_same, _ = imagenet_loop(probs, logits, numerator, include_same=True)
    assert abs(with_same.item() - fast.item()) > 1e-3  # the (u, u) pairs would change the loss
    # 2 global + 8 local views: the official 18 pairs
    assert len(dino_pairs(2, 10)) == 18
    loss, pos, neg = auc_dino_loss(probs, logits, numerator, return_scores=True)
    assert loss == fast and pos.requires_grad is False and neg.requires_grad is False


def test_imagenet_loss_rejects_too_few_student_views():
    probs, logits = dino_outputs(v=2)
    with pytest.raises(ValueError, match="more student views"):
        auc_dino_loss(probs, logits[:2])


def imagenet_method(*extra):
    return make_method(tiny_config(*IMAGENET, *extra), (1, 8, 8), 256).double()


def tiny_views(seed=0, n=6, sizes=(8, 8, 6, 6)):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 1, s, s, generator=gen, dtype=torch.float64) for s in sizes]


def test_the_method_builds_the_imagenet_loss_from_teacher_targets_and_student_logits():
    """The method's loss equals the loop on hand-made P = softmax((g_t - c) / tau_t) and
    S = g_s / tau_s (eval mode: BatchNorm on running statistics, so per-view passes agree)."""
    method = imagenet_method("method.student_temperature=0.2").eval()
    with torch.no_grad():
        method.center.normal_()
    c0 = method.center.clone()
    views = tiny_views()
    step = StepInput(views, epoch=10)
    tau_t = 0.04 + 0.03 * 10 / 30
    with torch.no_grad():
        probs = [torch.softmax((method.teacher(x) - c0) / tau_t, dim=1) for x in views[:2]]
    logits = [method.projector(method.backbone(x)) / 0.2 for x in views]
    out = method.training_step(step)
    slow, _ = imagenet_loop(probs, logits)
    torch.testing.assert_close(out["loss"], slow, rtol=1e-10, atol=1e-8)
    assert out["teacher_temperature"].item() == pytest.approx(tau_t)
    assert (out["a"].item(), out["b"].item(), out["alpha"].item()) == (10.0, 0.0, 1.0)


def test_the_teacher_temperature_warms_up_linearly_by_epoch():
    cfg = imagenet_method().cfg
    assert teacher_temperature(cfg, 0) == pytest.approx(0.04)
    assert teacher_temperature(cfg, 15) == pytest.approx(0.055)
    assert teacher_temperature(cfg, 29) == pytest.approx(0.04 + 0.03 * 29 / 30)
    assert all(teacher_temperature(cfg, e) == pytest.approx(0.07) for e in (30, 31, 100))
    cfg.warmup_teacher_temperature_epochs = 0
    assert teacher_temperature(cfg, 0) == pytest.approx(0.07)


def test_the_centre_is_an_ema_of_the_teacher_mean_updated_after_the_targets():
    method = imagenet_method("method.center_momentum=0.8")
    with torch.no_grad():
        method.center.normal_()
    c0 = method.center.clone()
    views = tiny_views()[:2]
    outputs = torch.cat([method.teacher(torch.cat(views))])  # train mode: both global views as one batch
    probs = method.teacher_targets(views, 0.05)
    expected_probs = torch.softmax((outputs - c0) / 0.05, dim=1).chunk(2)
    assert_close_all(probs, expected_probs)  # the targets use the centre from before this batch
    by_hand = [[0.8 * c0[0, k].item() + 0.2 * sum(outputs[r, k].item() for r in range(12)) / 12
                for k in range(64)]]
    torch.testing.assert_close(method.center, torch.tensor(by_hand, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    assert "center" in method.state_dict()


def test_the_teacher_gets_no_gradient_and_follows_the_cosine_momentum():
    method = imagenet_method("method.base_momentum=0.9")
    teacher = list(method.teacher.parameters())
    assert teacher and not any(p.requires_grad for p in teacher)
    method.training_step(StepInput(tiny_views()))["loss"].backward()
    assert all(p.grad is None for p in teacher)
    student = list(method.backbone.parameters()) + list(method.projector.parameters())
    assert all(p.grad is not None for p in student)
    gain = method.projector.last_layer.parametrizations.weight.original0
    assert gain.requires_grad and torch.all(gain.detach() == 1.0) and gain.grad.abs().sum() > 0
    with torch.no_grad():
        for p in student:
            p.add_(torch.randn_like(p))
    t0, s0 = [p.detach().clone() for p in teacher], [p.detach().clone() for p in student]
    method.on_after_optimizer_step(0.3)
    m = 1.0 - (1.0 - 0.9) * (math.cos(math.pi * 0.3) + 1) / 2
    assert len(t0) == len(s0)
    for t, before, s in zip(teacher, t0, s0, strict=True):
        torch.testing.assert_close(t.detach(), m * before + (1 - m) * s, rtol=1e-12, atol=1e-12)


def test_the_imagenet_head_and_view_rules():
    method = imagenet_method("method.norm_last_layer=true")
    head = method.projector
    assert [type(layer) for layer in head.mlp] == [torch.nn.Linear, torch.nn.GELU] * 2 + [torch.nn.Linear]
    assert (head.mlp[0].out_features, head.mlp[2].out_features, head.mlp[4].out_features) == (32, 32, 16)
    assert head.last_layer.weight.shape == (64, 16) and head.last_layer.bias is None
    assert not head.last_layer.parametrizations.weight.original0.requires_grad
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(64, dtype=torch.float64))
    assert method.auc_parameters() == [] and method.parameter_groups(tiny_config(*IMAGENET).optim) == []
    assert AUCCL.accepted_views(method.cfg) == (3, None)
    assert AUCCL.accepted_views(imagenet_method("method.num_global=3").cfg) == (4, None)
    assert AUCCL.accepted_views(tiny_config(*PAPER).method) == (2, 2)
    with pytest.raises(ValueError, match="num_global=2 needs at least 3 views"):
        method.training_step(StepInput(tiny_views()[:2]))
    two = "augment.views=[{count: 2, size: 8, transforms: [{name: crop}]}]"
    with pytest.raises(ConfigError, match="augment.views: method 'auccl' takes at least 3 views, got 2"):
        setup_views(tiny_config(*IMAGENET, two))
    with pytest.raises(ConfigError, match="augment.views: method 'auccl' takes exactly 2 views, got 4"):
        setup_views(tiny_config(*OFFICIAL, VIEWS_2G_2L))
    with pytest.raises(ConfigError, match="method.num_global must be >= 1"):
        tiny_config(*IMAGENET, "method.num_global=0")
    with pytest.raises(ConfigError, match="method.center_momentum must be in"):
        tiny_config(*IMAGENET, "method.center_momentum=1.5")


def setup_views(cfg):
    Trainer(cfg, Path(tempfile.mkdtemp()), init_distributed("cpu"))


def test_the_imagenet_form_trains_in_the_trainer(tmp_path):
    trainer = Trainer(tiny_config("train.epochs=1", *IMAGENET), tmp_path, init_distributed("cpu"))
    m = trainer.method
    assert set(trainer.optimizers) == {MAIN}
    teacher0 = [p.detach().clone() for p in m.teacher.parameters()]
    trainer.fit()
    steps = [r for r in trainer.logger.records if "loss" in r]
    assert len(steps) == 4 and all(math.isfinite(r["loss"]) for r in steps)
    for key in ("positive_score", "negative_score", "teacher_temperature"):
        assert all(math.isfinite(r[key]) for r in steps), key
    assert all(r["teacher_temperature"] == pytest.approx(0.04) for r in steps)
    assert m.center.abs().sum() > 0
    assert any(not torch.equal(a, b) for a, b in zip(teacher0, m.teacher.parameters()))


def test_the_imagenet_form_resumes_exactly(tmp_path, monkeypatch):
    cfg = tiny_config("train.epochs=3", "method.warmup_teacher_temperature_epochs=2", *IMAGENET)
    whole, _ = resumed_like_uninterrupted(cfg, tmp_path, monkeypatch)
    a = whole["method"]
    assert whole["step"] == 12 and "center" in a and any(k.startswith("teacher.") for k in a)
    assert a["center"].abs().sum() > 0


def test_the_imagenet_form_evaluates_and_exports_its_teacher(tmp_path):
    cfg = tiny_config("train.epochs=1", *IMAGENET)
    run = tmp_path / "run"
    Trainer(cfg, run, init_distributed("cpu")).fit()
    state = ckpt.load_checkpoint(run)
    teacher = trained_backbone(state, tiny_config(*IMAGENET, "eval.encoder=teacher"), "teacher").state_dict()
    student = trained_backbone(state, cfg, "student").state_dict()
    assert all(torch.equal(teacher[k], state["method"][f"teacher.module.0.{k}"]) for k in teacher)
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher)  # the EMA lags the student
    out = tmp_path / "teacher.safetensors"
    assert main(["export", str(run), "--out", str(out), "--encoder", "teacher"]) == 0
    exported = load_file(str(out))
    assert exported.keys() == teacher.keys() and all(torch.equal(exported[k], teacher[k]) for k in teacher)
    for other in (PAPER, OFFICIAL):  # no teacher in the CIFAR forms
        with pytest.raises(ConfigError, match="eval.encoder: method 'auccl' has no 'teacher' encoder; choose student"):
            tiny_config(*other, "eval.encoder=teacher")
