"""Builds a run's parts from its config: data, views, backbone, method, device, precision."""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from contrastlab.core.config import Config, ConfigError, DataConfig, MethodConfig
from contrastlab.data import DATASETS
from contrastlab.data.augment import RandomResizedCropFlip, build_pipelines, resolve_preset
from contrastlab.data.dataset import Dataset
from contrastlab.data.graphs import GRAPH_KIND
from contrastlab.data.loading import eval_batches
from contrastlab.data.view_config import check_views
from contrastlab.data.preprocess import LabNormalize, Normalize, channel_stats
from contrastlab.engine.checkpoint import backbone_state
from contrastlab.methods import METHODS
from contrastlab.methods.base import Method
from contrastlab.methods.registry import encoder_prefix
from contrastlab.models import build_backbone


@dataclass
class RunData:
    """The splits and the normalisation fitted on the training images.

    ``probe_train`` is what evaluation fits its probes on: ``data.probe_split`` when set (e.g.
    STL-10's labelled ``train`` beside the unlabelled pre-training split), else ``train``.
    """

    train: Dataset
    test: Dataset
    probe_train: Dataset
    normalize: Normalize
    test_is_probe_train: bool = False  # the test split is the split the probes fit on (by name)


# DataConfig fields passed to the loaders that take them (only when set): e.g. the folder
# loader's decode size and its in-memory switch, the TU loader's node features.
LOADER_OPTIONS = ("image_size", "in_memory", "node_features")


def load_split(d: DataConfig, split: str, size: int | None) -> Dataset:
    """Split ``split`` of dataset ``d.name`` (a seeded subset of ``size`` samples when set)."""
    try:
        load = DATASETS.get(d.name)
    except KeyError as err:
        raise ConfigError(f"data.name: {err.args[0]}") from None
    options: dict[str, Any] = {k: getattr(d, k) for k in LOADER_OPTIONS if getattr(d, k, None) is not None}
    unsupported = [k for k in options if k not in inspect.signature(load).parameters]
    if unsupported:
        raise ConfigError(f"data: dataset '{d.name}' takes none of data.{', data.'.join(unsupported)} "
                          "(set them to null)")
    return load(split, root=d.root, size=size, seed=d.seed, **options)


def load_data(cfg: Config, train: Dataset | None = None, test: Dataset | None = None) -> RunData:
    """The splits of ``cfg.data`` and their normalisation (``data.color_space``).

    ``train`` / ``test`` given (datasets of the protocol, e.g. a user's own wrapped in
    :class:`~contrastlab.data.user_dataset.UserImages`) replace the splits ``data.train_split``
    / ``data.test_split`` would load. With ``data.test_fraction`` the test split is that seeded
    fraction (``data.seed``) of the training split, held out of training: for data without a
    test split of its own. ``data.train_size`` / ``data.test_size`` then take seeded subsets of
    the two parts.
    """
    d = cfg.data
    same_split = test is None and d.test_fraction is None and d.test_split == (d.probe_split or d.train_split)
    if d.test_fraction is not None:
        if test is not None:
            raise ConfigError("data.test_fraction holds out part of the training data, but a test dataset was "
                              "given too; give one or the other")
        whole = train if train is not None else load_split(d, d.train_split, None)
        train, test = hold_out(whole, d.test_fraction, d.seed)
        train, test = seeded_subset(train, d.train_size, d.seed), seeded_subset(test, d.test_size, d.seed)
    else:
        train = train if train is not None else load_split(d, d.train_split, d.train_size)
        if test is None:
            test = load_split(d, d.test_split, d.test_size)
    probe_train = train
    if d.probe_split is not None and d.probe_split != d.train_split:
        probe_train = load_split(d, d.probe_split, d.train_size)
    for split, other in ((d.test_split, test), (d.probe_split, probe_train)):
        if hasattr(train, "shape") and other.shape[0] != train.shape[0]:
            raise ConfigError(
                f"data: '{d.train_split}' images have {train.shape[0]} channels but "
                f"'{split}' images have {other.shape[0]}"
            )
    return RunData(train, test, probe_train, make_normalize(d.color_space, train), same_split)


def hold_out(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """``(rest, held_out)``: a seeded ``fraction`` of ``dataset`` (at least one sample, and at
    least one left) and the rest, each in the dataset's order."""
    n = len(dataset)
    if n < 2:
        raise ConfigError(f"data.test_fraction: '{dataset.name}' has {n} sample(s); holding some out needs at least 2")
    held = min(max(1, round(fraction * n)), n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return dataset.subset(order[held:].sort().values), dataset.subset(order[:held].sort().values)


def seeded_subset(dataset: Dataset, size: int | None, seed: int) -> Dataset:
    """A seeded subset of ``size`` samples of ``dataset`` (all of it when ``size`` is None or
    not smaller), in the dataset's order."""
    if size is None or size >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return dataset.subset(order[:size].sort().values)


def eval_protocol(cfg: Config, data: RunData) -> str:
    """``eval.protocol`` resolved: ``auto`` is ``svm_cv`` for graphs, else ``probes``."""
    if cfg.eval.protocol != "auto":
        return cfg.eval.protocol
    return "svm_cv" if data.train.kind == GRAPH_KIND else "probes"


def check_held_out(cfg: Config, data: RunData) -> None:
    """Refuse probes that would score on their own training data: ``probes`` with the test split
    the split they fit on (``svm_cv`` cross-validates, so one split is its protocol)."""
    d = cfg.data
    if eval_protocol(cfg, data) == "probes" and data.test_is_probe_train:
        raise ConfigError(
            f"data.test_split='{d.test_split}' is the split the probes fit on: they would score on their own "
            f"training data; set data.test_fraction=0.1 to hold out part of it, or name another data.test_split")


# Images the per-channel statistics are fitted on when the training split is not in memory.
NORMALIZE_SAMPLE = 1024


def make_normalize(color_space: str, train: Dataset) -> Normalize:
    """``rgb``: per-channel standardisation fitted on ``train`` (on all of an in-memory split, on
    ``NORMALIZE_SAMPLE`` evenly spaced eval-mode images of a streamed one); ``lab``: sRGB -> CIE
    Lab with MetAug's fixed Lab statistics (RGB images only). Data that are not images (graphs,
    whose ``shape`` is ``(F,)``) get an empty normalisation, which their views never apply."""
    if color_space == "lab":
        channels = train.shape[0]
        if channels != 3:
            raise ConfigError(f"data.color_space='lab' needs RGB (3-channel) images but '{train.name}' images have "
                              f"{channels} channel(s); use data.color_space=rgb")
        return LabNormalize()
    if len(train.shape) != 3:  # not images (graphs): the views standardise nothing
        return Normalize([], [])
    images = getattr(train, "images", None)
    if images is None:
        index = torch.linspace(0, len(train) - 1, min(len(train), NORMALIZE_SAMPLE)).long().unique()
        images = torch.cat([batch["inputs"] for batch in eval_batches(train, 256, index)])
    mean, std = channel_stats(images)
    return Normalize(mean, std)


def fit_train_sized_fields(method: MethodConfig, train_size: int) -> None:
    """Fits ``method``'s fields to a training set of ``train_size`` samples, in place.

    A field its class lists in ``TRAIN_SIZED_FIELDS`` (MetAug-Lab's ``bank_size``: one row per
    training image) is set to ``train_size`` when ``None``, and must otherwise be at least that
    (``ConfigError`` naming ``method.<field>``). A field in ``TRAIN_CAPPED_FIELDS`` (MoCo's
    ``queue_size``) larger than ``train_size`` is lowered to it with a warning: a queue longer
    than the training set holds several keys of one image, negatives of its own positive; one
    exactly as long gets a warning too.
    """
    for field in getattr(type(method), "TRAIN_SIZED_FIELDS", ()):
        value = getattr(method, field)
        if value is None:
            setattr(method, field, train_size)
        elif value < train_size:
            raise ConfigError(f"method.{field}={value} is smaller than the {train_size} training images; "
                              f"set it to at least {train_size} or to null (the training-set size)")
    for field in getattr(type(method), "TRAIN_CAPPED_FIELDS", ()):
        value = getattr(method, field)
        if value > train_size:
            warnings.warn(f"method.{field}={value} is larger than the {train_size} training samples; "
                          f"using {train_size}", stacklevel=2)
            setattr(method, field, train_size)
        elif value == train_size:
            warnings.warn(f"method.{field}={value} equals the {train_size} training samples: it holds a key of "
                          "every image, each anchor's own among its negatives; a smaller one avoids that",
                          stacklevel=2)


def make_views(cfg: Config, data: RunData) -> list:
    """The view pipelines of the run, in order: ``cfg.augment.views``, or when it is null the
    method's default views (``Method.default_views`` from the preset fields; ``preset: auto``
    is the preset of the training split's ``kind``). A view entry of ``count`` k gives k
    pipelines.

    Raises :class:`ConfigError` naming ``augment.views`` when the number of views is not one
    the method accepts (``Method.accepted_views``) or their sizes differ for a method that takes
    one size (``Method.mixed_view_sizes``), and naming the view (or the preset) that cannot be
    built for this data.
    """
    a = cfg.augment
    method = METHODS.get(cfg.method.name)
    if a.views is not None:
        key, views = "augment.views", check_views(a.views, "augment.views")
    else:
        try:
            a = dataclasses.replace(a, preset=resolve_preset(a.preset, data.train.kind))
        except ValueError as err:
            raise ConfigError(f"{err} (dataset '{cfg.data.name}')") from None
        key = f"augment.preset ('{a.preset}', the default views of method '{cfg.method.name}')"
        views = check_views(method.default_views(a), key)
    count = sum(view.count for view in views)
    low, high = method.accepted_views(cfg.method)
    if count < low or (high is not None and count > high):
        accepted = f"exactly {low}" if low == high else f"at least {low}" if high is None else f"{low} to {high}"
        raise ConfigError(f"augment.views: method '{cfg.method.name}' takes {accepted} views, got {count} "
                          f"(counts {[view.count for view in views]})")
    sizes = [view.size or max(data.train.shape[1:], default=0) for view in views for _ in range(view.count)]
    if not method.mixed_view_sizes and len(set(sizes)) > 1:
        raise ConfigError(f"augment.views: method '{cfg.method.name}' takes views of one size, got sizes {sizes} "
                          "(views of several sizes: a method with multi-crop, such as simclr)")
    try:
        return build_pipelines([dataclasses.asdict(view) for view in views], image_shape=data.train.shape,
                               normalize=data.normalize)
    except ValueError as err:
        raise ConfigError(f"{key}: {err}") from None


def training_views(train: Dataset, views: list) -> tuple[Dataset, list]:
    """The training split and view pipelines as the trainer uses them: a dataset that can crop
    at decode time (``with_decode_crops``: a streamed image folder) takes every view's random
    resized crop from the full-resolution image in its loader workers, and the views apply the
    rest of their transforms on the device; a graph dataset (``with_view_augments``) makes every
    view in its loader workers, each view reading its slot of the batch; any other dataset is
    returned with the views as they are."""
    if hasattr(train, "with_view_augments"):  # graphs: every view augmented in the workers
        views = [view.at_slot(slot) for slot, view in enumerate(views)]
        return train.with_view_augments([view.augment for view in views]), views
    if not hasattr(train, "with_decode_crops"):
        return train, views
    views = [view.crop_at_decode(slot) for slot, view in enumerate(views)]
    return train.with_decode_crops([view.decode_crop for view in views]), views


def make_backbone(cfg: Config, input_shape: tuple[int, ...]) -> torch.nn.Module:
    try:
        return build_backbone(cfg.backbone.name, input_shape, **cfg.backbone.options)
    except (KeyError, ValueError, TypeError) as err:
        raise ConfigError(f"backbone: {err.args[0] if err.args else err}") from None


def make_method(cfg: Config, input_shape: tuple[int, ...], train_size: int) -> Method:
    """The method of ``cfg.method`` on a new backbone, given a builder of further encoders
    (:meth:`Method.build_encoders`); its training-set-sized fields are resolved first
    (:func:`fit_train_sized_fields`, recorded in ``cfg``)."""
    fit_train_sized_fields(cfg.method, train_size)
    method = METHODS.get(cfg.method.name)(cfg.method, make_backbone(cfg, input_shape))
    method.build_encoders(lambda: make_backbone(cfg, input_shape))
    return method


def initial_backbone(cfg: Config, input_shape: tuple[int, ...]) -> torch.nn.Module:
    """The run's backbone at initialisation: built after seeding with ``train.seed``, as the
    trainer seeds before building its method (the random-init baseline of evaluation)."""
    torch.manual_seed(cfg.train.seed)
    return make_backbone(cfg, input_shape)


def trained_backbone(state: dict[str, Any], cfg: Config, encoder: str) -> torch.nn.Module:
    """The backbone ``encoder`` (``student`` or ``teacher``) of the checkpoint ``state``, with its
    trained weights (built for the checkpoint's input shape)."""
    backbone = make_backbone(cfg, tuple(state["input_shape"]))
    backbone.load_state_dict(backbone_state(state, encoder_prefix(cfg.method, encoder)))
    return backbone


def view_shape(data: RunData, views: list) -> tuple[int, ...]:
    """``(C, H, W)`` of the first training view (the backbone is built for it): its crop's size
    when it starts with a crop, else the image size; ``(F,)`` for graphs; the first view's
    output shape ``(3, T, V, M)`` for skeleton sequences."""
    if len(data.train.shape) != 3:  # graphs: (F,) node features; skeletons: the views' (3, T, V, M)
        output_shape = getattr(views[0], "output_shape", None)
        return tuple(output_shape(data.train.shape) if output_shape else data.train.shape)
    channels, height, width = data.train.shape
    first = views[0].transforms[0] if getattr(views[0], "transforms", None) else None
    size = getattr(first, "size", None) if isinstance(first, RandomResizedCropFlip) else None
    return (channels, size, size) if size else (channels, height, width)


def resolve_device(preference: str) -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but CUDA is not available; use 'auto' or 'cpu'")
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def cpu_computes_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX512-BF16 or AMX), oneDNN's own check.

    Without it, bf16 convolutions are emulated: measured on a 2-core AMD EPYC (AVX2 only), a
    MoCo step of the gray-small ConvNet ran at 31 images/s under bf16 autocast and 390 in fp32
    (one thread); on CPUs with it, bf16 with channels-last is about 2.5x faster than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.precision`` on ``device`` (``None`` = fp32).

    ``auto``: on CUDA bf16 (fp16 where the GPU has no bf16); on a CPU bf16 where it computes
    bf16 natively (:func:`cpu_computes_bf16`), else fp32. ``bf16`` asked for on a CPU without it
    is kept, with a warning that it is slower there."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_computes_bf16() else None
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on CPU")
    if precision == "bf16" and device.type == "cpu" and not cpu_computes_bf16():
        warnings.warn("train.precision=bf16 on a CPU without native bf16 (AVX512-BF16 or AMX): emulated, it runs "
                      "several times slower than fp32 here; train.precision=auto picks fp32 on such a CPU",
                      stacklevel=2)
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
