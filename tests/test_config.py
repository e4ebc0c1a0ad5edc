"""Recipes, overrides and validation messages."""

from pathlib import Path

import pytest

from contrastlab.core.config import Config, ConfigError
from contrastlab.recipes import load_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_recipe_loads_and_is_named_method_dataset_backbone(path):
    cfg = load_config(path)
    assert path.stem.startswith(f"{cfg.method.name}-{cfg.data.name}-{cfg.backbone.name}")


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
