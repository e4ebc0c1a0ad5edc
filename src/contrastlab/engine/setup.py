"""Builds a run's parts from its config: data, views, backbone, method, device, precision."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from contrastlab.config import Config, ConfigError, MethodConfig, check_views
from contrastlab.data import DATASETS, ImageData
from contrastlab.data.augment import build_pipelines
from contrastlab.data.preprocess import LabNormalize, Normalize, channel_stats
from contrastlab.methods import METHODS
from contrastlab.methods.base import Method
from contrastlab.models import build_backbone


@dataclass
class RunData:
    """The splits and the normalisation fitted on the training images.

    ``probe_train`` is what evaluation fits its probes on: ``data.probe_split`` when set (e.g.
    STL-10's labelled ``train`` beside the unlabelled pre-training split), else ``train``.
    """

    train: ImageData
    test: ImageData
    probe_train: ImageData
    normalize: Normalize


def load_data(cfg: Config) -> RunData:
    """The splits of ``cfg.data`` and their normalisation (``data.color_space``)."""
    try:
        load = DATASETS.get(cfg.data.name)
    except KeyError as err:
        raise ConfigError(f"data.name: {err.args[0]}") from None
    d = cfg.data
    train = load(d.train_split, root=d.root, size=d.train_size, seed=d.seed)
    test = load(d.test_split, root=d.root, size=d.test_size, seed=d.seed)
    probe_train = train
    if d.probe_split is not None and d.probe_split != d.train_split:
        probe_train = load(d.probe_split, root=d.root, size=d.train_size, seed=d.seed)
    for split, other in ((d.test_split, test), (d.probe_split, probe_train)):
        if other.shape[0] != train.shape[0]:
            raise ConfigError(
                f"data: '{d.train_split}' images have {train.shape[0]} channels but "
                f"'{split}' images have {other.shape[0]}"
            )
    return RunData(train, test, probe_train, make_normalize(d.color_space, train))


def make_normalize(color_space: str, train: ImageData) -> Normalize:
    """``rgb``: per-channel standardisation fitted on ``train``; ``lab``: sRGB -> CIE Lab with
    MetAug's fixed Lab statistics (RGB images only)."""
    if color_space == "lab":
        channels = train.shape[0]
        if channels != 3:
            raise ConfigError(f"data.color_space='lab' needs RGB (3-channel) images but '{train.name}' images have "
                              f"{channels} channel(s); use data.color_space=rgb")
        return LabNormalize()
    mean, std = channel_stats(train.images)
    return Normalize(mean, std)


def fill_train_sized_fields(method: MethodConfig, train_size: int) -> None:
    """Sets to ``train_size`` each field of ``method`` that its class lists in a
    ``TRAIN_SIZED_FIELDS`` class attribute and that is ``None`` (e.g. MetAug-Lab's
    ``bank_size``: one memory-bank row per training image). A value already set must be at
    least ``train_size`` (``ConfigError`` naming ``method.<field>``)."""
    for field in getattr(type(method), "TRAIN_SIZED_FIELDS", ()):
        value = getattr(method, field)
        if value is None:
            setattr(method, field, train_size)
        elif value < train_size:
            raise ConfigError(f"method.{field}={value} is smaller than the {train_size} training images; "
                              f"set it to at least {train_size} or to null (the training-set size)")


def make_views(cfg: Config, data: RunData) -> list:
    """The view pipelines of the run, in order: ``cfg.augment.views``, or when it is null the
    method's default views (``Method.default_views`` from the preset fields). A view entry of
    ``count`` k gives k pipelines.

    Raises :class:`ConfigError` naming ``augment.views`` when the number of views is not one
    the method accepts (``Method.accepted_views``), and naming the view (or the preset) that
    cannot be built for this data.
    """
    a = cfg.augment
    method = METHODS.get(cfg.method.name)
    if a.views is not None:
        key, views = "augment.views", check_views(a.views, "augment.views")
    else:
        key = f"augment.preset ('{a.preset}', the default views of method '{cfg.method.name}')"
        views = check_views(method.default_views(a), key)
    count = sum(view.count for view in views)
    low, high = method.accepted_views(cfg.method)
    if count < low or (high is not None and count > high):
        accepted = f"exactly {low}" if low == high else f"at least {low}" if high is None else f"{low} to {high}"
        raise ConfigError(f"augment.views: method '{cfg.method.name}' takes {accepted} views, got {count} "
                          f"(counts {[view.count for view in views]})")
    try:
        return build_pipelines([dataclasses.asdict(view) for view in views], image_shape=data.train.shape,
                               normalize=data.normalize)
    except ValueError as err:
        raise ConfigError(f"{key}: {err}") from None


def make_backbone(cfg: Config, input_shape: tuple[int, int, int]) -> torch.nn.Module:
    try:
        return build_backbone(cfg.backbone.name, input_shape, **cfg.backbone.options)
    except (KeyError, ValueError, TypeError) as err:
        raise ConfigError(f"backbone: {err.args[0] if err.args else err}") from None


def make_method(cfg: Config, input_shape: tuple[int, int, int], train_size: int) -> Method:
    """The method of ``cfg.method`` on a new backbone; its training-set-sized fields are resolved
    first (:func:`fill_train_sized_fields`, recorded in ``cfg``)."""
    fill_train_sized_fields(cfg.method, train_size)
    backbone = make_backbone(cfg, input_shape)
    return METHODS.get(cfg.method.name)(cfg.method, backbone)


def view_shape(cfg: Config, data: RunData) -> tuple[int, int, int]:
    """``(C, H, W)`` of a training view (the crop size when ``augment.size`` is set)."""
    channels, height, width = data.train.shape
    size = cfg.augment.size
    return (channels, size, size) if size else (channels, height, width)


def resolve_device(preference: str) -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but CUDA is not available; use 'auto' or 'cpu'")
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.precision`` on ``device`` (``None`` = fp32)."""
    if precision == "auto":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
