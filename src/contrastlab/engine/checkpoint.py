"""Atomic checkpoints (``torch.load(weights_only=True)``-compatible) and safetensors export."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from contrastlab.export import METADATA_KEY

CHECKPOINT_NAME = "checkpoint.pt"
TEMPORARY_PREFIX, TEMPORARY_SUFFIX = ".", ".tmp"  # atomic_write's temporaries: .<name>.<random>.tmp
REQUIRED_KEYS = ("method", "epoch", "step", "config", "input_shape")
"""What every checkpoint of :class:`~contrastlab.engine.trainer.Trainer` holds and evaluation,
export and resume read."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not match the run's configuration."""


def atomic_write(path: Path, write) -> None:  # noqa: ANN001 - write(tmp_path) callable
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    A crash mid-write leaves the previous file intact, never a truncated one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMPORARY_PREFIX}{path.name}.", suffix=TEMPORARY_SUFFIX)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except Exception as err:
        free = shutil.disk_usage(path.parent).free
        full = "the disk is full" if _is_disk_full(err) or free < 1 << 20 else "the write failed"
        kept = f"the previous {path.name} is unchanged" if path.exists() else f"no {path.name} was written"
        raise CheckpointError(f"could not write {path}: {full} ({free / 2**20:.1f} MiB free on the disk of "
                              f"{path.parent}); {kept}. ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _is_disk_full(err: BaseException) -> bool:
    """An ``ENOSPC`` error, or torch's serializer failing to write (its C++ writer reports a
    full disk only as ``file write failed``)."""
    return getattr(err, "errno", None) == errno.ENOSPC or "write failed" in str(err)


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
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CheckpointError(f"{path} is not a readable contrastlab checkpoint: {err}") from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        found = ", ".join(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not a contrastlab checkpoint: it lacks {', '.join(missing)} "
                              f"(found: {found or 'nothing'})")
    return state


def backbone_state(checkpoint: dict[str, Any], prefix: str = "backbone.") -> dict[str, torch.Tensor]:
    """A backbone's weights from a checkpoint's method state: the keys under ``prefix`` (the
    student's ``backbone.`` by default, or a teacher's), without it."""
    return {k[len(prefix):]: v for k, v in checkpoint["method"].items() if k.startswith(prefix)}


def export_backbone(backbone_state: dict[str, torch.Tensor], meta: dict[str, Any], out: Path) -> Path:
    """Save backbone weights as safetensors with ``meta`` (:func:`contrastlab.export.export_metadata`)
    as JSON metadata."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in backbone_state.items()}
    metadata = {METADATA_KEY: json.dumps(meta)}
    atomic_write(Path(out), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return Path(out)
