"""InvCLR: the forward-mode penalty against finite differences and a reverse-mode loop
reference, its gradient, clipping, BatchNorm bookkeeping, and gp_weight = 0 == SimCLR."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from contrastlab.components.invariance import (
    directional_sensitivity,
    first_rows,
    lookup,
    projected_sensitivity_reverse,
    replace,
)
from contrastlab.core.config import ConfigError
from contrastlab.data.augment import ColorJitter, RandomGrayscale, RandomResizedCropFlip, ViewPipeline
from contrastlab.data.preprocess import Normalize
from contrastlab.data.spirograph import SpirographViews, sample_factors, sample_nuisance
from contrastlab.engine.distributed import init_distributed
from contrastlab.engine.trainer import Trainer
from contrastlab.losses import nt_xent
from contrastlab.methods.base import StepInput
from contrastlab.methods.invclr import InvCLR, InvCLRConfig
from contrastlab.models import build_backbone
from contrastlab.models.batchnorm import batch_statistics_only
from contrastlab.recipes import load_config

SPIRO_NORM = Normalize([0.3, 0.3, 0.3], [0.25, 0.25, 0.25])


class SmoothEncoder(nn.Module):
    """Conv -> (BatchNorm) -> tanh -> linear: smooth, so finite differences converge."""

    def __init__(self, channels: int = 3, side: int = 32, dim: int = 5, batchnorm: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 3, stride=2)
        self.norm = nn.BatchNorm2d(4) if batchnorm else nn.Identity()
        self.head = nn.Linear(4 * ((side - 3) // 2 + 1) ** 2, dim)

    def forward(self, x):
        return self.head(torch.tanh(self.norm(self.conv(x))).flatten(1))


def spirograph_case(n=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    factors = sample_factors(n, generator).double()
    alpha = sample_nuisance(n, generator).double()
    delta = sample_nuisance(n, generator).double() - alpha
    return factors, alpha, delta


def normalized_rep(encoder, views, factors, nuisance):
    return F.normalize(encoder(views.apply({"targets": factors}, {"nuisance": nuisance})), dim=1)


@pytest.mark.parametrize("projection", ["none", "rademacher"])
def test_directional_derivative_matches_finite_differences_through_the_renderer(projection):
    torch.manual_seed(0)
    encoder = SmoothEncoder().double()
    views = SpirographViews(SPIRO_NORM)
    factors, alpha, delta = spirograph_case()

    def encode(values):
        return encoder(views.apply({"targets": factors}, values))

    got = directional_sensitivity(encode, {"nuisance": alpha}, {"nuisance": delta}, projection=projection,
                                  generator=torch.Generator().manual_seed(7))
    step = 1e-6
    plus = normalized_rep(encoder, views, factors, alpha + step * delta)
    minus = normalized_rep(encoder, views, factors, alpha - step * delta)
    derivative = (plus - minus) / (2 * step)  # (B, D)
    if projection == "rademacher":
        signs = torch.randint(0, 2, derivative.shape, generator=torch.Generator().manual_seed(7)).double() * 2 - 1
        expected = (signs * derivative).sum(1).square()
    else:
        expected = derivative.square().sum(1)
    assert expected.abs().min() > 1e-6  # a real signal, not zeros on both sides
    torch.testing.assert_close(got.detach(), expected, rtol=1e-5, atol=1e-9)


def test_colour_jitter_penalty_equals_the_reverse_mode_loop_reference():
    """The reference code's estimator: G_i = d(eps_i . h^_i)/d alpha_i by reverse mode, then
    (G_i . delta_i)^2; here one sample at a time (the encoder has no batch coupling)."""
    torch.manual_seed(0)
    pipeline = ViewPipeline([RandomResizedCropFlip(12), ColorJitter.from_strength(1.0, prob=1.0)],
                            Normalize([0.5] * 3, [0.25] * 3))
    encoder = SmoothEncoder(side=12)
    generator = torch.Generator().manual_seed(1)
    batch = {"inputs": torch.randint(0, 256, (5, 3, 12, 12), dtype=torch.uint8)}
    params = pipeline.sample(batch, generator)
    fresh = pipeline.sample(batch, generator)
    paths = ["jitter.brightness", "jitter.contrast", "jitter.saturation", "jitter.hue"]
    alpha = {p: lookup(params, p) for p in paths}
    delta = {p: lookup(fresh, p) - alpha[p] for p in paths}

    def encode(values):
        return encoder(pipeline.apply(batch, replace(params, values)))

    got = directional_sensitivity(encode, alpha, delta, generator=torch.Generator().manual_seed(3))
    h = F.normalize(encode(alpha), dim=1)
    signs = torch.randint(0, 2, h.shape, generator=torch.Generator().manual_seed(3)).float() * 2 - 1
    expected = []
    for i in range(5):
        leaves = {p: alpha[p].clone().requires_grad_(True) for p in paths}
        h_i = F.normalize(encode(leaves)[i], dim=0)
        grads = torch.autograd.grad((signs[i] * h_i).sum(), list(leaves.values()))
        expected.append(sum(g[i] * delta[p][i] for g, p in zip(grads, paths)) ** 2)
    torch.testing.assert_close(got.detach(), torch.stack(expected), rtol=1e-4, atol=1e-7)


def test_reverse_mode_estimator_equals_forward_mode_and_averages_directions():
    torch.manual_seed(0)
    encoder = SmoothEncoder().double()
    views = SpirographViews(SPIRO_NORM)
    factors, alpha, delta = spirograph_case(n=4, seed=3)
    other = spirograph_case(n=4, seed=4)[2]

    def encode(values):
        return encoder(views.apply({"targets": factors}, values))

    def reverse(deltas):
        return projected_sensitivity_reverse(encode, {"nuisance": alpha}, [{"nuisance": d} for d in deltas],
                                             generator=torch.Generator().manual_seed(5))

    def forward(d):
        return directional_sensitivity(encode, {"nuisance": alpha}, {"nuisance": d},
                                       generator=torch.Generator().manual_seed(5))

    torch.testing.assert_close(reverse([delta]), forward(delta))  # same signs, same quantity
    torch.testing.assert_close(reverse([delta, other]), (forward(delta) + forward(other)) / 2)
    (weight_grad,) = torch.autograd.grad(reverse([delta]).sum(), encoder.conv.weight)
    (reference,) = torch.autograd.grad(forward(delta).sum(), encoder.conv.weight)
    torch.testing.assert_close(weight_grad, reference)


def test_reverse_mode_in_training_and_its_settings():
    method = make_invclr(gp_weight=0.2, gp_clip=1e6, gp_mode="reverse", gp_draws=100)
    out = method.training_step(tiny_spiro_step())
    assert out["gp"] > 0 and torch.isfinite(out["loss"])
    with pytest.raises(ValueError, match="gp_mode=reverse needs method.gp_projection=rademacher"):
        make_invclr(gp_mode="reverse", gp_projection="none")


@pytest.mark.parametrize("batchnorm", [False, True])
def test_penalty_gradient_wrt_weights_matches_finite_differences(batchnorm):
    """With BatchNorm after the conv, the tangent is back-propagated through the composite
    BatchNorm the penalty pass uses (torch 2.13's native one gets this gradient wrong)."""
    torch.manual_seed(0)
    encoder = SmoothEncoder(batchnorm=batchnorm).double().train()
    views = SpirographViews(SPIRO_NORM)
    factors, alpha, delta = spirograph_case(n=3, seed=2)

    def penalty():
        with batch_statistics_only(encoder, composite=True):
            return directional_sensitivity(
                lambda v: encoder(views.apply({"targets": factors}, v)), {"nuisance": alpha}, {"nuisance": delta},
                projection="none",
            ).mean()

    weight = encoder.conv.weight
    (grad,) = torch.autograd.grad(penalty(), weight)
    direction = torch.randn_like(weight)
    step = 1e-6
    with torch.no_grad():
        weight += step * direction
        up = penalty()
        weight -= 2 * step * direction
        down = penalty()
        weight += step * direction
    numeric = (up - down) / (2 * step)
    assert abs(numeric) > 1e-8
    torch.testing.assert_close((grad * direction).sum(), numeric, rtol=1e-5, atol=1e-10)


def test_param_path_helpers():
    params = {"crop": {"size": torch.ones(3)}, "jitter": {"hue": torch.zeros(3), "apply": torch.ones(3)}}
    swapped = replace(params, {"jitter.hue": torch.full((3,), 0.1)})
    assert torch.equal(lookup(swapped, "jitter.hue"), torch.full((3,), 0.1))
    assert swapped["crop"] is params["crop"] and torch.equal(params["jitter"]["hue"], torch.zeros(3))
    assert first_rows(params, 2)["jitter"]["apply"].shape == (2,)
    with pytest.raises(KeyError, match="jitter.nope"):
        lookup(params, "jitter.nope")


def tiny_spiro_step(n=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    views = [SpirographViews(SPIRO_NORM), SpirographViews(SPIRO_NORM)]
    batch = {"targets": sample_factors(n, generator)}
    params = [v.sample(batch, generator) for v in views]
    x = [v.apply(batch, p) for v, p in zip(views, params)]
    return StepInput(x, params, views, batch, generator)


def make_invclr(**fields):
    torch.manual_seed(0)
    cfg = InvCLRConfig(proj_hidden_dim=16, proj_out_dim=8, **fields)
    return InvCLR(cfg, build_backbone("convnet", (3, 32, 32), channels=(4, 8)))


def test_loss_is_ntxent_plus_weighted_clipped_penalty_and_running_stats_untouched():
    method = make_invclr(gp_weight=0.3, gp_clip=1e6)
    step = tiny_spiro_step()
    stats_before = {k: v.clone() for k, v in method.state_dict().items() if "running" in k or "num_batches" in k}
    out = method.training_step(step)
    stats_after = {k: v for k, v in method.state_dict().items() if k in stats_before}

    reference = make_invclr(gp_weight=0.0)  # same initial weights (same seed)
    contrastive = reference.training_step(tiny_spiro_step())["loss"]
    # The penalty pass must not count as a training batch: running statistics equal SimCLR's.
    for key, value in reference.state_dict().items():
        if key in stats_before:
            torch.testing.assert_close(stats_after[key], value)
    assert not torch.equal(stats_after["backbone.features.1.running_mean"], stats_before["backbone.features.1.running_mean"])
    torch.testing.assert_close(out["loss"], contrastive + 0.3 * out["gp"])
    assert out["gp"] > 0 and out["gp_clipped"] == 0


def test_clipped_penalty_has_no_gradient():
    clipped = make_invclr(gp_weight=0.5, gp_clip=1e-9)
    out = clipped.training_step(tiny_spiro_step())
    assert out["gp_clipped"] == 1
    out["loss"].backward()
    plain = make_invclr(gp_weight=0.0)
    plain.training_step(tiny_spiro_step())["loss"].backward()
    for (name, a), b in zip(clipped.named_parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_fraction_uses_a_sub_batch_and_changes_the_estimate():
    full = make_invclr(gp_weight=1.0, gp_clip=1e6, gp_projection="none")
    part = make_invclr(gp_weight=1.0, gp_clip=1e6, gp_projection="none", gp_fraction=0.25)
    seen = []
    part.backbone.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    a = full.gradient_penalty(tiny_spiro_step())
    b = part.gradient_penalty(tiny_spiro_step())
    assert seen == [4] and a > 0 and b > 0 and not torch.isclose(a, b)


def test_invalid_settings_are_named():
    with pytest.raises(ValueError, match="gp_fraction"):
        make_invclr(gp_fraction=0.0)
    with pytest.raises(ValueError, match="gp_draws"):
        make_invclr(gp_draws=0)
    method = make_invclr(gp_parameters=("nuisance.h",))
    with pytest.raises(ValueError, match=r"nuisance\.h.*differentiable parameters \['nuisance'\]"):
        method.training_step(tiny_spiro_step())
    crop_only = ViewPipeline([RandomResizedCropFlip(8), RandomGrayscale(0.2)], Normalize([0.5], [0.2]))
    with pytest.raises(ValueError, match=r"colour-jitter.*\['crop.center', 'crop.size'\]"):
        make_invclr().regularised_parameters(crop_only)
    with pytest.raises(ConfigError, match="gp_projection"):
        load_config(overrides=["method.name=invclr", "method.gp_projection=gaussian"])


TINY_SPIRO = [
    "data.name=spirograph", "data.train_size=128", "data.test_size=64", "augment.preset=spirograph",
    "backbone.name=convnet", "backbone.options={channels: [4, 8]}",
    "method.proj_hidden_dim=16", "method.proj_out_dim=8", "optim.name=sgd", "optim.lr=0.05",
    "train.batch_size=32", "train.epochs=2", "train.precision=fp32", "train.channels_last=false",
    "train.progress=false", "train.log_every=1", "train.device=cpu", "eval.at_end=false",
]


def run_losses(run_dir, *overrides):
    cfg = load_config(overrides=TINY_SPIRO + list(overrides))
    trainer = Trainer(cfg, run_dir, init_distributed("cpu"))
    trainer.fit()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r], trainer.method.state_dict()


def test_zero_weight_trains_exactly_like_simclr(tmp_path):
    simclr, simclr_state = run_losses(tmp_path / "simclr", "method.name=simclr")
    invclr, invclr_state = run_losses(tmp_path / "invclr", "method.name=invclr", "method.gp_weight=0")
    assert simclr == invclr
    for key, value in simclr_state.items():
        assert torch.equal(value, invclr_state[key]), key


def test_penalty_changes_training_and_is_logged_under_default_cpu_settings(tmp_path):
    """bf16 autocast + channels_last (the penalty pass itself runs in fp32)."""
    fast = ["train.precision=bf16", "train.channels_last=true"]
    simclr, _ = run_losses(tmp_path / "simclr", "method.name=simclr", *fast)
    invclr, _ = run_losses(tmp_path / "invclr", "method.name=invclr", "method.gp_weight=0.5", "method.gp_clip=1000", *fast)
    records = [json.loads(line) for line in (tmp_path / "invclr" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["gp"] > 0 and r["gp_clipped"] == 0 for r in records if "loss" in r)
    assert invclr[0] > simclr[0] and invclr != simclr


def test_penalty_pass_computes_batchnorm_with_the_composite_formula(monkeypatch):
    import contrastlab.models.batchnorm as batchnorm

    calls = []
    native = batchnorm.composite_batch_norm
    monkeypatch.setattr(batchnorm, "composite_batch_norm", lambda layer, x: calls.append(layer) or native(layer, x))
    method = make_invclr(gp_weight=1.0)
    method.gradient_penalty(tiny_spiro_step(n=8))
    layers = [m for m in method.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert layers and set(map(id, calls)) == set(map(id, layers))
