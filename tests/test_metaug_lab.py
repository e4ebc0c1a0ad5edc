"""MetAug-Lab: sRGB -> Lab against a per-pixel loop, the Lab normalisation and its config, the
half AlexNet and the Lab channel split, bank scores and bank updates against loops, the whole
objective against a loop reference with the official script's MI inputs, the shared-gradient
surrogate loss, the meta-gradient against finite differences (float64, smooth encoders), the
trainer filling method.bank_size, and config errors."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from contrastlab.core.config import ConfigError, MethodConfig
from contrastlab.data.preprocess import LAB_MEAN, LAB_STD, LabNormalize, rgb_to_lab
from contrastlab.engine.distributed import init_distributed
from contrastlab.engine.setup import fit_train_sized_fields, load_data, make_method
from contrastlab.engine.trainer import Trainer
from contrastlab.losses import margin_injection, oucl
from contrastlab.methods.base import StepInput
from contrastlab.methods.metaug_lab import MetAugLab, MetAugLabConfig, bank_scores
from contrastlab.models import build_backbone
from contrastlab.models.backbones import ALEXNET_HALF_MIN_SIZE, LabSplit
from contrastlab.recipes import load_config
from test_trainer import METHOD_OVERRIDES, tiny_config

VIEW = {"l": 0, "ab": 1, "ori": 2}
PAIR_NAMES = ("ab2l", "l2ab", "ori2l", "l2ori", "ab2ori", "ori2ab")  # anchor view 2 bank view
# What the official script hands its margin-injection regulariser (call: generated view).
MI_GENERATED = [("l", "ab2l"), ("l", "l2ab"), ("l", "ori2l"), ("l", "l2ori"),
                ("ab", "ab2l"), ("ab", "l2ab"), ("ab", "ab2ori"), ("ab", "ori2ab"),
                ("ori", "ori2l"), ("ori", "l2ori"), ("ori", "ab2ori"), ("ori", "ori2ab")]
MI_ORIGINAL = [("ori", "ab2l"), ("ori", "l2ab"), ("ab", "ori2l"), ("ab", "l2ori"), ("l", "ab2ori"), ("l", "ori2ab")]
CALLS = ("orig", "l", "ab", "ori", "all")  # contrast calls in the order negatives are drawn
EPS = 1e-6


# ---------------------------------------------------------------------------------- Lab
def lab_of_pixel(r, g, b):
    """CIE Lab of one sRGB pixel, straight from the formulas."""
    def linear(c):
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    def f(t):
        return t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29

    r, g, b = linear(r), linear(g), linear(b)
    x = (0.4124564 * r + 0.3575761 * g + 0.1804375 * b) / 0.95047
    y = 0.2126729 * r + 0.7151522 * g + 0.0721750 * b
    z = (0.0193339 * r + 0.1191920 * g + 0.9503041 * b) / 1.08883
    return 116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z))


def test_rgb_to_lab_matches_a_per_pixel_loop_and_known_colours():
    rgb = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rgb[0, :, 0] *= 0.03  # dark pixels: the linear branches of the companding and of f
    lab = rgb_to_lab(rgb)
    expected = torch.tensor([[[lab_of_pixel(*rgb[n, :, i, j].tolist()) for j in range(5)] for i in range(4)]
                             for n in range(2)], dtype=torch.float64).permute(0, 3, 1, 2)
    torch.testing.assert_close(lab, expected, rtol=0, atol=1e-10)
    colours = torch.tensor([[1.0, 1, 1], [0, 0, 0], [1, 0, 0]], dtype=torch.float64).view(3, 3, 1, 1)
    known = torch.tensor([[100.0, 0, 0], [0, 0, 0], [53.24, 80.09, 67.20]], dtype=torch.float64).view(3, 3, 1, 1)
    torch.testing.assert_close(rgb_to_lab(colours), known, rtol=0, atol=0.01)


def test_rgb_to_lab_gradients_are_those_of_the_formula_even_at_black_and_white():
    rgb = torch.rand(1, 3, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.autograd.gradcheck(rgb_to_lab, (rgb.requires_grad_(),))
    extremes = torch.tensor([0.0, 1.0], dtype=torch.float64).view(1, 1, 1, 2).expand(1, 3, 1, 2).clone()
    extremes.requires_grad_(True)
    rgb_to_lab(extremes).sum().backward()
    assert torch.isfinite(extremes.grad).all()


def test_lab_normalize_takes_uint8_or_unit_floats_and_standardises_lab():
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    normalize = LabNormalize()
    from_uint8 = normalize(images)
    assert from_uint8.shape == (2, 3, 4, 4) and from_uint8.dtype == torch.float32
    torch.testing.assert_close(normalize(images.double() / 255).float(), from_uint8)
    mean, std = torch.tensor(LAB_MEAN).view(3, 1, 1), torch.tensor(LAB_STD).view(3, 1, 1)
    torch.testing.assert_close(from_uint8, (rgb_to_lab(images.float() / 255) - mean) / std)
    with pytest.raises(ValueError, match="RGB"):
        normalize(images[:, :1])


def test_color_space_lab_normalises_training_and_evaluation_and_needs_rgb():
    rgb = ["data.name=spirograph", "data.train_size=32", "data.test_size=16"]
    assert isinstance(load_data(tiny_config(*rgb, "data.color_space=lab")).normalize, LabNormalize)
    assert not isinstance(load_data(tiny_config(*rgb)).normalize, LabNormalize)
    with pytest.raises(ConfigError, match=r"data.color_space='lab' needs RGB .* have 1 channel"):
        load_data(tiny_config("data.color_space=lab"))  # digits: grayscale
    with pytest.raises(ConfigError, match="data.color_space: 'hsv' is not one of rgb, lab"):
        tiny_config("data.color_space=hsv")


# ---------------------------------------------------------------------------------- backbones
def test_alexnet_half_takes_224_crops_and_names_the_minimum_size():
    torch.manual_seed(0)
    model = build_backbone("alexnet_half", (2, 224, 224), fc6_width=16)
    assert model.out_dim == 16 and model.fc6[0].in_features == 128 * 6 * 6
    assert all(conv.bias is None for conv in model.modules() if isinstance(conv, nn.Conv2d))
    assert model(torch.randn(2, 2, 224, 224)).shape == (2, 16)
    assert ALEXNET_HALF_MIN_SIZE == 63
    small = build_backbone("alexnet_half", (1, 63, 63), fc6_width=8)
    with pytest.raises(ValueError, match="at least 63x63 pixels"):
        build_backbone("alexnet_half", (1, 62, 62))
    with pytest.raises(ValueError, match="built for 63x63 inputs .*got 32x32"):
        small(torch.randn(2, 1, 32, 32))
    resized = build_backbone("alexnet_half", (1, 63, 63), fc6_width=8, resize_input=True)
    assert resized(torch.randn(2, 1, 32, 32)).shape == (2, 8)
    with pytest.raises(ValueError, match="fc6_width"):
        build_backbone("alexnet_half", (1, 63, 63), fc6_width=0)


def test_lab_split_runs_one_encoder_per_channel_view_and_concatenates():
    torch.manual_seed(0)
    model = build_backbone("lab_split", (3, 8, 8), encoder="convnet", encoder_options={"channels": [4, 6]})
    assert [e.features[0].in_channels for e in model.encoders] == [1, 2, 3]
    assert model.out_dim == 18 and model.view_dims == (6, 6, 6)
    x = torch.randn(4, 3, 8, 8)
    l, ab, ori = model.split(x)
    assert torch.equal(l, x[:, :1]) and torch.equal(ab, x[:, 1:]) and torch.equal(ori, x)
    expected = torch.cat([model.encoders[0](x[:, :1]), model.encoders[1](x[:, 1:]), model.encoders[2](x)], 1)
    torch.testing.assert_close(model(x), expected)
    with pytest.raises(ValueError, match="3-channel .* got 1 channel"):
        build_backbone("lab_split", (1, 8, 8))
    with pytest.raises(ValueError, match="lab_split's L encoder: .*at least 63x63"):
        build_backbone("lab_split", (3, 32, 32))
    with pytest.raises(ValueError, match="encoder_options"):
        build_backbone("lab_split", (3, 8, 8), encoder="convnet", encoder_options=[4])


# ---------------------------------------------------------------------------------- scores and banks
def loop_pair_scores(anchors, banks, index, negatives):
    """{"ab2l": (B, K+1), ...}: slot 0 the anchor's own bank row, then its negatives, one dot at a time."""
    scores = {}
    for name in PAIR_NAMES:
        u, w = (VIEW[v] for v in name.split("2"))
        scores[name] = torch.stack([
            torch.stack([anchors[u][i] @ banks[w, j] for j in [int(index[i]), *negatives[i].tolist()]])
            for i in range(len(index))
        ])
    return scores


def test_bank_scores_match_a_loop_with_the_positive_first_and_shared_negatives():
    g = torch.Generator().manual_seed(3)
    anchors = [F.normalize(torch.randn(4, 5, generator=g, dtype=torch.float64), dim=1) for _ in range(3)]
    banks = torch.randn(3, 9, 5, generator=g, dtype=torch.float64)
    index, negatives = torch.tensor([8, 0, 3, 3]), torch.randint(9, (4, 6), generator=g)
    expected = loop_pair_scores(anchors, banks, index, negatives)
    got = bank_scores(anchors, banks, index, negatives)
    assert len(got) == 6
    for name, scores in zip(PAIR_NAMES, got):
        torch.testing.assert_close(scores, expected[name], rtol=0, atol=1e-12, msg=name)


def tiny_method(**fields) -> MetAugLab:
    torch.manual_seed(0)
    backbone = build_backbone("lab_split", (3, 8, 8), encoder="convnet", encoder_options={"channels": [4, 8]})
    settings = dict(name="metaug_lab", bank_size=12, num_negatives=5, proj_hidden_dim=8, proj_out_dim=4,
                    gen_hidden_dim=6, aug_weight=0.7, margin_weight=0.5, margin_positive_scale=0.3,
                    meta_order="none")
    return MetAugLab(MetAugLabConfig(**{**settings, **fields}), backbone).double().train()


def tiny_step(seed=4, index=(7, 2, 11, 0)):
    x = torch.randn(len(index), 3, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return StepInput([x, torch.zeros_like(x)], batch={"index": torch.tensor(index)},
                     generator=torch.Generator().manual_seed(seed))


def drawn_negatives(method, step):
    seed = step.generator.initial_seed()
    size = (len(CALLS), len(step.batch["index"]), method.cfg.num_negatives)
    return torch.randint(method.cfg.bank_size, size, generator=torch.Generator().manual_seed(seed))


def module_projections(method, x):
    views = (x[:, :1], x[:, 1:], x)
    return [F.normalize(method.projectors[v](method.backbone.encoders[v](views[v])), dim=1) for v in range(3)]


def test_banks_start_uniform_and_take_the_running_average_of_the_step_projections():
    method = tiny_method(bank_size=4000, proj_out_dim=12)
    bound = 1 / math.sqrt(12 / 3)
    assert method.banks.shape == (3, 4000, 12) and method.banks.abs().max() <= bound
    assert method.banks.pow(2).sum(-1).mean().item() == pytest.approx(1.0, abs=0.02)
    method = tiny_method(bank_momentum=0.25)
    step = tiny_step()
    z = [t.detach() for t in module_projections(copy.deepcopy(method), step.views[0])]
    before = method.banks.clone()
    method.training_step(step)
    index = step.batch["index"]
    for v in range(3):
        for row, i in enumerate(index.tolist()):
            expected = 0.25 * before[v, i] + 0.75 * z[v][row]
            torch.testing.assert_close(method.banks[v, i], expected / expected.norm())
    untouched = torch.ones(12, dtype=torch.bool)
    untouched[index] = False
    assert torch.equal(method.banks[:, untouched], before[:, untouched])


def reference_objective(method, step, banks):
    """L from module forwards, loop scores and the official script's score tensors by name."""
    cfg = method.cfg
    x, index = step.views[0], step.batch["index"]
    z = module_projections(method, x)
    g = [F.normalize(method.generators[v](z[v]), dim=1) for v in range(3)]
    anchors = {"orig": z, "l": [g[0], z[1], z[2]], "ab": [z[0], g[1], z[2]], "ori": [z[0], z[1], g[2]], "all": g}
    negatives = drawn_negatives(method, step)
    scores = {call: loop_pair_scores(anchors[call], banks, index, negatives[c]) for c, call in enumerate(CALLS)}

    def positives_negatives(entries):
        tensors = [scores[call][pair] for call, pair in entries]
        return torch.stack([t[:, 0] for t in tensors], 1), torch.cat([t[:, 1:] for t in tensors], 1)

    def contrast(call):
        return oucl(*positives_negatives([(call, pair) for pair in PAIR_NAMES]), cfg.gamma)

    base = contrast("orig")
    aug = sum(contrast(call) for call in CALLS[1:])
    margin = margin_injection(*positives_negatives(MI_ORIGINAL), *positives_negatives(MI_GENERATED),
                              cfg.margin, cfg.margin_positive_scale)
    return base, aug, margin, base + cfg.aug_weight * aug + cfg.margin_weight * margin


def test_objective_matches_a_loop_reference_with_the_official_margin_injection_inputs():
    method = tiny_method()
    step = tiny_step()
    reference = copy.deepcopy(method)
    out = method.training_step(step)
    base, aug, margin, total = reference_objective(reference, step, reference.banks)
    torch.testing.assert_close(out["loss_oucl"], base.detach())
    torch.testing.assert_close(out["loss_aug"], aug.detach())
    torch.testing.assert_close(out["loss_margin"], margin.detach())
    torch.testing.assert_close(out["loss"].detach(), total.detach())
    assert aug > 0 and margin > 0 and "gen_grad_norm" not in out
    features = reference.backbone(step.views[0]).detach()
    torch.testing.assert_close(out["features"], features)
    assert not out["features"].requires_grad and out["features"].shape == (4, 24)


@pytest.mark.parametrize("order, second_order", [("second", "jvp"), ("second", "unrolled"), ("none", "jvp")])
def test_surrogate_loss_hands_the_trainer_autograds_gradient_and_none_to_the_generators(order, second_order):
    method = tiny_method(meta_order=order, second_order=second_order)
    reference = copy.deepcopy(method)
    step = tiny_step()
    out = method.training_step(step)
    out["loss"].backward()
    loss = reference_objective(reference, step, reference.banks)[-1]
    theta = reference.encoder_parameters()
    expected = torch.autograd.grad(loss, list(theta.values()), allow_unused=True)
    torch.testing.assert_close(out["loss"].detach(), loss.detach())
    for (name, p), grad in zip(method.encoder_parameters().items(), expected):
        torch.testing.assert_close(p.grad, torch.zeros_like(p) if grad is None else grad, msg=name)
    assert all(p.grad is None for p in method.generators.parameters())
    assert set(theta) == {n for n, _ in reference.named_parameters() if n.split(".")[0] in ("backbone", "projectors")}


# ---------------------------------------------------------------------------------- meta-gradient
class TanhEncoder(nn.Module):
    """``(B, C, 2, 2) -> (B, 4)``: flatten, Linear, tanh, Linear (no kinks for finite differences)."""

    out_dim = 4

    def __init__(self, channels):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(channels * 4, 5), nn.Tanh(), nn.Linear(5, 4))

    def forward(self, x):
        return self.net(x)


INNER_LR = 0.5  # large, so the second-order term is a sizeable part of the meta-gradient


def smooth_method(**fields) -> MetAugLab:
    torch.manual_seed(0)
    settings = dict(name="metaug_lab", bank_size=10, num_negatives=3, proj_hidden_dim=6, proj_out_dim=3,
                    gen_hidden_dim=5, aug_weight=0.7, margin_weight=0.5, margin_positive_scale=0.3,
                    inner_lr=INNER_LR, gen_lr=1.0, gen_momentum=0.0, gen_weight_decay=0.0)
    backbone = LabSplit([TanhEncoder(c) for c in (1, 2, 3)])
    return MetAugLab(MetAugLabConfig(**{**settings, **fields}), backbone).double().train()


def smooth_step():
    x = torch.randn(6, 3, 2, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    return StepInput([x, x], batch={"index": torch.tensor([7, 2, 9, 0, 4, 5])},
                     generator=torch.Generator().manual_seed(8))


def generator_vector(method):
    return parameters_to_vector(method.outer_parameters()).detach().clone()


def unrolled_objective(method, step, omega):
    """F(omega) = L(theta - inner_lr * dL/dtheta (theta; omega); omega), by hand on a copy."""
    clone = copy.deepcopy(method)
    vector_to_parameters(omega, clone.outer_parameters())
    theta = list(clone.encoder_parameters().values())
    views, index = clone.backbone.split(step.views[0]), step.batch["index"]
    negatives = drawn_negatives(clone, step)

    def loss():
        return clone.objective(views, index, negatives, clone.generator_parameters()).total

    grads = torch.autograd.grad(loss(), theta)
    with torch.no_grad():
        for p, grad in zip(theta, grads):
            p -= INNER_LR * grad
        return loss().item()


def meta_gradient_of_one_step(method, step):
    """The generators' meta-gradient, read off one generator step with lr 1, no momentum/decay."""
    before = generator_vector(method)
    method.training_step(step)
    return before - generator_vector(method)


def test_meta_gradient_matches_finite_differences_of_the_unrolled_objective():
    step = smooth_step()  # a fresh one per training step: its generator draws the negatives
    grads = {order: meta_gradient_of_one_step(smooth_method(meta_order=order), smooth_step())
             for order in ("second", "first")}
    unrolled = meta_gradient_of_one_step(smooth_method(second_order="unrolled"), smooth_step())
    torch.testing.assert_close(unrolled, grads["second"], rtol=1e-9, atol=1e-12)
    method = smooth_method()
    omega = generator_vector(method)
    directions = torch.randn(3, omega.numel(), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for direction in directions:
        expected = (unrolled_objective(method, step, omega + EPS * direction)
                    - unrolled_objective(method, step, omega - EPS * direction)) / (2 * EPS)
        assert float(grads["second"] @ direction) == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert (grads["second"] - grads["first"]).norm() > 0.01 * grads["second"].norm()


def test_banks_and_generator_momentum_are_in_the_state_dict():
    method = smooth_method(meta_order="first", gen_momentum=0.9)
    method.training_step(smooth_step())
    state = method.state_dict()
    assert state["_extra_state"].abs().sum() > 0 and torch.equal(state["banks"], method.banks)
    restored = smooth_method(meta_order="first", gen_momentum=0.9)
    restored.load_state_dict(state)
    assert torch.equal(restored.banks, method.banks) and int(restored.steps_done) == 1
    for p, q in zip(method.outer_parameters(), restored.outer_parameters()):
        torch.testing.assert_close(restored.generator_optimizer.state[q]["momentum_buffer"],
                                   method.generator_optimizer.state[p]["momentum_buffer"])


# ---------------------------------------------------------------------------------- trainer and config
def test_trainer_fills_bank_size_and_trains(tmp_path):
    cfg = tiny_config("train.epochs=1", "train.max_steps_per_epoch=2", *METHOD_OVERRIDES["metaug_lab"])
    assert cfg.method.bank_size is None
    trainer = Trainer(cfg, tmp_path, init_distributed("cpu"))
    method = trainer.method
    assert method.cfg.bank_size == 256 and method.banks.shape[1] == 256
    assert load_config(tmp_path / "config.yaml").method.bank_size == 256
    banks, generators = method.banks.clone(), generator_vector(method)
    trainer.fit()
    changed_rows = (method.banks != banks).any(dim=2).any(dim=0)
    assert int(changed_rows.sum()) == 2 * cfg.train.batch_size  # each visited image's row, no other
    assert not torch.equal(generator_vector(method), generators)
    records = [r for r in trainer.logger.records if "loss" in r]
    assert len(records) == 2 and all("gen_grad_norm" in r and math.isfinite(r["loss"]) for r in records)


def test_train_sized_fields_are_filled_and_checked():
    cfg = MetAugLabConfig(name="metaug_lab")
    fit_train_sized_fields(cfg, 300)
    assert cfg.bank_size == 300
    fit_train_sized_fields(cfg, 200)  # larger than needed: kept
    assert cfg.bank_size == 300
    with pytest.raises(ConfigError, match="method.bank_size=300 is smaller than the 500 training images"):
        fit_train_sized_fields(cfg, 500)
    plain = MethodConfig()
    fit_train_sized_fields(plain, 10)  # methods without such fields are left alone
    assert plain == MethodConfig()


@pytest.mark.parametrize("field, value", [("bank_size", 0), ("num_negatives", 0), ("num_negatives", 2.5),
                                          ("bank_momentum", 1.0), ("gamma", 0.0), ("meta_order", "finite_difference")])
def test_invalid_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"method.{field}( must be|: )"):
        tiny_method(**{field: value})


def test_wrong_backbone_missing_bank_size_and_out_of_range_indices_are_named():
    cfg = tiny_config(*METHOD_OVERRIDES["metaug_lab"], "backbone.name=convnet", "backbone.options={}")
    with pytest.raises(ValueError, match="needs backbone.name=lab_split"):
        make_method(cfg, (3, 8, 8), 12)
    assert make_method(tiny_config(*METHOD_OVERRIDES["metaug_lab"]), (3, 8, 8), 12).cfg.bank_size == 12
    with pytest.raises(ValueError, match="method.bank_size is null"):
        tiny_method(bank_size=None)
    with pytest.raises(ValueError, match=r"outside the memory banks' rows \[0, 12\): method.bank_size=12"):
        tiny_method().training_step(tiny_step(index=(3, 12, 0, 1)))
