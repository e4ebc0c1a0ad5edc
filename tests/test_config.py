"""Recipes, overrides and validation messages."""

from pathlib import Path

import pytest
import torch

from contrastlab.core.config import Config, ConfigError
from contrastlab.recipes import load_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


IMAGE_KINDS = ("gray-small", "colour-small", "gray-large", "colour-large")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_recipe_loads_and_is_named_method_data_backbone(path):
    """``<method>-<dataset>-<backbone>``, or ``<method>-<data kind>-<backbone>`` for a recipe
    meant for every dataset of a kind, whose views then follow the data (preset ``auto``); a TU
    graph dataset is named by its folder."""
    cfg = load_config(path)
    dataset = Path(cfg.data.root).name.lower() if cfg.data.name == "tu" else cfg.data.name
    data = next((kind for kind in IMAGE_KINDS if path.stem.startswith(f"{cfg.method.name}-{kind}-")), dataset)
    assert path.stem.startswith(f"{cfg.method.name}-{data}-{cfg.backbone.name}")
    if data in IMAGE_KINDS and cfg.augment.views is None:
        assert cfg.augment.preset == "auto"


def test_defaults_without_a_file():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.method.name == "simclr" and cfg.method.temperature == 0.5


def test_overrides_are_typed():
    cfg = load_config(overrides=["train.epochs=3", "optim.lr=1e-3", "augment.crop_scale=[0.2, 1.0]",
                                 "backbone.options.width=0.5", "data.root=null", "method.temperature=0.2"])
    assert cfg.train.epochs == 3
    assert cfg.optim.lr == pytest.approx(1e-3)  # YAML 1.1 reads 1e-3 as a string: still a float here
    assert cfg.augment.crop_scale == (0.2, 1.0)
    assert cfg.backbone.options == {"width": 0.5}
    assert cfg.method.temperature == 0.2


def test_an_explicit_epoch_count_drops_the_recipes_min_samples(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train:\n  epochs: 4\n  min_samples: 1000\n")
    assert load_config(recipe).train.min_samples == 1000
    assert load_config(recipe, ["optim.lr=0.1"]).train.min_samples == 1000
    assert load_config(recipe, ["train.epochs=2"]).train.min_samples is None
    assert load_config(recipe, ["train.epochs=2", "train.min_samples=500"]).train.min_samples == 500
    assert load_config(overrides=["train.epochs=2"]).train.min_samples is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", "unknown key 'train.epoch' (did you mean 'epochs'?)"),
        ("trian.epochs=3", "unknown key 'trian' (did you mean 'train'?)"),
        ("train.epochs=three", "train.epochs: expected an integer, got 'three'"),
        ("train.epochs=2.5", "train.epochs: expected an integer"),
        ("train.channels_last=1", "train.channels_last: expected true or false"),
        ("optim.name=lasr", "optim.name: 'lasr' is not one of sgd, lars, adam, adamw (did you mean 'lars'?)"),
        ("augment.crop_scale=[0.2]", "augment.crop_scale: expected 2 values"),
        ("method.temprature=0.1", "unknown key 'method.temprature' (did you mean 'temperature'?)"),
        ("method.name=simclear", "method.name: unknown method 'simclear' (did you mean 'simclr'?)"),
        ("train", "must look like section.key=value"),
    ],
)
def test_bad_values_are_named(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert message in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(listing)


def test_one_validation_style_for_every_section_loaded_or_made_in_code():
    from contrastlab.core.config import ConfigError, OptimConfig, check_section, in_range
    from contrastlab.methods.moco import MoCo, MoCoConfig

    assert in_range(0.5, "in [0, 1)") and not in_range(1.0, "in [0, 1)") and in_range(1.0, "in (0, 1]")
    assert not in_range(0.0, "> 0") and in_range(0.0, ">= 0") and in_range(-2, "< -1") and not in_range(3, "<= 2")
    with pytest.raises(ValueError, match="malformed range rule"):
        in_range(1, "positive")
    # ranges of a base class (ContrastiveConfig.temperature) hold in its subclasses
    for override, message in [("method.temperature=0", r"method.temperature must be > 0, got 0.0"),
                              ("method.queue_size=0", r"method.queue_size must be >= 1, got 0"),
                              ("optim.momentum=1.0", r"optim.momentum must be in \[0, 1\), got 1.0"),
                              ("optim.betas=[0.9, 1.5]", r"optim.betas must be in \[0, 1\), got \(0.9, 1.5\)"),
                              ("eval.robustness=[]", r"eval.robustness must list at least one strength")]:
        with pytest.raises(ConfigError, match=message):
            load_config(overrides=["method.name=moco", override])
    with pytest.raises(ConfigError, match=r"method.temperature must be > 0, got -1"):
        MoCo(MoCoConfig(name="moco", temperature=-1), torch.nn.Identity())
    with pytest.raises(ConfigError, match=r"optim.lr: expected a number, got 'fast'"):
        check_section(OptimConfig(lr="fast"), "optim")
    check_section(OptimConfig(grad_clip=None), "optim")  # unset optional fields are not range-checked
