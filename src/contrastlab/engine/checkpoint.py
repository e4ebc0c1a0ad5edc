"""Atomic checkpoints (``torch.load(weights_only=True)``-compatible) and safetensors export."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not match the run's configuration."""


def atomic_write(path: Path, write) -> None:  # noqa: ANN001 - write(tmp_path) callable
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    A crash mid-write leaves the previous file intact, never a truncated one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, state dicts, numbers, strings) to ``run_dir/checkpoint.pt``."""
    path = run_dir / CHECKPOINT_NAME
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    return path


def load_checkpoint(run_dir: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; expected a run folder written by 'contrastlab train'")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CheckpointError(f"{path} is not a readable contrastlab checkpoint: {err}") from None


def backbone_state(checkpoint: dict[str, Any], prefix: str = "backbone.") -> dict[str, torch.Tensor]:
    """A backbone's weights from a checkpoint's method state: the keys under ``prefix`` (the
    student's ``backbone.`` by default, or a teacher's), without it."""
    return {k[len(prefix):]: v for k, v in checkpoint["method"].items() if k.startswith(prefix)}


def export_backbone(backbone_state: dict[str, torch.Tensor], meta: dict[str, Any], out: Path) -> Path:
    """Save backbone weights as safetensors with ``meta`` (the backbone's config) as JSON metadata."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in backbone_state.items()}
    metadata = {"contrastlab": json.dumps(meta)}
    atomic_write(Path(out), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return Path(out)
