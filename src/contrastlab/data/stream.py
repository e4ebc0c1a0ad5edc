"""Image files decoded lazily, one sample at a time (in DataLoader workers): datasets of any size.

:class:`ImageFiles` implements the dataset protocol (:mod:`contrastlab.data.dataset`) over a
list of image files of any size and mode (see :mod:`contrastlab.data.decode`):

* eval mode (default): ``ds[i]`` is the deterministic eval input, the shorter side resized to
  ``image_size`` and the centre square kept (or the whole image when ``image_size`` is
  ``None``, which needs every image to have the same size);
* training mode (:meth:`ImageFiles.with_decode_crops`): ``ds[SampleKey(i, seed)]`` holds one
  random resized crop per view, taken at decode time from the full-resolution image.

:func:`image_dataset` is what the ``folder`` and ``filelist`` loaders share: it picks the
in-memory :class:`~contrastlab.data.base.ImageData` (the fast path for small data) or
:class:`ImageFiles`, from the image headers only.

Channels: 1 when every inspected header is grayscale (:func:`~contrastlab.data.decode.is_gray`),
else 3. A streaming dataset inspects an evenly spaced sample of at most
:data:`HEADER_SAMPLE` headers; an in-memory one inspects every header. A colour image that the
sample missed is decoded to its luma.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import default_collate

from contrastlab.data.base import DataError, ImageData
from contrastlab.data.dataset import Batch, SampleKey, image_kind
from contrastlab.data.decode import CropSpec, DecodeCrop, decode_centre, decode_crops, decode_native, is_gray, opened
from contrastlab.data.files import subset_index

HEADER_SAMPLE = 1024  # headers a streaming dataset reads to choose its channels and native size
IN_MEMORY_BYTES = 512 * 2**20  # auto mode: in memory when the decoded images take at most this


@dataclass
class ImageFiles:
    """Image files decoded on access; implements the dataset protocol.

    Attributes:
        name: dataset name, for messages.
        paths: ``(N,)`` numpy bytes array of the file paths (``os.fsencode``; one buffer, so
            DataLoader workers forked from the main process do not copy it on access).
        labels: ``(N,)`` int64 class labels, or ``None``.
        classes: class names, indexable by label; empty when unlabelled.
        channels: 1 (every image decoded to gray) or 3 (RGB).
        image_size: side ``S`` of the eval input ``(C, S, S)``; ``None``: the whole image at its
            own size, ``native``, which every image must have.
        native: ``(H, W)`` of every image when ``image_size`` is ``None``.
        crops: the decode-time crops of the views in training mode, ``None`` in eval mode.
        draft: use JPEG draft mode (DCT-domain downscaling) where it keeps the resolution.
    """

    name: str
    paths: np.ndarray
    labels: torch.Tensor | None
    classes: tuple[str, ...]
    channels: int
    image_size: int | None = None
    native: tuple[int, int] | None = None
    crops: tuple[DecodeCrop, ...] | None = None
    draft: bool = True
    targets: None = None
    target_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.paths.ndim != 1 or self.paths.dtype.kind != "S":
            raise DataError(f"{self.name}: paths must be a 1-D numpy bytes array, got {self.paths.dtype} "
                            f"with shape {self.paths.shape}")
        if self.labels is not None and self.labels.shape != (len(self.paths),):
            raise DataError(f"{self.name}: {len(self.paths)} files but labels of shape {tuple(self.labels.shape)}")
        if self.channels not in (1, 3):
            raise DataError(f"{self.name}: channels must be 1 or 3, got {self.channels}")
        if (self.image_size is None) == (self.native is None):
            raise DataError(f"{self.name}: set exactly one of image_size ({self.image_size}) and native ({self.native})")
        if self.image_size is not None and self.image_size <= 0:
            raise DataError(f"{self.name}: image_size must be a positive number of pixels, got {self.image_size}")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one eval-mode input."""
        height, width = (self.image_size, self.image_size) if self.image_size is not None else self.native
        return self.channels, height, width

    @property
    def kind(self) -> str:
        """The data kind of the eval input (:func:`~contrastlab.data.dataset.image_kind`)."""
        return image_kind(self.shape)

    @property
    def num_classes(self) -> int | None:
        """Number of classes, or ``None`` when unlabelled."""
        return None if self.labels is None else len(self.classes)

    def path(self, index: int) -> str:
        """The file of sample ``index``."""
        return os.fsdecode(self.paths[index])

    def eval_input(self, index: int) -> torch.Tensor:
        """The eval input of sample ``index``: ``(C, H, W)`` uint8 (see :attr:`shape`)."""
        path = self.path(index)
        if self.image_size is not None:
            return decode_centre(path, self.image_size, self.channels, self.draft)
        image = decode_native(path, self.channels)
        if tuple(image.shape[1:]) != self.native:
            height, width = self.native
            raise DataError(f"{path}: size {image.shape[2]}x{image.shape[1]} differs from the {width}x{height} "
                            f"of the other images; set data.image_size to resize every image")
        return image

    def __getitem__(self, key: int | SampleKey) -> Batch:
        """Eval mode: ``{"inputs": (C, H, W) uint8, "index": i, "labels": label}``; training
        mode (``key`` a :class:`SampleKey`): ``"inputs"`` is ``[(C, s_k, s_k) uint8 per view]``,
        deterministic in ``key``."""
        index = key.index if isinstance(key, SampleKey) else int(key)
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}: sample {index} out of range for {len(self)} samples")
        if self.crops is None:
            inputs = self.eval_input(index)
        elif isinstance(key, SampleKey):
            inputs = decode_crops(self.path(index), self.crops, key.seed, self.channels, self.draft)
        else:
            raise TypeError(f"{self.name}: a dataset in training mode (decode-time crops) takes "
                            f"SampleKey(index, seed) keys, got {key!r}")
        sample: Batch = {"inputs": inputs, "index": index}
        if self.labels is not None:
            sample["labels"] = int(self.labels[index])
        return sample

    def collate(self, samples: list[Batch]) -> Batch:
        """Samples -> ``{"inputs": (B, C, H, W) uint8 (eval) or [(B, C, s_k, s_k) uint8 per view]
        (training), "index": (B,) int64, "labels": (B,) int64}``.

        In a DataLoader worker the inputs are stacked straight into shared memory (as
        ``default_collate`` does): the batch goes to the main process without a copy, and the
        worker's heap sees no batch-sized allocation, which glibc kept as free but resident
        heap, about one batch (6 MiB at 512 x 3 x 64 x 64) more per batch decoded."""
        first = samples[0]["inputs"]
        if isinstance(first, list):
            inputs = [default_collate([s["inputs"][k] for s in samples]) for k in range(len(first))]
        else:
            inputs = default_collate([s["inputs"] for s in samples])
        batch: Batch = {"inputs": inputs, "index": torch.tensor([s["index"] for s in samples], dtype=torch.int64)}
        if self.labels is not None:
            batch["labels"] = torch.tensor([s["labels"] for s in samples], dtype=torch.int64)
        return batch

    def subset(self, index: torch.Tensor) -> "ImageFiles":
        """The samples at ``index`` (a 1-D index or boolean mask tensor), same mode."""
        paths = self.paths[index.cpu().numpy()]
        labels = None if self.labels is None else self.labels[index]
        return dataclasses.replace(self, paths=paths, labels=labels)

    def with_decode_crops(self, crops: list[CropSpec]) -> "ImageFiles":
        """A copy in training mode: one decode-time crop per view, from each view's crop
        transform (attributes ``size``, ``scale``, ``ratio``, ``flip_prob``)."""
        if not crops:
            raise ValueError(f"{self.name}: with_decode_crops needs at least one view's crop")
        return dataclasses.replace(self, crops=tuple(DecodeCrop.like(c) for c in crops))

    def in_memory(self) -> ImageData:
        """Every eval input decoded into one ``ImageData`` (images ``(N, C, H, W)`` uint8)."""
        images = torch.empty((len(self), *self.shape), dtype=torch.uint8)
        for i in range(len(self)):
            images[i] = self.eval_input(i)
        return ImageData(name=self.name, images=images, labels=self.labels, classes=self.classes)


def read_header(path: str) -> tuple[tuple[int, int], bool]:
    """``((width, height), grayscale)`` of the image at ``path``, without decoding its pixels."""
    with opened(path) as image:
        return image.size, is_gray(image)


def sample_positions(n: int, limit: int) -> np.ndarray:
    """At most ``limit`` evenly spaced positions in ``0..n-1`` (all of them when ``n <= limit``)."""
    return np.unique(np.linspace(0, n - 1, min(n, limit)).round().astype(np.int64))


def size_mismatch(paths: list[str], sizes: dict[int, tuple[int, int]]) -> str | None:
    """A message naming two of ``paths`` (keyed by position in ``sizes``) of different sizes, or ``None``."""
    first, (width, height) = next(iter(sizes.items()))
    for i, size in sizes.items():
        if size != (width, height):
            return (f"{paths[i]}: size {size[0]}x{size[1]} differs from {os.path.basename(paths[first])}'s "
                    f"{width}x{height}")
    return None


def same_size_and_small(paths: list[str], headers: dict[int, tuple[tuple[int, int], bool]],
                        image_size: int | None) -> bool:
    """Whether every image has the size of ``paths[0]`` and the decoded images take at most
    :data:`IN_MEMORY_BYTES`; reads (into ``headers``, position -> :func:`read_header`) only the
    headers it needs to answer."""
    (width, height), _ = headers[0]
    channels = 1 if all(gray for _, gray in headers.values()) else 3
    pixels = image_size**2 if image_size is not None else width * height
    if len(paths) * channels * pixels > IN_MEMORY_BYTES:
        return False
    for i in range(len(paths)):
        if i not in headers:
            headers[i] = read_header(paths[i])
        if headers[i][0] != (width, height):
            return False
    return True


def image_dataset(
    name: str,
    paths: list[str],
    labels: list[int] | None,
    classes: tuple[str, ...],
    *,
    size: int | None = None,
    seed: int = 0,
    image_size: int | None = None,
    in_memory: bool | None = None,
) -> ImageData | ImageFiles:
    """The dataset of the image files ``paths`` (with ``labels`` in ``0..len(classes)-1`` or ``None``).

    ``size``/``seed``: a seeded subset of ``size`` files. ``image_size``: side of the eval
    inputs (shorter side resized, centre square kept); ``None`` keeps each image whole, which
    needs one size for all. ``in_memory``: ``True`` decodes every eval input into an
    :class:`ImageData`; ``False`` streams (:class:`ImageFiles`); ``None`` (auto) holds the
    data in memory when every image has the same size and the decoded images take at most
    :data:`IN_MEMORY_BYTES` (both read from the headers, stopping at the first evidence
    against), else streams.
    """
    if image_size is not None and image_size <= 0:
        raise DataError(f"{name}: data.image_size must be a positive number of pixels, got {image_size}")
    index = subset_index(len(paths), size, seed)
    if index is not None:
        paths = [paths[i] for i in index]
        labels = None if labels is None else [labels[i] for i in index]
    sampled = {int(i): read_header(paths[i]) for i in sample_positions(len(paths), HEADER_SAMPLE)}
    headers = dict(sampled)
    if in_memory is None:
        in_memory = same_size_and_small(paths, headers, image_size)
    elif in_memory:
        headers.update((i, read_header(paths[i])) for i in range(len(paths)) if i not in headers)
    inspected = headers if in_memory else sampled
    native = None
    if image_size is None:
        mismatch = size_mismatch(paths, {i: s for i, (s, _) in inspected.items()})
        if mismatch:
            raise DataError(f"{mismatch}; set data.image_size to resize every image (shorter side, "
                            f"then the centre square)")
        width, height = inspected[0][0]
        native = (height, width)
    data = ImageFiles(
        name=name,
        paths=np.array([os.fsencode(p) for p in paths]),
        labels=None if labels is None else torch.tensor(labels, dtype=torch.int64),
        classes=classes,
        channels=1 if all(gray for _, gray in inspected.values()) else 3,
        image_size=image_size,
        native=native,
    )
    return data.in_memory() if in_memory else data
