"""MetAug: batch pair scores against a loop, the objective against a by-hand composition, the
generators outside the trainer's optimiser, the shared-gradient surrogate loss, the meta-gradient
against finite differences of the unrolled objective (float64, smooth backbone), the meta
interval, the generators' momentum in the state dict, training moves the generators, and config
validation."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from contrastlab.core.config import OptimConfig
from contrastlab.core.optim import build_optimizer
from contrastlab.engine.distributed import init_distributed
from contrastlab.engine.trainer import Trainer
from contrastlab.losses import margin_injection, oucl
from contrastlab.methods.base import StepInput
from contrastlab.methods.metaug import MetAug, MetAugConfig, pair_scores
from smooth import IN, TanhBackbone
from test_trainer import METHOD_OVERRIDES, tiny_config

BATCH = 6
INNER_LR = 0.5  # large, so the second-order term is a sizeable part of the meta-gradient
EPS = 1e-6


def make_method(**fields) -> MetAug:
    torch.manual_seed(0)
    settings = dict(proj_hidden_dim=6, proj_out_dim=3, gen_hidden_dim=5, aug_weight=0.7, margin_weight=0.5,
                    margin_positive_scale=0.3, inner_lr=INNER_LR)
    return MetAug(MetAugConfig(name="metaug", **{**settings, **fields}), TanhBackbone()).double().train()


def make_views(seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(BATCH, IN, generator=generator, dtype=torch.float64) for _ in range(2)]


def generator_vector(method):
    return parameters_to_vector(method.outer_parameters()).detach().clone()


def pair_scores_reference(u, v):
    rows = torch.cat([u, v]).detach()
    n = u.shape[0]
    positives, negatives = [], []
    for i in range(2 * n):
        partner = (i + n) % (2 * n)
        positives.append([float(rows[i] @ rows[partner])])
        negatives.append([float(rows[i] @ rows[j]) for j in range(2 * n) if j not in (i, partner)])
    return torch.tensor(positives, dtype=u.dtype), torch.tensor(negatives, dtype=u.dtype)


def test_pair_scores_match_a_loop_and_reject_bad_shapes():
    u, v = (F.normalize(t, dim=1) for t in torch.randn(2, 5, 3, dtype=torch.float64))
    for got, expected in zip(pair_scores(u, v), pair_scores_reference(u, v)):
        torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="pair_scores"):
        pair_scores(u, v[:4])


def loop_scores(method, views):
    """Original, per-augmented-pair and concatenated generated scores, from module forwards and
    the loop reference."""
    h = method.backbone(torch.cat(views))
    z1, z2 = F.normalize(method.projector(h), dim=1).chunk(2)
    g1 = F.normalize(method.generators[0](z1), dim=1)
    g2 = F.normalize(method.generators[1](z2), dim=1)
    augmented = [pair_scores_reference(a, b) for a, b in ((g1, z2), (z1, g2), (g1, g2))]
    generated = [torch.cat([s[k] for s in augmented], 1) for k in (0, 1)]
    return pair_scores_reference(z1, z2), augmented, generated


def test_loss_is_oucl_plus_weighted_augmented_oucl_plus_margin_injection():
    method = make_method(meta_order="none")
    views = make_views()
    out = method.training_step(StepInput(views))
    original, augmented, generated = loop_scores(method, views)
    base = oucl(*original, 16.0)
    aug = sum(oucl(*s, 16.0) for s in augmented)
    margin = margin_injection(*original, *generated, "large", 0.3)
    torch.testing.assert_close(out["loss_oucl"], base)
    torch.testing.assert_close(out["loss_aug"], aug)
    torch.testing.assert_close(out["loss_margin"], margin)
    torch.testing.assert_close(out["loss"].detach(), base + 0.7 * aug + 0.5 * margin)
    torch.testing.assert_close(out["positive_score_original"], original[0].mean())
    torch.testing.assert_close(out["hardest_negative_generated"], generated[1].amax(1).mean())
    assert aug > 0 and margin > 0 and "gen_grad_norm" not in out


def differentiable_objective(method, views):
    """L with autograd, from module forwards (train-mode BatchNorm: batch statistics)."""
    h = method.backbone(torch.cat(views))
    z1, z2 = F.normalize(method.projector(h), dim=1).chunk(2)
    g1 = F.normalize(method.generators[0](z1), dim=1)
    g2 = F.normalize(method.generators[1](z2), dim=1)
    cfg = method.cfg
    original = pair_scores(z1, z2)
    augmented = [pair_scores(g1, z2), pair_scores(z1, g2), pair_scores(g1, g2)]
    generated = [torch.cat([s[k] for s in augmented], 1) for k in (0, 1)]
    return (oucl(*original, cfg.gamma) + cfg.aug_weight * sum(oucl(*s, cfg.gamma) for s in augmented)
            + cfg.margin_weight * margin_injection(*original, *generated, cfg.margin, cfg.margin_positive_scale))


def test_generators_are_left_out_of_the_trainer_optimizer():
    method = make_method()
    optimizer = build_optimizer(method, OptimConfig(name="sgd"), exclude=method.outer_parameters())
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    generators = {id(p) for p in method.generators.parameters()}
    assert generators and not held & generators
    assert held == {id(p) for p in method.encoder_parameters().values()}
    assert len(held) + len(generators) == sum(1 for _ in method.parameters())


@pytest.mark.parametrize("order, second_order", [("second", "jvp"), ("second", "unrolled"), ("first", "jvp"),
                                                 ("none", "jvp")])
def test_surrogate_loss_hands_the_trainer_autograds_gradient_and_none_to_the_generators(order, second_order):
    method = make_method(meta_order=order, second_order=second_order)
    reference = copy.deepcopy(method)
    views = make_views()
    out = method.training_step(StepInput(views))
    assert (not torch.equal(generator_vector(method), generator_vector(reference))) == (order != "none")
    out["loss"].backward()
    loss = differentiable_objective(reference, views)
    theta = reference.encoder_parameters()
    expected = torch.autograd.grad(loss, list(theta.values()), allow_unused=True)
    torch.testing.assert_close(out["loss"], loss.detach(), rtol=0, atol=1e-14)
    for (name, p), grad in zip(method.encoder_parameters().items(), expected):
        torch.testing.assert_close(p.grad, torch.zeros_like(p) if grad is None else grad, msg=name)
    assert all(p.grad is None for p in method.generators.parameters())


def unrolled_objective(method, views, omega):
    """F(omega) = L(theta - inner_lr * dL/dtheta (theta; omega); omega), by hand on a copy."""
    clone = copy.deepcopy(method)
    vector_to_parameters(omega, clone.outer_parameters())
    theta = list(clone.encoder_parameters().values())
    grads = torch.autograd.grad(differentiable_objective(clone, views), theta)
    with torch.no_grad():
        for p, g in zip(theta, grads):
            p -= INNER_LR * g
        return differentiable_objective(clone, views).item()


def meta_gradient_of_one_step(method, views):
    """The generators' meta-gradient, read off one generator step with lr 1, no momentum/decay."""
    before = generator_vector(method)
    method.training_step(StepInput(views))
    return before - generator_vector(method)


def test_meta_gradient_matches_finite_differences_of_the_unrolled_objective():
    plain_step = dict(gen_lr=1.0, gen_momentum=0.0, gen_weight_decay=0.0)
    views = make_views()
    grads = {order: meta_gradient_of_one_step(make_method(meta_order=order, **plain_step), views)
             for order in ("second", "first")}
    unrolled = meta_gradient_of_one_step(make_method(second_order="unrolled", **plain_step), views)
    torch.testing.assert_close(unrolled, grads["second"], rtol=1e-9, atol=1e-12)
    method = make_method()
    omega = generator_vector(method)
    directions = torch.randn(3, omega.numel(), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for direction in directions:
        expected = (unrolled_objective(method, views, omega + EPS * direction)
                    - unrolled_objective(method, views, omega - EPS * direction)) / (2 * EPS)
        assert float(grads["second"] @ direction) == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert (grads["second"] - grads["first"]).norm() > 0.01 * grads["second"].norm()


@pytest.mark.parametrize("order, every, meta_steps", [("second", 2, [0, 2]), ("first", 3, [0, 3]), ("none", 1, [])])
def test_meta_step_runs_every_meta_every_steps_and_never_when_none(order, every, meta_steps):
    method = make_method(meta_order=order, meta_every=every)
    for i in range(4):
        before = generator_vector(method)
        out = method.training_step(StepInput(make_views(seed=i)))
        ran = i in meta_steps
        assert ("gen_grad_norm" in out) == ran and ("meta_outer_loss" in out) == ran
        assert torch.equal(generator_vector(method), before) != ran
    assert int(method.steps_done) == 4


def test_generator_momentum_buffers_are_saved_in_the_state_dict():
    method = make_method(meta_order="first")
    assert method.state_dict()["_extra_state"].numel() == 0
    method.training_step(StepInput(make_views()))
    state = method.state_dict()
    restored = make_method(meta_order="first")
    restored.load_state_dict(state)
    assert int(restored.steps_done) == 1
    for p, q in zip(method.outer_parameters(), restored.outer_parameters()):
        buffer = restored.generator_optimizer.state[q]["momentum_buffer"]
        torch.testing.assert_close(buffer, method.generator_optimizer.state[p]["momentum_buffer"])
    assert state["_extra_state"].abs().sum() > 0
    with pytest.raises(ValueError, match="momentum buffers"):
        restored.load_state_dict({**state, "_extra_state": torch.zeros(3)})


def test_trainer_moves_the_generators_only_with_a_meta_order(tmp_path):
    env = init_distributed("cpu")
    for order, moves in (("second", True), ("none", False)):
        cfg = tiny_config("train.epochs=1", "train.max_steps_per_epoch=2", *METHOD_OVERRIDES["metaug"],
                          f"method.meta_order={order}")
        trainer = Trainer(cfg, tmp_path / order, env)
        before = generator_vector(trainer.method)
        trainer.fit()
        assert (not torch.equal(generator_vector(trainer.method), before)) == moves
        assert ("gen_grad_norm" in trainer.logger.records[0]) == moves
        assert all(torch.isfinite(torch.tensor(r["loss"])) for r in trainer.logger.records if "loss" in r)


@pytest.mark.parametrize("field, value", [
    ("gamma", 0.0), ("aug_weight", -0.1), ("margin_weight", -1.0), ("margin", "huge"), ("inner_lr", 0.0),
    ("gen_lr", -0.1), ("gen_momentum", -0.5), ("gen_weight_decay", -1e-4), ("gen_hidden_dim", 0),
    ("meta_every", 0), ("meta_every", 1.5), ("meta_order", "finite_difference"), ("margin_positive_scale", -1.0),
])
def test_invalid_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"method.{field} must be"):
        MetAug(MetAugConfig(**{field: value}), TanhBackbone())
