"""Exported backbones: the metadata an export carries, and loading one back, ready to use.

An export (``contrastlab export RUN --out F.safetensors``) is a safetensors file of the
backbone's weights whose metadata key ``contrastlab`` holds JSON::

    {"backbone": name, "options": {...}, "input_shape": [...], "method": name,
     "encoder": "student" or "teacher", "preprocessing": {...}}

``preprocessing`` is the record of :mod:`contrastlab.data.eval_input`: the resize, centre crop
and normalisation evaluation applied to the inputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from contrastlab.data.eval_input import preprocess_from_record
from contrastlab.models import build_backbone

METADATA_KEY = "contrastlab"
REQUIRED_FIELDS = ("backbone", "options", "input_shape", "preprocessing")


class ExportError(ValueError):
    """A file is not a (loadable) contrastlab export."""


def export_metadata(config: dict[str, Any], input_shape: list[int], encoder: str,
                    preprocessing: dict[str, Any]) -> dict[str, Any]:
    """The metadata of an export of ``encoder``'s backbone from a run of ``config`` (a
    checkpoint's config dict) whose backbone was built for ``input_shape``."""
    return {"backbone": config["backbone"]["name"], "options": config["backbone"]["options"],
            "input_shape": list(input_shape), "method": config["method"]["name"], "encoder": encoder,
            "preprocessing": preprocessing}


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``contrastlab`` metadata of the export at ``path``; :class:`ExportError` naming the
    file and what it lacks when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file; expected a backbone written by 'contrastlab export'")
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise ExportError(f"{path} is not a safetensors file ({err})") from None
    if METADATA_KEY not in metadata:
        raise ExportError(f"{path} is not a contrastlab export: its metadata has no '{METADATA_KEY}' entry "
                          f"(found: {', '.join(metadata) or 'no metadata'})")
    try:
        meta = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as err:
        raise ExportError(f"{path}: its '{METADATA_KEY}' metadata is not JSON ({err})") from None
    missing = [key for key in REQUIRED_FIELDS if not isinstance(meta, dict) or key not in meta]
    if missing:
        hint = "; re-export it with 'contrastlab export RUN --out FILE'" if "preprocessing" in missing else ""
        raise ExportError(f"{path}: its '{METADATA_KEY}' metadata lacks {', '.join(missing)}{hint}")
    return meta


def load_backbone(path: str | Path) -> nn.Module:
    """The backbone exported to ``path``, with its weights, in eval mode.

    It carries ``.metadata`` (the export's metadata, module docstring) and ``.preprocess``: a
    callable that takes images (a PIL image, a list of them, or a ``(B, C, H, W)`` uint8 or
    [0, 1] float tensor) and returns the normalised ``(B, C, H, W)`` float batch the backbone
    expects, resized and centre-cropped as evaluation did
    (:class:`~contrastlab.data.eval_input.ImagePreprocess`); for graphs and skeleton
    sequences it returns its input unchanged. ``backbone(backbone.preprocess(images))`` gives
    ``(B, D)`` features.
    """
    meta = read_metadata(path)
    try:
        preprocess = preprocess_from_record(meta["preprocessing"], f"{path}: 'preprocessing'")
    except ValueError as err:
        raise ExportError(str(err)) from None
    try:
        backbone = build_backbone(meta["backbone"], tuple(meta["input_shape"]), **meta["options"])
        backbone.load_state_dict(load_file(str(path)))
    except (ValueError, TypeError, RuntimeError) as err:
        raise ExportError(f"{path}: cannot load the exported backbone '{meta['backbone']}': "
                          f"{err.args[0] if err.args else err}") from None
    backbone.eval()
    backbone.preprocess = preprocess
    backbone.metadata = meta
    return backbone
