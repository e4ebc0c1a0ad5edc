"""Typed run configuration: YAML recipes, dotted command-line overrides, validation.

Every default lives in the dataclasses below. A recipe file sets any subset of the fields;
``a.b=value`` overrides (values parsed as YAML) are applied on top. Unknown keys and values
of the wrong type are rejected with a message naming the dotted key and, for unknown keys,
the nearest valid one.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from contrastlab.registry import suggest


class ConfigError(ValueError):
    """A recipe or override names an unknown key or gives a value of the wrong type."""


@dataclass
class DataConfig:
    """Which dataset to train and evaluate on (see ``contrastlab list``)."""

    name: str = "spirograph"
    root: str | None = None  # folder or file; None = the dataset's default (or generated)
    train_split: str = "train"
    test_split: str = "test"
    probe_split: str | None = None  # split the evaluation probes fit on; None = train_split
    train_size: int | None = None  # seeded subset (or number generated); None = all / default
    test_size: int | None = None
    seed: int = 0
    color_space: Literal["rgb", "lab"] = "rgb"  # lab: sRGB -> standardised CIE Lab (RGB datasets only)


@dataclass
class ViewConfig:
    """``count`` views made alike (one entry of ``augment.views``).

    ``kind: transforms`` (the default) applies ``transforms`` in order, each a mapping
    ``{name: <transform>, <argument>: <value>, ...}`` whose name is a key of
    :data:`contrastlab.data.augment.TRANSFORMS` (``crop``, ``jitter``, ``gray``, ``blur``,
    ``solarize``) and whose other keys are that class's constructor arguments. ``size`` is the
    output side of the view's crop (``None`` = the image height; a view without a crop keeps the
    input size). Other kinds are registered by datasets (``spirograph``: re-render with fresh
    nuisance) and take no transforms.
    """

    count: int = 1
    size: int | None = None
    kind: str = "transforms"
    transforms: tuple[dict[str, Any], ...] = ()


@dataclass
class AugmentConfig:
    """The contrastive views.

    ``views`` lists them (see :class:`ViewConfig`); ``None`` = the method's default views, made
    from the preset fields below (``None`` there means the preset's own value; ``blur_prob`` and
    ``solarize_prob`` give one probability per view of the pair).
    """

    preset: str = "simclr-cifar"  # simclr-cifar | simclr-imagenet | byol | crop-only | spirograph
    size: int | None = None  # output size of the crop; None = the image size
    crop_scale: tuple[float, float] = (0.08, 1.0)
    flip_prob: float = 0.5  # horizontal flip in the crop (0 for digits and text)
    jitter_strength: float | None = None
    jitter_prob: float = 0.8
    gray_prob: float = 0.2
    blur_prob: tuple[float, float] | None = None  # per view
    solarize_prob: tuple[float, float] | None = None  # per view
    views: tuple[ViewConfig, ...] | None = None

    def __post_init__(self) -> None:
        from contrastlab.data.augment import PRESETS

        if self.preset not in PRESETS:
            raise ConfigError(f"augment.preset: unknown preset {self.preset!r}"
                              f"{suggest(str(self.preset), list(PRESETS))}; available: {', '.join(PRESETS)}")
        if self.size is not None and self.size < 1:
            raise ConfigError(f"augment.size must be >= 1 (pixels) or null (the image size), got {self.size}")
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ConfigError(f"augment.crop_scale must be (low, high) with 0 < low <= high <= 1, "
                              f"got {list(self.crop_scale)}")
        if self.jitter_strength is not None and self.jitter_strength < 0:
            raise ConfigError(f"augment.jitter_strength must be >= 0 or null (the preset's), "
                              f"got {self.jitter_strength}")
        probabilities = {"flip_prob": self.flip_prob, "jitter_prob": self.jitter_prob, "gray_prob": self.gray_prob}
        for key in ("blur_prob", "solarize_prob"):
            for i, p in enumerate(getattr(self, key) or ()):
                probabilities[f"{key}[{i}]"] = p
        for key, p in probabilities.items():
            if not 0 <= p <= 1:
                raise ConfigError(f"augment.{key} must be a probability in [0, 1], got {p}")
        if self.views is not None:
            self.views = check_views(self.views, "augment.views")


def check_views(views: typing.Sequence[ViewConfig], dotted: str) -> tuple[ViewConfig, ...]:
    """Validate the views named ``dotted`` (``augment.views``, or a method's default views):
    counts and sizes, view kinds, transform names and their arguments (converted to the
    argument types, ranges checked by the transform's constructor). Returns the views with
    typed transform arguments; raises :class:`ConfigError` naming the dotted key of the bad
    value and what was expected."""
    from contrastlab.data.augment import TRANSFORMS, VIEW_KINDS

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
        if view.kind != "transforms" and view.transforms:
            raise ConfigError(f"{key}.transforms: views of kind '{view.kind}' take no transforms")
        transforms = tuple(_check_transform(t, f"{key}.transforms[{j}]", TRANSFORMS)
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
    import inspect

    from contrastlab.data.augment import TransformArgumentError

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
        arguments[key] = _convert(value, hints[key], f"{dotted}.{key}")
    missing = [p.name for p in parameters if p.default is inspect.Parameter.empty and p.name not in arguments]
    if missing:
        raise ConfigError(f"{dotted}: transform '{name}' needs {', '.join(missing)}")
    try:
        cls(**arguments, **{key: 1 for key in cls.set_by_view})  # the constructor checks the ranges
    except TransformArgumentError as err:
        raise ConfigError(f"{dotted}.{err.argument}: {err}") from None
    return {"name": name, **arguments}


@dataclass
class BackboneConfig:
    """Encoder; ``options`` go to the builder (e.g. ``cifar_stem``, ``width``, ``channels``)."""

    name: str = "convnet"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodConfig:
    """Fields shared by every method; each method extends this with its own."""

    name: str = "simclr"
    proj_hidden_dim: int = 2048
    proj_out_dim: int = 128
    proj_layers: int = 2


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (per step: linear warm-up, then cosine)."""

    name: Literal["sgd", "lars", "adam", "adamw"] = "lars"
    lr: float = 0.3  # used as given: no silent rescaling by batch size
    momentum: float = 0.9
    weight_decay: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.999)
    lars_trust: float = 1e-3
    lars_exclude_bias_and_norm: bool = True  # False = torchlars semantics (every tensor adapted)
    warmup_epochs: float = 1.0
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr: float = 0.0
    grad_clip: float | None = None  # max global gradient norm


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 256  # per process
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 (fp16 on old GPUs)
    channels_last: bool = True
    checkpoint_every: int = 1  # epochs
    log_every: int = 10  # steps
    online_probe: bool = True  # linear classifier on detached features when labels exist
    sync_batchnorm: bool = False
    progress: bool = True
    max_steps_per_epoch: int | None = None  # cap for smoke runs and benchmarks


@dataclass
class EvalConfig:
    at_end: bool = True  # evaluate when training finishes
    compare_random_init: bool = True  # also evaluate the same backbone at initialisation
    knn_k: int = 200
    knn_temperature: float = 0.1
    weight_decays: tuple[float, ...] = (0.0, 1e-5, 1e-4, 1e-3, 1e-2)
    ridge_alphas: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
    val_fraction: float = 0.1
    max_train: int | None = 20_000  # seeded subset of training features used by the probes
    batch_size: int = 512
    plots: bool = True
    feature_averaging: int | None = None  # M: also evaluate features averaged over M training views
    robustness: tuple[float, ...] | None = None  # test-time nuisance strengths (probes on clean train)

    def __post_init__(self) -> None:
        if self.feature_averaging is not None and self.feature_averaging < 1:
            raise ConfigError(
                f"eval.feature_averaging must be >= 1 (views averaged) or null (off), got {self.feature_averaging}"
            )
        if self.robustness is not None:
            if len(self.robustness) == 0:
                raise ConfigError("eval.robustness must list at least one strength, or be null (off)")
            for strength in self.robustness:
                if strength < 0:
                    raise ConfigError(f"eval.robustness: strengths must be >= 0, got {strength}")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively, so the dict dumps as plain YAML/JSON."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read a YAML recipe (or start from the defaults), apply ``a.b=value`` overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        apply_override(raw, item)
    return config_from_dict(raw)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``raw[a][b] = value`` for the string ``"a.b=value"`` (value parsed as YAML)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{item}' must look like section.key=value")
    value = yaml.safe_load(text) if text.strip() else None
    *parents, last = key.strip().split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{item}': '{part}' is a value, not a section")
        node = child
    node[last] = value


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Validate a nested dict into a :class:`Config` (the method section by its ``name``)."""
    raw = dict(raw)
    method_raw = raw.pop("method", None) or {}
    if not isinstance(method_raw, dict):
        raise ConfigError(f"method must be a mapping, got {method_raw!r}")
    cfg = _build(Config, raw, "")
    cfg.method = _build(method_config_class(method_raw.get("name", "simclr")), method_raw, "method")
    return cfg


def method_config_class(name: str) -> type[MethodConfig]:
    from contrastlab.methods import METHODS

    if not isinstance(name, str) or name not in METHODS:
        raise ConfigError(
            f"method.name: unknown method {name!r}{suggest(str(name), METHODS.names())}; "
            f"available: {', '.join(METHODS.names())}"
        )
    return METHODS.get(name).Config


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in raw.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise ConfigError(
                f"unknown key '{dotted}'{suggest(str(key), list(fields))}; "
                f"valid keys{' in ' + prefix if prefix else ''}: {', '.join(fields)}"
            )
        values[key] = _convert(value, hints[key], dotted)
    return cls(**values)


def _convert(value: Any, hint: Any, dotted: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, dotted)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, dotted)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{dotted}: expected {_describe(hint)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{dotted}: expected a list ({_describe(hint)}), got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{dotted}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{dotted}: expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_convert(v, a, f"{dotted}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{dotted}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in args:
            choices = [str(a) for a in args]
            raise ConfigError(
                f"{dotted}: {value!r} is not one of {', '.join(choices)}{suggest(str(value), choices)}"
            )
        return value
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{dotted}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{dotted}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{dotted}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{dotted}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{dotted}: unsupported config type {hint}")


def _describe(hint: Any) -> str:
    return str(hint).replace("typing.", "")


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
