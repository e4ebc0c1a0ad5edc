"""MetaMask: the objective on masked features, the mask outside the trainer's optimiser, the
shared-gradient surrogate loss, the meta-gradient against central finite differences of the
unrolled objective (float64, smooth backbone), the virtual step against the real SGD step, the
meta interval, BatchNorm running statistics, and config validation."""

import copy
import json

import pytest
import torch

from contrastlab.components.meta import SGDStep
from contrastlab.core.config import OptimConfig
from contrastlab.core.optim import build_optimizer
from contrastlab.engine.distributed import init_distributed
from contrastlab.engine.trainer import Trainer
from contrastlab.losses import barlow_twins_loss, nt_xent
from contrastlab.methods.base import StepInput
from contrastlab.methods.metamask import MetaMask, MetaMaskConfig
from smooth import DIM, IN, TanhBackbone
from test_trainer import METHOD_OVERRIDES, tiny_config

BATCH = 8
LR = 0.5  # large, so the second-order term is a sizeable part of the meta-gradient
EPS = 1e-6


def make_method(**fields) -> MetaMask:
    torch.manual_seed(0)
    cfg = MetaMaskConfig(name="metamask", proj_hidden_dim=6, proj_out_dim=5, cl_hidden_dim=6, cl_out_dim=3,
                         cl_weight=2.0, bt_weight=0.5, **fields)
    method = MetaMask(cfg, TanhBackbone()).double().train()
    with torch.no_grad():
        method.mask_parameter.copy_(torch.randn(DIM, dtype=torch.float64))  # away from the symmetric init
    return method


def make_views(seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(BATCH, IN, generator=generator, dtype=torch.float64) for _ in range(2)]


def plain_sgd(method, lr=LR):
    return torch.optim.SGD(list(method.encoder_parameters().values()), lr=lr)


def trainer_step(method, optimizer, views):
    """What the trainer does with one training step."""
    out = method.training_step(StepInput(views))
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    optimizer.step()
    return out


def full_objective(method, views, mask):
    """bt_weight * BT + cl_weight * NT-Xent, by hand from the masked backbone features."""
    masked = method.backbone(torch.cat(views)) * mask
    z1, z2 = method.bt_head(masked).chunk(2)
    c1, c2 = method.cl_head(masked).chunk(2)
    cfg = method.cfg
    return cfg.bt_weight * barlow_twins_loss(z1, z2, cfg.lambd) + cfg.cl_weight * nt_xent(c1, c2, cfg.temperature)


def off_diagonal_reference(z1, z2):
    n, d = z1.shape
    a = (z1 - z1.mean(0)) / (z1.var(0, unbiased=False) + 1e-5).sqrt()
    b = (z2 - z2.mean(0)) / (z2.var(0, unbiased=False) + 1e-5).sqrt()
    total = 0.0
    for i in range(d):
        for j in range(d):
            if i != j:
                total += (sum(a[k, i] * b[k, j] for k in range(n)) / n) ** 2
    return total / (d * (d - 1))


def test_loss_is_weighted_barlow_twins_plus_nt_xent_of_the_masked_features():
    method = make_method(mask_activation="none", meta_order="none")
    views = make_views()
    out = method.training_step(StepInput(views))
    mask = method.mask_parameter.detach()
    torch.testing.assert_close(out["loss"], full_objective(method, views, mask))
    h = method.backbone(torch.cat(views))
    masked = h * mask
    z1, z2 = method.bt_head(masked).chunk(2)
    c1, c2 = method.cl_head(masked).chunk(2)
    torch.testing.assert_close(out["loss_bt"], barlow_twins_loss(z1, z2, method.cfg.lambd))
    torch.testing.assert_close(out["loss_cl"], nt_xent(c1, c2, 0.07))
    torch.testing.assert_close(out["bt_off_diagonal"], off_diagonal_reference(z1.detach(), z2.detach()))
    torch.testing.assert_close(out["features"], h[:BATCH].detach())  # unmasked
    torch.testing.assert_close(out["mask_min"], mask.min())
    assert "meta_outer_loss" not in out and out["loss"].requires_grad


@pytest.mark.parametrize("activation, value", [("sigmoid", 0.5), ("none", 1.0)])
def test_mask_starts_uniform_and_the_trainer_optimizer_leaves_it_out(activation, value):
    method = MetaMask(MetaMaskConfig(mask_activation=activation, proj_hidden_dim=8, proj_out_dim=8,
                                     cl_hidden_dim=8, cl_out_dim=4), TanhBackbone())
    assert torch.equal(method.mask(), torch.full((DIM,), value))
    assert method.outer_parameters() == [method.mask_parameter]
    optimizer = build_optimizer(method, OptimConfig(name="sgd"), exclude=method.outer_parameters())
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(method.mask_parameter) not in held
    assert held == {id(p) for p in method.encoder_parameters().values()}
    assert len(held) == sum(1 for _ in method.parameters()) - 1


@pytest.mark.parametrize("order, second_order", [("second", "jvp"), ("second", "unrolled"), ("first", "jvp"),
                                                 ("finite_difference", "jvp"), ("none", "jvp")])
def test_surrogate_loss_hands_the_trainer_autograds_gradient_and_none_to_the_mask(order, second_order):
    method = make_method(meta_order=order, second_order=second_order)
    optimizer = plain_sgd(method)
    method.attach_optimizer(optimizer)
    reference = copy.deepcopy(method)
    views = make_views()
    out = method.training_step(StepInput(views))
    moved = not torch.equal(method.mask_parameter, reference.mask_parameter)
    assert moved == (order != "none")  # the meta step moved it
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()

    loss = full_objective(reference, views, reference.mask())
    theta = reference.encoder_parameters()
    expected = torch.autograd.grad(loss, list(theta.values()), allow_unused=True)
    torch.testing.assert_close(out["loss"], loss.detach(), rtol=0, atol=1e-14)
    for (name, p), grad in zip(method.encoder_parameters().items(), expected):
        torch.testing.assert_close(p.grad, torch.zeros_like(p) if grad is None else grad, msg=name)
    assert method.mask_parameter.grad is None


def unrolled_objective(method, views, raw_mask):
    """F(m) = NT-Xent(theta - lr * grad_theta L(theta; m); m), with a real SGD step on a copy."""
    clone = copy.deepcopy(method)
    with torch.no_grad():
        clone.mask_parameter.copy_(raw_mask)
    optimizer = plain_sgd(clone)
    full_objective(clone, views, clone.mask()).backward()
    optimizer.step()
    masked = clone.backbone(torch.cat(views)) * clone.mask()
    return nt_xent(*clone.cl_head(masked).chunk(2), clone.cfg.temperature).item()


def unrolled_gradient_fd(method, views):
    raw = method.mask_parameter.detach().clone()
    grad = torch.zeros_like(raw)
    for j in range(raw.numel()):
        up, down = raw.clone(), raw.clone()
        up[j] += EPS
        down[j] -= EPS
        grad[j] = (unrolled_objective(method, views, up) - unrolled_objective(method, views, down)) / (2 * EPS)
    return grad


def meta_gradient_of_one_step(method, views):
    """The mask's meta-gradient, read off one mask step with lr 1, no momentum, no decay."""
    method.attach_optimizer(plain_sgd(method))
    before = method.mask_parameter.detach().clone()
    method.training_step(StepInput(views))
    return before - method.mask_parameter.detach()


def test_meta_gradient_orders_against_finite_differences_of_the_unrolled_objective():
    plain_mask_step = dict(mask_lr=1.0, mask_momentum=0.0, mask_weight_decay=0.0)
    views = make_views()
    expected = unrolled_gradient_fd(make_method(), views)
    grads = {order: meta_gradient_of_one_step(make_method(meta_order=order, fd_radius=1e-3, **plain_mask_step), views)
             for order in ("second", "finite_difference", "first")}
    unrolled = meta_gradient_of_one_step(make_method(second_order="unrolled", **plain_mask_step), views)
    torch.testing.assert_close(grads["second"], expected, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(unrolled, grads["second"], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grads["finite_difference"], grads["second"], rtol=1e-4, atol=1e-5)  # O(r^2)
    second_order_term = (grads["second"] - grads["first"]).norm()
    assert second_order_term > 0.05 * grads["second"].norm()


@pytest.mark.parametrize("optimizer_name", ["sgd", "lars"])
def test_virtual_step_is_the_real_optimizer_step_with_momentum_and_weight_decay(optimizer_name):
    """The outer loss is evaluated at the weights the real optimiser step then produces."""
    method = make_method(meta_order="first")
    cfg = OptimConfig(name=optimizer_name, lr=LR, momentum=0.9, weight_decay=0.05)
    optimizer = build_optimizer(method, cfg, exclude=method.outer_parameters())
    method.attach_optimizer(optimizer)
    trainer_step(method, optimizer, make_views(seed=2))  # fills the momentum buffers
    views = make_views(seed=3)
    mask_before = method.mask().detach()
    out = trainer_step(method, optimizer, views)
    with torch.no_grad():
        masked = method.backbone(torch.cat(views)) * mask_before
        expected = nt_xent(*method.cl_head(masked).chunk(2), method.cfg.temperature)
    torch.testing.assert_close(out["meta_outer_loss"], expected, rtol=1e-12, atol=1e-12)

    adam = torch.optim.Adam(list(method.encoder_parameters().values()), lr=0.01)
    method.attach_optimizer(adam)
    step = method.virtual_step(method.encoder_parameters(), {})
    assert isinstance(step, SGDStep) and step.lr == 0.01 and step.momentum == 0 and not step.momentum_buffers


@pytest.mark.parametrize("order, every, meta_steps", [("second", 2, [0, 2]), ("finite_difference", 3, [0, 3]),
                                                      ("none", 1, [])])
def test_meta_step_runs_every_meta_every_steps_and_never_when_none(order, every, meta_steps):
    method = make_method(meta_order=order, meta_every=every)
    optimizer = plain_sgd(method, lr=0.05)
    method.attach_optimizer(optimizer)
    for i in range(4):
        before = method.mask_parameter.detach().clone()
        out = trainer_step(method, optimizer, make_views(seed=i))
        ran = i in meta_steps
        assert ("meta_outer_loss" in out) == ran and ("mask_grad_norm" in out) == ran
        assert torch.equal(method.mask_parameter, before) != ran
    assert int(method.steps_done) == 4


def test_mask_momentum_buffer_is_saved_in_the_state_dict():
    method = make_method(meta_order="first")
    method.attach_optimizer(plain_sgd(method))
    assert method.state_dict()["_extra_state"].numel() == 0
    method.training_step(StepInput(make_views()))
    state = method.state_dict()
    restored = make_method(meta_order="first")
    restored.load_state_dict(state)
    assert int(restored.steps_done) == 1
    buffer = restored.mask_optimizer.state[restored.mask_parameter]["momentum_buffer"]
    assert buffer.abs().sum() > 0
    torch.testing.assert_close(buffer, method.mask_optimizer.state[method.mask_parameter]["momentum_buffer"])
    with pytest.raises(ValueError, match="momentum buffer"):
        restored.load_state_dict({**state, "_extra_state": torch.zeros(DIM + 1)})


def test_trainer_moves_the_mask_and_only_real_forwards_update_batchnorm_statistics(tmp_path):
    """One trainer step with and without the meta step: the same running statistics and the same
    encoder update (the meta step only changes the mask)."""
    env = init_distributed("cpu")
    trainers = {}
    for order in ("second", "none"):
        cfg = tiny_config("train.epochs=1", "train.max_steps_per_epoch=1", *METHOD_OVERRIDES["metamask"],
                          f"method.meta_order={order}")
        trainers[order] = Trainer(cfg, tmp_path / order, env)
        trainers[order].fit()
    meta, plain = trainers["second"].method.state_dict(), trainers["none"].method.state_dict()
    statistics = [k for k in meta if "running_" in k or "num_batches_tracked" in k]
    assert statistics and all(torch.equal(meta[k], plain[k]) for k in statistics)
    assert all(int(meta[k]) == 1 for k in statistics if "num_batches_tracked" in k)
    for name in trainers["none"].method.encoder_parameters():
        torch.testing.assert_close(meta[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)
    assert torch.equal(plain["mask_parameter"], torch.zeros_like(plain["mask_parameter"]))
    assert not torch.equal(meta["mask_parameter"], plain["mask_parameter"])
    assert "mask_grad_norm" in trainers["second"].logger.records[0]


@pytest.mark.parametrize("field, value", [
    ("temperature", 0.0), ("lambd", -1.0), ("cl_weight", -0.1), ("cl_out_dim", 0), ("mask_lr", 0.0),
    ("mask_momentum", -0.5), ("mask_weight_decay", -1e-4), ("meta_every", 0), ("meta_every", 1.5),
    ("fd_radius", 0.0), ("meta_order", "third"), ("mask_activation", "relu"),
])
def test_invalid_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"method.{field} must be"):
        MetaMask(MetaMaskConfig(**{field: value}), TanhBackbone())


def test_meta_step_needs_the_trainers_optimizer():
    with pytest.raises(RuntimeError, match="attach_optimizer"):
        make_method().training_step(StepInput(make_views()))


def test_training_logs_mask_values_and_diagnostics_to_jsonl_not_csv(tmp_path):
    trainer = Trainer(tiny_config("train.epochs=1", *METHOD_OVERRIDES["metamask"]), tmp_path, init_distributed("cpu"))
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "mask_values" in r]
    assert logged and all(len(r["mask_values"]) == trainer.method.backbone.out_dim for r in logged)
    assert logged[-1]["mask_values"] == pytest.approx(trainer.method.mask().tolist())
    assert all(0 < r["effective_rank"] <= len(r["mask_values"]) for r in logged)
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "effective_rank" in header and "mask_values" not in header
