"""N views from config: pipelines per view, reproducibility, validation, the count check,
crop at decode, project_views on several shapes, multi-crop SimCLR and one-way BYOL."""

import dataclasses

import pytest
import torch
import yaml

from contrastlab.core.config import ConfigError, ViewConfig
from contrastlab.recipes import load_config
from contrastlab.data import augment as aug
from contrastlab.data.base import ImageData
from contrastlab.data.preprocess import Normalize
from contrastlab.data.spirograph import SpirographViews
from contrastlab.engine.setup import RunData, make_views
from contrastlab.losses import byol_loss, nt_xent
from contrastlab.methods.base import StepInput
from contrastlab.methods.byol import BYOL, BYOLConfig
from contrastlab.methods.simclr import SimCLR, SimCLRConfig
from contrastlab.models import build_backbone

NORMALIZE = Normalize([0.4, 0.5, 0.6], [0.2, 0.25, 0.3])
CROP = "{name: crop, scale: [0.3, 1.0]}"
MULTICROP = (
    "augment.views=["
    f"{{count: 2, size: 12, transforms: [{CROP}, {{name: jitter, brightness: 0.4, contrast: 0.4, saturation: 0.2, "
    "hue: 0.1, prob: 0.8}, {name: gray, prob: 0.2}, {name: blur, prob: 1.0}]},"
    f"{{count: 3, size: 6, transforms: [{CROP}, {{name: solarize, prob: 0.5}}]}}]"
)


def run_data(n=8, channels=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    data = ImageData("toy", images)
    normalize = NORMALIZE if channels == 3 else Normalize([0.5], [0.2])
    return RunData(data, data, data, normalize)


def batch_of(data):
    return data.train.get_batch(torch.arange(len(data.train)))


def views_of(cfg, data, seed):
    pipelines = make_views(cfg, data)
    g = torch.Generator().manual_seed(seed)
    batch = batch_of(data)
    return [p(batch, g) for p in pipelines]


# ---------------------------------------------------------------- N views from config


def test_multicrop_views_have_their_count_size_and_transforms():
    cfg = load_config(overrides=[MULTICROP])
    pipelines = make_views(cfg, run_data())
    assert len(pipelines) == 5
    assert [[t.name for t in p.transforms] for p in pipelines] == (
        [["crop", "jitter", "gray", "blur"]] * 2 + [["crop", "solarize"]] * 3
    )
    assert len({id(p) for p in pipelines}) == 5  # one pipeline object per view
    shapes = [tuple(v.shape) for v in views_of(cfg, run_data(), seed=0)]
    assert shapes == [(8, 3, 12, 12)] * 2 + [(8, 3, 6, 6)] * 3
    crop = pipelines[3].transforms[0]
    assert (crop.size, crop.scale, crop.flip_prob) == (6, (0.3, 1.0), 0.5)


def test_views_are_reproducible_for_a_seed_and_differ_across_seeds_and_views():
    cfg, data = load_config(overrides=[MULTICROP]), run_data()
    first = views_of(cfg, data, seed=3)
    for a, b in zip(first, views_of(cfg, data, seed=3)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(first, views_of(cfg, data, seed=4)):
        assert not torch.allclose(a, b)
    assert not torch.allclose(first[0], first[1]) and not torch.allclose(first[2], first[3])


def test_a_view_without_a_crop_keeps_the_input_size():
    cfg = load_config(overrides=["augment.views=[{count: 2, transforms: [{name: gray, prob: 1.0}]}]"])
    assert [tuple(v.shape) for v in views_of(cfg, run_data(), seed=0)] == [(8, 3, 16, 16)] * 2


def test_flip_prob_switches_the_preset_flip_off():
    data = run_data()
    on = make_views(load_config(overrides=["augment.preset=crop-only"]), data)[0]
    off = make_views(load_config(overrides=["augment.preset=crop-only", "augment.flip_prob=0"]), data)[0]
    assert on.transforms[0].flip_prob == 0.5 and off.transforms[0].flip_prob == 0.0
    flips = off.sample(batch_of(data), torch.Generator().manual_seed(0))["crop"]["flip"]
    assert flips.sum() == 0
    assert on.sample(batch_of(data), torch.Generator().manual_seed(0))["crop"]["flip"].sum() > 0


@pytest.mark.parametrize("channels, size, kind", [(1, 8, "gray-small"), (1, 28, "gray-small"), (3, 32, "colour-small"),
                                                  (3, 64, "colour-small"), (3, 96, "colour-large"), (1, 128, "gray-large")])
def test_auto_preset_is_the_preset_of_the_data_kind(channels, size, kind):
    data = run_data(channels=channels, size=size)
    assert data.train.kind == kind and data.train.subset(torch.arange(2)).kind == kind
    auto = make_views(load_config(), data)
    named = make_views(load_config(overrides=[f"augment.preset={kind}"]), data)
    assert [[vars(t) for t in p.transforms] for p in auto] == [[vars(t) for t in p.transforms] for p in named]
    preset = aug.PRESETS[kind]
    crop = auto[0].transforms[0]
    assert (crop.scale, crop.flip_prob) == (preset.crop_scale, preset.flip_prob)
    assert ("gray" in [t.name for t in auto[0].transforms]) == (channels == 3)


def test_gray_small_preset_has_no_flip_and_no_colour_ops_unless_asked():
    data = run_data(channels=1, size=28)
    view = make_views(load_config(), data)[0]
    assert [t.name for t in view.transforms] == ["crop", "jitter", "blur"]
    assert view.transforms[0].flip_prob == 0.0
    assert view.sample(batch_of(data), torch.Generator().manual_seed(0))["crop"]["flip"].sum() == 0
    asked = make_views(load_config(overrides=["augment.flip_prob=0.5", "augment.crop_scale=[0.2, 1.0]"]), data)[0]
    assert (asked.transforms[0].flip_prob, asked.transforms[0].scale) == (0.5, (0.2, 1.0))


def test_auto_preset_of_a_kind_without_one_names_the_kind():
    data = run_data()
    data.train.kind = "point-clouds"
    with pytest.raises(ConfigError, match="no preset for data kind 'point-clouds'; set augment.preset"):
        make_views(load_config(), data)


def test_views_round_trip_through_the_saved_config():
    cfg = load_config(overrides=[MULTICROP])
    again = load_config(overrides=[f"augment.views={yaml.safe_dump(cfg.to_dict()['augment']['views'], default_flow_style=True)}"])
    assert again.augment.views == cfg.augment.views
    assert cfg.augment.views[0].transforms[0] == {"name": "crop", "scale": (0.3, 1.0)}


def test_spirograph_views_from_config():
    from contrastlab.data.spirograph import load

    train = load("train", size=8)
    data = RunData(train, train, train, Normalize([0.3] * 3, [0.2] * 3))
    pipelines = make_views(load_config(overrides=["augment.views=[{count: 3, kind: spirograph}]"]), data)
    assert len(pipelines) == 3 and all(isinstance(p, SpirographViews) for p in pipelines)
    preset = make_views(load_config(overrides=["augment.preset=spirograph"]), data)
    assert len(preset) == 2 and all(isinstance(p, SpirographViews) for p in preset)
    assert all(isinstance(p, SpirographViews) for p in make_views(load_config(), data))  # auto: its kind
    with pytest.raises(ConfigError, match=r"augment.views: views\[0\]: spirograph views render 3 x 32 x 32"):
        make_views(load_config(overrides=["augment.views=[{count: 2, kind: spirograph}]"]), run_data())


# ---------------------------------------------------------------- validation at load time


@pytest.mark.parametrize(
    "override, message",
    [
        ("augment.views=[{count: 2, transforms: [{name: crop}, {name: gray, prob: 1.5}]}]",
         r"augment.views\[0\].transforms\[1\].prob: grayscale probability must be a probability in \[0, 1\], got 1.5"),
        ("augment.views=[{count: 2}, {count: 1, transforms: [{name: crop, scale: [0.5, 1.2]}]}]",
         r"augment.views\[1\].transforms\[0\].scale: crop scale must lie in \(0, 1\]"),
        ("augment.views=[{transforms: [{name: blur, prob: 0.5, kernel_size: 4}]}]",
         r"augment.views\[0\].transforms\[0\].kernel_size: blur kernel_size must be a positive odd integer, got 4"),
        ("augment.views=[{transforms: [{name: jitter, brightness: -1, contrast: 0, saturation: 0, hue: 0}]}]",
         r"augment.views\[0\].transforms\[0\].brightness: jitter brightness magnitude must be >= 0, got -1.0"),
        ("augment.views=[{transforms: [{name: grey, prob: 1}]}]",
         r"augment.views\[0\].transforms\[0\].name: unknown transform 'grey' \(did you mean 'gray'\?\)"),
        ("augment.views=[{transforms: [{name: gray, probability: 1}]}]",
         r"unknown key 'augment.views\[0\].transforms\[0\].probability' \(did you mean 'prob'\?\); transform 'gray' takes: prob"),
        ("augment.views=[{transforms: [{name: gray}]}]", r"augment.views\[0\].transforms\[0\]: transform 'gray' needs prob"),
        ("augment.views=[{transforms: [{name: crop, scale: [0.2]}]}]", r"augment.views\[0\].transforms\[0\].scale: expected 2 values"),
        ("augment.views=[{transforms: [{name: crop, flip_prob: yes}]}]", r"augment.views\[0\].transforms\[0\].flip_prob: expected a number"),
        ("augment.views=[{size: 8, transforms: [{name: crop, size: 8}]}]",
         r"augment.views\[0\].transforms\[0\].size: set by the view \(augment.views\[0\].size\)"),
        ("augment.views=[{transforms: [{name: crop}, {name: crop}]}]", r"augment.views\[0\].transforms\[1\]: transform 'crop' appears twice"),
        ("augment.views=[{size: 8, transforms: [{name: gray, prob: 1}]}]", r"augment.views\[0\].size=8 needs a 'crop' transform"),
        ("augment.views=[{count: 0}]", r"augment.views\[0\].count must be >= 1"),
        ("augment.views=[{count: 1, size: 0, transforms: [{name: crop}]}]", r"augment.views\[0\].size must be >= 1"),
        ("augment.views=[{kind: spiro}]", r"augment.views\[0\].kind: unknown view kind 'spiro' \(did you mean 'spirograph'\?\)"),
        ("augment.views=[{kind: spirograph, transforms: [{name: crop}]}]",
         r"augment.views\[0\].transforms: views of kind 'spirograph' take no transforms"),
        ("augment.views=[{counts: 2}]", r"unknown key 'augment.views\[0\].counts' \(did you mean 'count'\?\)"),
        ("augment.views=[]", r"augment.views must list at least one view"),
        ("augment.flip_prob=1.5", r"augment.flip_prob must be in \[0, 1\], got 1.5"),
        ("augment.blur_prob=[0.5, -0.1]", r"augment.blur_prob must be in \[0, 1\], got \(0.5, -0.1\)"),
        ("augment.crop_scale=[0.5, 0.2]", r"augment.crop_scale must be \(low, high\) with low <= high"),
        ("augment.crop_scale=[0.0, 0.2]", r"augment.crop_scale must be in \(0, 1\], got \(0.0, 0.2\)"),
        ("augment.jitter_strength=-1", r"augment.jitter_strength must be >= 0"),
        ("augment.preset=simclr", r"augment.preset: unknown preset 'simclr' \(did you mean 'simclr-cifar'\?\)"),
    ],
)
def test_bad_views_are_rejected_at_load_with_the_dotted_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


# ---------------------------------------------------------------- methods: defaults and counts


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["method.name=byol", MULTICROP], r"augment.views: method 'byol' takes exactly 2 views, got 5 \(counts \[2, 3\]\)"),
        (["method.name=simclr", "augment.views=[{count: 1, transforms: [{name: crop}]}]"],
         r"augment.views: method 'simclr' takes at least 2 views, got 1"),
        (["method.name=simclr", "method.num_global=3"], r"augment.views: method 'simclr' takes at least 3 views, got 2"),
        (["method.name=byol", "augment.views=[{count: 1, size: 12, transforms: [{name: crop}]}, "
          "{count: 1, size: 8, transforms: [{name: crop}]}]"],
         r"augment.views: method 'byol' takes views of one size, got sizes \[12, 8\]"),
        (["method.name=moco", "augment.views=[{count: 1, size: 12, transforms: [{name: crop}]}, "
          "{count: 1, transforms: [{name: crop}]}]"],
         r"augment.views: method 'moco' takes views of one size, got sizes \[12, 16\]"),
    ],
)
def test_make_views_checks_the_number_of_views_the_method_takes(overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_views(load_config(overrides=overrides), run_data())


def test_simclr_takes_any_number_of_views_from_two():
    assert len(make_views(load_config(overrides=["method.name=simclr", MULTICROP]), run_data())) == 5


def test_default_views_are_the_preset_pair_unless_the_method_declares_its_own(monkeypatch):
    cfg = load_config(overrides=["augment.preset=byol", "augment.size=12"])
    default = SimCLR.default_views(cfg.augment)
    assert [dataclasses.asdict(v) for v in default] == aug.preset_views("byol", size=12)
    own = [ViewConfig(count=3, size=6, transforms=({"name": "crop"},))]
    monkeypatch.setattr(SimCLR, "default_views", classmethod(lambda cls, augment: own))
    pipelines = make_views(cfg, run_data())
    assert len(pipelines) == 3 and all(p.transforms[0].size == 6 for p in pipelines)
    monkeypatch.setattr(SimCLR, "default_views", classmethod(lambda cls, augment: [ViewConfig(count=0)]))
    with pytest.raises(ConfigError, match=r"augment.preset \('byol', the default views of method 'simclr'\)\[0\].count"):
        make_views(cfg, run_data())


# ---------------------------------------------------------------- crop at decode


def test_crop_at_decode_equals_the_remaining_transforms_on_precropped_inputs():
    cfg = load_config(overrides=[MULTICROP])
    full = make_views(cfg, run_data())
    decoded = [p.crop_at_decode(slot) for slot, p in enumerate(full)]
    crop = decoded[3].decode_crop
    assert crop is full[3].transforms[0] and (crop.size, crop.scale, crop.flip_prob) == (6, (0.3, 1.0), 0.5)
    assert [[t.name for t in p.transforms] for p in decoded] == [["jitter", "gray", "blur"]] * 2 + [["solarize"]] * 3
    g = torch.Generator().manual_seed(0)
    crops = [torch.randint(0, 256, (4, 3, p.decode_crop.size, p.decode_crop.size), generator=g, dtype=torch.uint8)
             for p in decoded]
    batch = {"inputs": crops, "index": torch.arange(4)}
    for slot, (whole, part) in enumerate(zip(full, decoded)):
        params = part.sample(batch, torch.Generator().manual_seed(slot))
        assert "crop" not in params
        x = crops[slot].float() / 255
        for t in whole.transforms[1:]:
            x = t.apply(x, params[t.name])
        torch.testing.assert_close(part.apply(batch, params), NORMALIZE(x), rtol=0, atol=0)
        # the full pipeline with the identity crop on the same crops gives the same view
        identity = {"center": torch.zeros(4, 2), "size": torch.ones(4, 2), "flip": torch.zeros(4)}
        torch.testing.assert_close(whole.apply({"inputs": crops[slot]}, {"crop": identity, **params}),
                                   part.apply(batch, params), rtol=1e-5, atol=1e-5)


def test_crop_at_decode_rejects_what_it_cannot_serve():
    no_crop = aug.ViewPipeline([aug.RandomGrayscale(0.5)], NORMALIZE)
    with pytest.raises(ValueError, match=r"must start with a 'crop' transform, got \['gray'\]"):
        no_crop.crop_at_decode(0)
    view = make_views(load_config(overrides=[MULTICROP]), run_data())[3].crop_at_decode(1)
    with pytest.raises(ValueError, match="already reads decode-time crops"):
        view.crop_at_decode(1)
    with pytest.raises(ValueError, match=r"batch\['inputs'\]\[1\] must hold 6-pixel crops"):
        view.sample({"inputs": [torch.zeros(2, 3, 6, 6, dtype=torch.uint8)] + [torch.zeros(2, 3, 8, 8, dtype=torch.uint8)]},
                    torch.Generator())
    with pytest.raises(ValueError, match=r"list of per-view crops with slot 1, got Tensor"):
        view.sample({"inputs": torch.zeros(2, 3, 6, 6, dtype=torch.uint8)}, torch.Generator())


# ---------------------------------------------------------------- project_views and multi-crop SimCLR


def simclr(**options):
    torch.manual_seed(0)
    cfg = SimCLRConfig(proj_hidden_dim=16, proj_out_dim=8, temperature=0.5, **options)
    return SimCLR(cfg, build_backbone("convnet", (3, 12, 12), channels=(4, 8)))


def crops(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 3, s, s, generator=g) for s in shapes]


def test_project_views_groups_views_by_shape_and_keeps_view_order():
    method = simclr()
    views = crops([12, 6, 12, 6, 8])
    features, projections = method.project_views(StepInput(views))
    h12 = method.backbone(torch.cat([views[0], views[2]]))
    h6 = method.backbone(torch.cat([views[1], views[3]]))
    h8 = method.backbone(views[4])
    expected = [h12[:6], h6[:6], h12[6:], h6[6:], h8]
    for k, (h, z) in enumerate(zip(features, projections)):
        torch.testing.assert_close(h, expected[k], rtol=0, atol=0)
        group = {12: h12, 6: h6, 8: h8}[views[k].shape[-1]]
        z_group = method.projector(group)
        torch.testing.assert_close(z, z_group[:6] if k in (0, 1, 4) else z_group[6:], rtol=0, atol=0)


def test_two_view_simclr_loss_is_exactly_the_single_nt_xent():
    for pairs in ("ordered", "unordered"):
        method = simclr(pairs=pairs)
        views = crops([12, 12])
        out = method.training_step(StepInput(views))
        h = method.backbone(torch.cat(views))
        z1, z2 = method.projector(h).chunk(2)
        expected = nt_xent(z1, z2, 0.5)
        assert torch.equal(out["loss"], expected) and torch.equal(out["features"], h[:6])
        grads = torch.autograd.grad(out["loss"], list(method.parameters()))
        for got, want in zip(grads, torch.autograd.grad(expected, list(method.parameters()))):
            assert torch.equal(got, want)


@pytest.mark.parametrize("num_global, pairs", [(2, "ordered"), (2, "unordered"), (1, "ordered"), (3, "unordered")])
def test_multicrop_simclr_loss_matches_a_loop_over_global_view_pairs(num_global, pairs):
    method = simclr(num_global=num_global, pairs=pairs)
    views = crops([12, 12, 12, 6, 6])
    out = method.training_step(StepInput(views))
    _, z = method.project_views(StepInput(views))
    terms = []
    for g in range(num_global):
        for v in range(len(views)):
            if v == g or (pairs == "unordered" and v < num_global and v < g):
                continue  # unordered: a pair of two global views counts once
            terms.append(nt_xent(z[g], z[v], 0.5))
    torch.testing.assert_close(out["loss"], torch.stack(terms).mean())


def test_simclr_needs_num_global_views():
    with pytest.raises(ValueError, match="num_global=3 needs at least 3 views, got 2"):
        simclr(num_global=3).training_step(StepInput(crops([12, 12])))
    with pytest.raises(ValueError, match="method.num_global must be >= 1"):
        simclr(num_global=0)


# ---------------------------------------------------------------- one-way BYOL (weak teacher, strong student)


def test_one_way_byol_predicts_the_teachers_weak_view_from_the_strong_view():
    torch.manual_seed(0)
    cfg = BYOLConfig(proj_hidden_dim=16, proj_out_dim=8, pred_hidden_dim=16, symmetric=False)
    method = BYOL(cfg, build_backbone("convnet", (3, 12, 12), channels=(4, 8)))
    weak, strong = crops([12, 12])
    out = method.training_step(StepInput([weak, strong]))
    h = method.backbone(strong)
    expected = byol_loss(method.predictor(method.projector(h)), method.teacher(weak))
    torch.testing.assert_close(out["loss"], expected, rtol=0, atol=0)
    torch.testing.assert_close(out["features"], h, rtol=0, atol=0)


# ---------------------------------------------------------------- training with N views (through the trainer)


@pytest.mark.parametrize("overrides", [
    ["method.name=simclr", "augment.views=[{count: 2, transforms: [{name: crop, scale: [0.5, 1.0], flip_prob: 0}]},"
     " {count: 2, size: 4, transforms: [{name: crop, scale: [0.2, 0.5], flip_prob: 0}]}]"],
    ["method.name=byol", "method.pred_hidden_dim=32", "method.symmetric=false",
     "augment.views=[{transforms: [{name: crop, scale: [0.8, 1.0]}]},"
     " {transforms: [{name: crop, scale: [0.2, 1.0]}, {name: blur, prob: 0.5}, {name: solarize, prob: 0.2}]}]"],
], ids=["multicrop", "weak_strong"])
def test_views_from_config_train_and_resume_exactly(tmp_path, monkeypatch, overrides):
    from contrastlab.engine import checkpoint as ckpt
    from contrastlab.engine.distributed import init_distributed
    from contrastlab.engine.trainer import Trainer
    from test_trainer import interrupted_run, losses, tiny_config

    cfg = tiny_config("train.epochs=2", "train.max_steps_per_epoch=2", *overrides)
    env = init_distributed("cpu")
    Trainer(cfg, tmp_path / "whole", env).fit()
    resumed = interrupted_run(cfg, tmp_path / "split", env, monkeypatch, crash_epoch=1, reload_config=True)
    assert resumed.cfg.augment.views == cfg.augment.views
    whole, split = losses(tmp_path / "whole"), losses(tmp_path / "split")
    assert len(whole) == 4 and whole == split
    a, b = ckpt.load_checkpoint(tmp_path / "whole")["method"], ckpt.load_checkpoint(tmp_path / "split")["method"]
    assert all(torch.equal(a[k], b[k]) for k in a)
