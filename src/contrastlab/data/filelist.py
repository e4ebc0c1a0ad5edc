"""Image file lists: a text file with one ``path[ label]`` per line, for images laid out otherwise."""

from __future__ import annotations

import os
from pathlib import Path

from contrastlab.data.base import DataError, ImageData
from contrastlab.data.files import require_root
from contrastlab.data.registry import DATASETS
from contrastlab.data.stream import ImageFiles, image_dataset


def list_file(root: Path, split: str) -> Path:
    """``root/<split>.txt`` when ``root`` is a folder; ``root`` itself (split ``train`` only) when a file."""
    if root.is_file():
        if split != "train":
            raise DataError(f"{root} is a single list file, which only serves split 'train'; for split "
                            f"'{split}' set data.root to a folder holding {split}.txt")
        return root
    path = root / f"{split}.txt"
    if not path.is_file():
        raise DataError(f"{path} does not exist; expected the list of the '{split}' images")
    return path


def parse_list(path: Path) -> tuple[list[str], list[int] | None, tuple[str, ...]]:
    """Image paths, labels in ``0..C-1`` (or ``None``) and class names of the list file ``path``.

    One ``path`` or ``path label`` per line, separated by whitespace (so a path holds no
    whitespace); ``label`` an integer; blank lines and lines starting with ``#`` skipped. Paths
    are relative to the list file's folder unless absolute. Labels map to ``0..C-1`` in
    increasing order, the class names being the distinct labels as written (``"3"``). Every
    line has a label or none has; every file must exist.
    """
    paths: list[str] = []
    raw_labels: list[int] = []
    unlabelled: int | None = None  # line number of the first line without a label
    labelled: int | None = None
    folder = path.parent
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) > 2:
                raise DataError(f"{path}:{number}: expected 'path' or 'path label', got {len(fields)} fields: "
                                f"{line.strip()!r} (paths with whitespace are not supported)")
            if len(fields) == 2:
                try:
                    raw_labels.append(int(fields[1]))
                except ValueError:
                    raise DataError(f"{path}:{number}: label must be an integer, got {fields[1]!r}") from None
                labelled = labelled or number
            else:
                unlabelled = unlabelled or number
            if labelled and unlabelled:
                raise DataError(f"{path}: line {labelled} has a label but line {unlabelled} has none; "
                                f"label every line or none")
            file = os.path.join(folder, fields[0])
            if not os.path.isfile(file):
                raise DataError(f"{path}:{number}: image file {file} does not exist")
            paths.append(file)
    if not paths:
        raise DataError(f"{path} lists no images; expected one 'path[ label]' per line")
    if not raw_labels:
        return paths, None, ()
    distinct = sorted(set(raw_labels))
    position = {label: i for i, label in enumerate(distinct)}
    return paths, [position[label] for label in raw_labels], tuple(str(label) for label in distinct)


@DATASETS.register("filelist", "text list of 'path[ label]' lines; set data.root to the list or a folder of <split>.txt")
def load(split: str, root: str | None = None, size: int | None = None, seed: int = 0, *,
         image_size: int | None = None, in_memory: bool | None = None) -> ImageData | ImageFiles:
    """The images listed in ``root`` (a list file: train only) or ``root/<split>.txt``, in memory
    or streamed (:func:`~contrastlab.data.stream.image_dataset` explains ``image_size`` and
    ``in_memory``); labels ``(N,)`` as :func:`parse_list` maps them, or ``None``."""
    paths, labels, classes = parse_list(list_file(require_root("filelist", root, what="list file or folder"), split))
    return image_dataset("filelist", paths, labels, classes, size=size, seed=seed,
                         image_size=image_size, in_memory=in_memory)
