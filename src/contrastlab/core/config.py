"""Typed run configuration: YAML recipes, dotted command-line overrides, validation.

Every default lives in the dataclasses below. A recipe file sets any subset of the fields;
``a.b=value`` overrides (values parsed as YAML) are applied on top. Unknown keys and values
of the wrong type are rejected with a message naming the dotted key and, for unknown keys,
the nearest valid one. The method section is validated by its method's own config class,
which the caller passes in (:func:`contrastlab.recipes.load_config` passes the registered
methods').
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from contrastlab.core.registry import suggest


class ConfigError(ValueError):
    """A recipe or override names an unknown key or gives a value of the wrong type or range."""


# Ranges a config class declares for its fields, in its ``RANGES`` class attribute:
# ``{"temperature": "> 0", "bank_momentum": "in [0, 1)"}``.
_BOUND = re.compile(r"^(>=|>|<=|<) (-?[0-9.e+-]+)$")
_INTERVAL = re.compile(r"^in ([\[(])(-?[0-9.e+-]+), (-?[0-9.e+-]+)([\])])$")


def in_range(value: float, rule: str) -> bool:
    """Whether ``value`` satisfies ``rule``: ``"> x"``, ``">= x"``, ``"< x"``, ``"<= x"`` or an
    interval ``"in [a, b)"`` (brackets closed, parentheses open)."""
    bound, interval = _BOUND.match(rule), _INTERVAL.match(rule)
    if bound:
        op, limit = bound.group(1), float(bound.group(2))
        return {">": value > limit, ">=": value >= limit, "<": value < limit, "<=": value <= limit}[op]
    if interval:
        opening, low, high, closing = interval.groups()
        above = value >= float(low) if opening == "[" else value > float(low)
        below = value <= float(high) if closing == "]" else value < float(high)
        return above and below
    raise ValueError(f"malformed range rule {rule!r}; expected e.g. '> 0', '>= 1' or 'in [0, 1)'")


def check_section(section: Any, prefix: str) -> None:
    """Validate a config dataclass named ``prefix`` (``"method"``, ``"augment.views[0]"``): every
    field has its annotated type (a ``Literal`` one of its choices), every field in its
    classes' ``RANGES`` lies in its range (``None`` = unset is skipped; each element of a tuple
    is checked), then its ``validate(prefix)`` checks the rules that join several fields. The
    one style of validation of every section: called by the loader on each section and by
    :class:`Method` for configs made in code. Raises :class:`ConfigError` naming the dotted key, the allowed range and the
    value."""
    hints = typing.get_type_hints(type(section))
    ranges: dict[str, str] = {}
    for cls in reversed(type(section).__mro__):
        ranges.update(vars(cls).get("RANGES", {}))
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if not dataclasses.is_dataclass(hints[f.name]):  # a section: checked on its own
            convert_value(value, hints[f.name], f"{prefix}.{f.name}")  # the type, for configs made in code
        if f.name in ranges and value is not None:
            for item in value if isinstance(value, tuple) else (value,):
                if not in_range(item, ranges[f.name]):
                    raise ConfigError(f"{prefix}.{f.name} must be {ranges[f.name]}, got {value!r}")
    validate = getattr(section, "validate", None)
    if validate is not None:
        validate(prefix)


@dataclass
class DataConfig:
    """Which dataset to train and evaluate on (see ``contrastlab list``)."""

    name: str = "spirograph"  # the dataset (contrastlab list); a Python dataset given to contrastlab.train: its name
    root: str | None = None  # folder or file; None = the dataset's default (or generated)
    train_split: str = "train"  # the split pre-training reads
    test_split: str = "test"  # the split the probes score on (see the README's dataset layouts)
    probe_split: str | None = None  # split the evaluation probes fit on; None = train_split
    train_size: int | None = None  # seeded subset (or number generated); None = all / default
    test_size: int | None = None  # seeded subset of the test split; None = all
    seed: int = 0  # seeds the subsets, the held-out fraction and generated data
    color_space: Literal["rgb", "lab"] = "rgb"  # lab: sRGB -> standardised CIE Lab (RGB datasets only)
    image_size: int | None = None  # image files: side of the eval input (shorter side, centre crop); None = as stored
    in_memory: bool | None = None  # image files: decode all into memory; None = auto (one size and <= 512 MiB)
    num_workers: int = 0  # DataLoader worker processes for streamed datasets (0: load in the main process)
    node_features: Literal["auto", "labels", "attributes", "both", "degree", "constant"] | None = None  # graphs (tu)
    test_fraction: float | None = None  # hold out this seeded fraction of train_split as the test split (test_split unused)

    RANGES: ClassVar[dict[str, str]] = {"train_size": ">= 1", "test_size": ">= 1", "image_size": ">= 1",
                                        "num_workers": ">= 0", "test_fraction": "in (0, 1)"}


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

    RANGES: ClassVar[dict[str, str]] = {"count": ">= 1", "size": ">= 1"}

    count: int = 1
    size: int | None = None
    kind: str = "transforms"
    transforms: tuple[dict[str, Any], ...] = ()


@dataclass
class AugmentConfig:
    """The contrastive views.

    ``views`` lists them (see :class:`ViewConfig`); ``None`` = the method's default views, made
    from the preset fields below (``None`` there means the preset's own value; ``blur_prob`` and
    ``solarize_prob`` give one probability per view of the pair). ``preset: auto`` picks the
    preset of the dataset's kind: ``gray-small``, ``colour-small``, ``gray-large``,
    ``colour-large`` (by channels and image side) or a dataset's own (``spirograph``).
    """

    preset: str = "auto"  # auto | gray-small | colour-small | gray-large | colour-large | simclr-cifar | ...
    size: int | None = None  # output size of the crop; None = the image size
    crop_scale: tuple[float, float] | None = None  # random resized crop: (low, high) fraction of the image area
    flip_prob: float | None = None  # horizontal flip in the crop (the gray-small preset has none)
    jitter_strength: float | None = None  # colour jitter s: brightness/contrast/saturation 0.8 s, hue 0.2 s
    jitter_prob: float | None = None  # probability of the colour jitter
    gray_prob: float | None = None  # probability of converting to grayscale
    blur_prob: tuple[float, float] | None = None  # per view
    solarize_prob: tuple[float, float] | None = None  # per view
    views: tuple[ViewConfig, ...] | None = None  # explicit views [{count, size, kind, transforms}]; None = the method's

    RANGES: ClassVar[dict[str, str]] = {
        "size": ">= 1", "crop_scale": "in (0, 1]", "flip_prob": "in [0, 1]", "jitter_strength": ">= 0",
        "jitter_prob": "in [0, 1]", "gray_prob": "in [0, 1]", "blur_prob": "in [0, 1]", "solarize_prob": "in [0, 1]",
    }

    def validate(self, prefix: str) -> None:
        """The crop scale is a range; the preset name and the views (which need the transform
        table of :mod:`contrastlab.data.augment`) are checked by
        :func:`contrastlab.data.view_config.check_augment` when a recipe is loaded."""
        if self.crop_scale is not None and self.crop_scale[0] > self.crop_scale[1]:
            raise ConfigError(f"{prefix}.crop_scale must be (low, high) with low <= high, got {list(self.crop_scale)}")


@dataclass
class BackboneConfig:
    """Encoder; ``options`` go to the builder (e.g. ``cifar_stem``, ``width``, ``channels``)."""

    name: str = "convnet"  # the encoder (contrastlab list)
    options: dict[str, Any] = field(default_factory=dict)  # builder options, e.g. {width: 0.5, cifar_stem: true}


@dataclass
class MethodConfig:
    """Fields shared by every method; each method extends this with its own."""

    RANGES: ClassVar[dict[str, str]] = {"proj_hidden_dim": ">= 1", "proj_out_dim": ">= 1", "proj_layers": ">= 1"}

    name: str = "simclr"  # the method (contrastlab list)
    proj_hidden_dim: int = 2048  # projection head: hidden width
    proj_out_dim: int = 128  # projection head: output width (the loss's embedding)
    proj_layers: int = 2  # projection head: linear layers


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (per step: linear warm-up, then cosine)."""

    RANGES: ClassVar[dict[str, str]] = {
        "lr": "> 0", "momentum": "in [0, 1)", "weight_decay": ">= 0", "betas": "in [0, 1)", "lars_trust": "> 0",
        "warmup_epochs": ">= 0", "min_lr": ">= 0", "grad_clip": "> 0", "milestones": ">= 0", "gamma": "> 0",
    }

    name: Literal["sgd", "lars", "adam", "adamw"] = "lars"  # the optimiser
    lr: float = 0.3  # used as given: no silent rescaling by batch size
    momentum: float = 0.9  # sgd / lars
    weight_decay: float = 1e-6  # L2 on the weights (lars: not on biases and norms, by default)
    betas: tuple[float, float] = (0.9, 0.999)  # adam / adamw
    lars_trust: float = 1e-3  # lars: the trust coefficient of the layer-wise rate
    lars_exclude_bias_and_norm: bool = True  # False = torchlars semantics (every tensor adapted)
    warmup_epochs: float = 1.0  # linear warm-up from 0, in epochs
    schedule: Literal["cosine", "constant", "step"] = "cosine"  # the rate after warm-up
    min_lr: float = 0.0  # cosine: the final rate
    milestones: tuple[float, ...] = ()  # step: epochs at whose start the rate is multiplied by gamma
    gamma: float = 0.1  # step: the factor at each milestone
    grad_clip: float | None = None  # max global gradient norm


@dataclass
class TrainConfig:
    RANGES: ClassVar[dict[str, str]] = {
        "epochs": "in [1, 100000]", "batch_size": ">= 1", "checkpoint_every": ">= 1", "log_every": ">= 1",
        "max_steps_per_epoch": ">= 1", "dist_timeout_s": ">= 1", "min_samples": ">= 1",
    }

    epochs: int = 10  # passes over the training split
    # at least this many training samples: a small training split gets more epochs (rounded up to whole
    # ones). An override of train.epochs alone sets this to null: train.epochs=N trains exactly N epochs.
    min_samples: int | None = None
    batch_size: int = 256  # per process
    seed: int = 0  # seeds the initialisation, the batches and the views
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on GPUs (fp16 on old ones) and on CPUs with native bf16, else fp32
    channels_last: bool = True  # image batches in channels-last memory format (faster convolutions)
    retain_freed_memory: bool = True  # glibc keeps freed host memory: no page faults for each step's tensors above 32 MiB (ResNet-18 CPU step 1.2x faster); the RSS stays at its peak
    checkpoint_every: int = 1  # epochs
    log_every: int = 10  # steps
    online_probe: bool = True  # linear classifier on detached features when labels exist
    sync_batchnorm: bool = False  # torchrun: BatchNorm statistics over every rank
    progress: bool = True  # progress bar (plain lines without a terminal) and epoch summaries on stderr
    max_steps_per_epoch: int | None = None  # cap for smoke runs and benchmarks
    drop_last: bool = True  # false: also train on each epoch's last, smaller batch (when it has >= 2 samples)
    dist_timeout_s: float = 1800.0  # torchrun: a rank waits at most this long for the others in a collective
    # tensorboard and wandb need their extras: pip install contrastlab[tensorboard] / contrastlab[wandb]
    loggers: tuple[Literal["jsonl", "csv", "tensorboard", "wandb"], ...] = ("jsonl", "csv")  # sinks; jsonl always on
    wandb_project: str = "contrastlab"  # the W&B project of the wandb logger (WANDB_MODE=offline: no account)


@dataclass
class EvalConfig:
    at_end: bool = True  # evaluate when training finishes
    compare_random_init: bool = True  # also evaluate the same backbone at initialisation
    knn_k: int = 200  # neighbours of the kNN probe (capped at the training samples, with a warning)
    knn_temperature: float = 0.1  # kNN: the votes are weighted exp(similarity / t)
    weight_decays: tuple[float, ...] = (0.0, 1e-5, 1e-4, 1e-3, 1e-2)  # linear probe: chosen on a validation split
    ridge_alphas: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # ridge probe: chosen on a validation split
    val_fraction: float = 0.1  # the probes' validation share of their training features
    max_train: int | None = 20_000  # seeded subset of training features used by the probes
    batch_size: int = 512  # feature extraction batch
    plots: bool = True  # write the PNG plots into the run folder
    feature_averaging: int | None = None  # M: also evaluate features averaged over M training views
    robustness: tuple[float, ...] | None = None  # test-time nuisance strengths (probes on clean train)
    encoder: str = "student"  # which trained backbone: student, or teacher (methods with an EMA teacher)
    # auto: svm_cv for graph data, else probes (kNN / linear / ridge on the train and test splits);
    # svm_cv: RBF SVM, C by an inner grid search, outer stratified k-fold CV over probe_split
    protocol: Literal["auto", "probes", "svm_cv"] = "auto"
    svm_folds: int = 10  # svm_cv: outer folds
    svm_inner_folds: int = 5  # svm_cv: inner folds of the grid search over C
    svm_cs: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)  # svm_cv: the grid of C

    RANGES: ClassVar[dict[str, str]] = {
        "knn_k": ">= 1", "knn_temperature": "> 0", "weight_decays": ">= 0", "ridge_alphas": "> 0",
        "val_fraction": "in (0, 1)", "max_train": ">= 1", "batch_size": ">= 1", "feature_averaging": ">= 1",
        "robustness": ">= 0", "svm_folds": ">= 2", "svm_inner_folds": ">= 2", "svm_cs": "> 0",
    }

    def validate(self, prefix: str) -> None:
        if self.robustness is not None and len(self.robustness) == 0:
            raise ConfigError(f"{prefix}.robustness must list at least one strength, or be null (off)")
        if not self.svm_cs:
            raise ConfigError(f"{prefix}.svm_cs must list at least one C value")


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


def read_recipe(path: str | Path | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The nested dict of a YAML recipe (or ``{}`` for the defaults) with the ``a.b=value``
    overrides applied, not yet validated (:func:`config_from_dict` does that)."""
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
    keys = {item.partition("=")[0].strip() for item in overrides}
    if "train.epochs" in keys and "train.min_samples" not in keys and isinstance(raw.get("train"), dict):
        raw["train"]["min_samples"] = None  # an explicit epoch count is exact
    return raw


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``raw[a][b] = value`` for the string ``"a.b=value"`` (value parsed as YAML)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{item}' must look like section.key=value")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as err:
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        raise ConfigError(f"override '{item}': the value is not valid YAML ({problem}); quote it or fix the "
                          "brackets, e.g. key=[0.2, 1.0] or key='text'") from None
    *parents, last = key.strip().split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{item}': '{part}' is a value, not a section")
        node = child
    node[last] = value


def config_from_dict(raw: dict[str, Any], method_configs: Mapping[str, type[MethodConfig]]) -> Config:
    """Validate a nested dict into a :class:`Config`; the method section by the config class
    that ``method_configs`` (method name -> its :class:`MethodConfig` subclass) gives for its
    ``name``."""
    raw = dict(raw)
    method_raw = raw.pop("method", None) or {}
    if not isinstance(method_raw, dict):
        raise ConfigError(f"method must be a mapping, got {method_raw!r}")
    cfg = _build(Config, raw, "")
    cfg.method = _build(method_config_class(method_raw.get("name", "simclr"), method_configs), method_raw, "method")
    return cfg


def method_config_class(name: str, method_configs: Mapping[str, type[MethodConfig]]) -> type[MethodConfig]:
    if not isinstance(name, str) or name not in method_configs:
        names = sorted(method_configs)
        raise ConfigError(
            f"method.name: unknown method {name!r}{suggest(str(name), names)}; available: {', '.join(names)}"
        )
    return method_configs[name]


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
        values[key] = convert_value(value, hints[key], dotted)
    section = cls(**values)
    check_section(section, prefix or "config")
    return section


def convert_value(value: Any, hint: Any, dotted: str) -> Any:
    """``value`` checked against the type ``hint`` (converted where YAML reads it loosely);
    :class:`ConfigError` naming ``dotted`` otherwise."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else _build(hint, value, dotted)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return convert_value(value, option, dotted)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{dotted}: expected {_describe(hint)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{dotted}: expected a list ({_describe(hint)}), got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert_value(v, args[0], f"{dotted}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{dotted}: expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(convert_value(v, a, f"{dotted}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
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
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{dotted}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{dotted}: expected a finite number, got {value!r}")
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
