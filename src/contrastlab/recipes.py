"""Recipes: a YAML file plus ``a.b=value`` overrides -> a validated :class:`Config`.

The layer above the methods, because a recipe's method section is validated by the config
class of the method it names, which only the method registry knows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from contrastlab.core.config import Config, MethodConfig, config_from_dict, read_recipe
from contrastlab.data.view_config import check_augment
from contrastlab.methods import METHODS
from contrastlab.methods.registry import encoder_prefix


def method_configs() -> dict[str, type[MethodConfig]]:
    """Each registered method's name -> its config class."""
    return {name: METHODS.get(name).Config for name in METHODS.names()}


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML recipe (or start from the defaults), apply ``a.b=value`` overrides, validate
    (the views against the transform table: :func:`check_augment`; ``eval.encoder`` against the
    method's encoders)."""
    cfg = config_from_dict(read_recipe(path, overrides), method_configs())
    check_augment(cfg.augment)
    encoder_prefix(cfg.method.name, cfg.eval.encoder)
    return cfg
