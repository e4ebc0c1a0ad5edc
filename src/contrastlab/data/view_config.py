"""Load-time validation of the views of a recipe (``augment.preset`` and ``augment.views``)
against the transform table and view kinds of :mod:`contrastlab.data.augment`.

It lives in ``data`` because it needs that table; :func:`contrastlab.recipes.load_config`
calls :func:`check_augment` on every recipe it loads, and ``make_views`` re-checks views set in
code and a method's default views.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any

from contrastlab.core.config import AugmentConfig, ConfigError, ViewConfig, convert_value
from contrastlab.core.registry import suggest
from contrastlab.data.augment import AUTO_PRESET, PRESETS, TRANSFORMS, VIEW_KINDS, VIEW_TRANSFORMS, TransformArgumentError


def check_augment(augment: AugmentConfig) -> None:
    """Validate ``augment.preset`` and ``augment.views`` in place (typed transform arguments)."""
    if augment.preset not in PRESETS and augment.preset != AUTO_PRESET:
        raise ConfigError(f"augment.preset: unknown preset {augment.preset!r}"
                          f"{suggest(str(augment.preset), list(PRESETS))}; available: auto, {', '.join(PRESETS)}")
    if augment.views is not None:
        augment.views = check_views(augment.views, "augment.views")


def check_views(views: typing.Sequence[ViewConfig], dotted: str) -> tuple[ViewConfig, ...]:
    """Validate the views named ``dotted`` (``augment.views``, or a method's default views):
    counts and sizes, view kinds, transform names and their arguments (converted to the
    argument types, ranges checked by the transform's constructor). Returns the views with
    typed transform arguments; raises :class:`ConfigError` naming the dotted key of the bad
    value and what was expected."""
    if len(views) == 0:
        raise ConfigError(f"{dotted} must list at least one view, or be null (the method's default views)")
    checked = []
    for i, view in enumerate(views):
        key = f"{dotted}[{i}]"
        if view.count < 1:
            raise ConfigError(f"{key}.count must be >= 1 (views made alike), got {view.count}")
        if view.size is not None and view.size < 1:
            raise ConfigError(f"{key}.size must be >= 1 (pixels) or null (the image size), got {view.size}")
        if view.kind not in VIEW_KINDS:
            raise ConfigError(f"{key}.kind: unknown view kind {view.kind!r}"
                              f"{suggest(str(view.kind), list(VIEW_KINDS))}; available: {', '.join(VIEW_KINDS)}")
        table = VIEW_TRANSFORMS.get(view.kind)
        if table is None and view.transforms:
            raise ConfigError(f"{key}.transforms: views of kind '{view.kind}' take no transforms")
        transforms = tuple(_check_transform(t, f"{key}.transforms[{j}]", table)
                           for j, t in enumerate(view.transforms))
        names = [t["name"] for t in transforms]
        for j, name in enumerate(names):
            if name in names[:j]:
                raise ConfigError(f"{key}.transforms[{j}]: transform '{name}' appears twice in the view")
        if view.kind == "transforms" and view.size is not None and not any(TRANSFORMS[n].set_by_view for n in names):
            raise ConfigError(f"{key}.size={view.size} needs a 'crop' transform (without one the view keeps the "
                              "input size); add {name: crop} or set size to null")
        checked.append(dataclasses.replace(view, transforms=transforms))
    return tuple(checked)


def _check_transform(raw: dict[str, Any], dotted: str, table: dict[str, type]) -> dict[str, Any]:
    """``raw = {"name": ..., **arguments}`` checked against the constructor of ``table[name]``."""
    name = raw.get("name")
    if not isinstance(name, str) or name not in table:
        raise ConfigError(f"{dotted}.name: unknown transform {name!r}{suggest(str(name), list(table))}; "
                          f"available: {', '.join(table)}")
    cls = table[name]
    hints = typing.get_type_hints(cls.__init__)
    parameters = [p for p in list(inspect.signature(cls.__init__).parameters.values())[1:]
                  if p.name not in cls.set_by_view]
    valid = [p.name for p in parameters]
    arguments = {}
    for key, value in raw.items():
        if key == "name":
            continue
        if key in cls.set_by_view:
            view = dotted.rsplit(".transforms[", 1)[0]
            raise ConfigError(f"{dotted}.{key}: set by the view ({view}.{key}), not by the transform")
        if key not in valid:
            raise ConfigError(f"unknown key '{dotted}.{key}'{suggest(str(key), valid)}; "
                              f"transform '{name}' takes: {', '.join(valid)}")
        arguments[key] = convert_value(value, hints[key], f"{dotted}.{key}")
    missing = [p.name for p in parameters if p.default is inspect.Parameter.empty and p.name not in arguments]
    if missing:
        raise ConfigError(f"{dotted}: transform '{name}' needs {', '.join(missing)}")
    try:
        cls(**arguments, **{key: 1 for key in cls.set_by_view})  # the constructor checks the ranges
    except TransformArgumentError as err:
        raise ConfigError(f"{dotted}.{err.argument}: {err}") from None
    return {"name": name, **arguments}
