"""LARS against a hand-computed reference step, and the warm-up + cosine schedule."""

import math

import pytest
import torch
from torch import nn

from contrastlab.core.config import OptimConfig
from contrastlab.core.optim import build_optimizer, learning_rate


def reference_lars_update(w, g, buf, lr, momentum, wd, trust, adapt):
    """One LARS step for one tensor, written out with Python floats."""
    if adapt:
        w_norm = math.sqrt(sum(v * v for v in w))
        g_norm = math.sqrt(sum(v * v for v in g))
        ratio = trust * w_norm / (g_norm + wd * w_norm + 1e-8) if w_norm > 0 and g_norm > 0 else 1.0
        g = [ratio * (gi + wd * wi) for gi, wi in zip(g, w)]
    buf = list(g) if buf is None else [momentum * b + gi for b, gi in zip(buf, g)]
    return [wi - lr * b for wi, b in zip(w, buf)], buf


@pytest.mark.parametrize("exclude", [True, False])
def test_lars_matches_reference_over_two_steps(exclude):
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    cfg = OptimConfig(name="lars", lr=0.5, momentum=0.9, weight_decay=0.01, lars_trust=0.02,
                      lars_exclude_bias_and_norm=exclude)
    opt = build_optimizer(model, cfg)
    weights = {n: p.detach().flatten().tolist() for n, p in model.named_parameters()}
    buffers = {n: None for n in weights}
    for _ in range(2):
        x = torch.randn(5, 3, dtype=torch.float64)
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        grads = {n: p.grad.flatten().tolist() for n, p in model.named_parameters()}
        opt.step()
        for n in weights:
            adapt = n == "weight" or not exclude
            wd = cfg.weight_decay if adapt else 0.0
            weights[n], buffers[n] = reference_lars_update(
                weights[n], grads[n], buffers[n], cfg.lr, cfg.momentum, wd, cfg.lars_trust, adapt)
        for n, p in model.named_parameters():
            assert torch.allclose(p.flatten(), torch.tensor(weights[n], dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                       ("adamw", torch.optim.AdamW)])
def test_other_optimisers_decay_weights_not_biases(name, cls):
    opt = build_optimizer(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), OptimConfig(name=name, weight_decay=0.1))
    assert isinstance(opt, cls)
    decays = sorted((g["weight_decay"], len(g["params"])) for g in opt.param_groups)
    assert decays == [(0.0, 3), (0.1, 1)]  # linear bias + BN weight/bias undecayed


def test_warmup_then_cosine():
    cfg = OptimConfig(lr=1.0, warmup_epochs=2, min_lr=0.1)
    lrs = [learning_rate(cfg, s, total_steps=20, steps_per_epoch=5) for s in range(20)]
    assert lrs[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[15] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    constant = OptimConfig(lr=0.3, warmup_epochs=0, schedule="constant")
    assert learning_rate(constant, 7, 20, 5) == 0.3


def test_step_schedule_drops_at_its_milestone_epochs():
    """The difficulty-based recipes' MultiStepLR: x0.1 at the start of epoch 2 (here) and 3."""
    cfg = OptimConfig(lr=1.0, warmup_epochs=0, schedule="step", milestones=(2, 3), gamma=0.1)
    lrs = [learning_rate(cfg, s, total_steps=20, steps_per_epoch=5) for s in range(20)]
    assert lrs == pytest.approx([1.0] * 10 + [0.1] * 5 + [0.01] * 5)


@pytest.mark.parametrize("name", ["lars", "sgd"])
def test_excluded_parameters_are_left_to_the_method(name):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    mask = model[0].weight  # stands for a meta-learned parameter the method steps itself
    opt = build_optimizer(model, OptimConfig(name=name, lars_exclude_bias_and_norm=False), exclude=[mask])
    held = [p for group in opt.param_groups for p in group["params"]]
    assert len(held) == 3 and all(p is not mask for p in held)
