"""Recipes: a YAML file plus ``a.b=value`` overrides -> a validated :class:`Config`.

The layer above the methods, because a recipe's method section is validated by the config
class of the method it names, which only the method registry knows.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from contrastlab.core.config import Config, ConfigError, MethodConfig, apply_override, config_from_dict, read_recipe
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
    return _checked(read_recipe(path, overrides))


def config_from(source: str | Path | Config | Mapping[str, Any] | None = None, overrides: Sequence[str] = ()) -> Config:
    """A validated :class:`Config` from a recipe file (a path), a :class:`Config`, a nested
    mapping of sections (``{"method": {"name": "byol"}, "train": {"epochs": 5}}``) or ``None``
    (the defaults), with the ``a.b=value`` overrides applied; every source is validated alike."""
    if source is None or isinstance(source, (str, Path)):
        return load_config(source, overrides)
    if isinstance(source, Config):
        source = source.to_dict()
    if not isinstance(source, Mapping):
        raise ConfigError(f"config: expected a recipe path, a Config or a mapping of sections, "
                          f"got {type(source).__name__}")
    raw = copy.deepcopy(dict(source))
    for item in overrides:
        apply_override(raw, item)
    return _checked(raw)


def _checked(raw: dict[str, Any]) -> Config:
    cfg = config_from_dict(raw, method_configs())
    check_augment(cfg.augment)
    encoder_prefix(cfg.method, cfg.eval.encoder)
    return cfg
