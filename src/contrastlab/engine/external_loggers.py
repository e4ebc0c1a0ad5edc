"""The optional metric sinks of ``train.loggers`` beside the run folder's files: TensorBoard and
Weights & Biases. Each takes every metrics record's scalars at the record's step."""

from __future__ import annotations

import importlib
import secrets
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from contrastlab.core.config import ConfigError

# logger name -> the module it needs (installed by the extra of the same name)
MODULES = {"tensorboard": "torch.utils.tensorboard", "wandb": "wandb"}
WANDB_ID_FILE = "wandb_run_id"  # in the run folder: a resumed run continues the same W&B run


class Sink(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def import_logger(name: str) -> ModuleType:
    """The module that logger ``name`` needs; :class:`ConfigError` naming the extra when it is
    not installed."""
    try:
        return importlib.import_module(MODULES[name])
    except ImportError:
        raise ConfigError(f"train.loggers lists {name}, which is not installed: "
                          f"pip install 'contrastlab[{name}]'") from None


def check_installed(loggers: Sequence[str]) -> None:
    """Raise :class:`ConfigError` for the first optional logger in ``loggers`` not installed."""
    for name in loggers:
        if name in MODULES:
            import_logger(name)


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of ``record`` but its ``step`` (lists, per-dimension diagnostics, are left out)."""
    return {key: value for key, value in record.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}


class TensorBoardSink:
    """Event files in ``run_dir/tensorboard``; on resume, what was logged after ``resume_step``
    (by the interrupted run) is hidden from TensorBoard."""

    def __init__(self, run_dir: Path, resume_step: int | None) -> None:
        writer = import_logger("tensorboard").SummaryWriter
        self.writer = writer(str(run_dir / "tensorboard"), purge_step=None if resume_step is None else resume_step + 1)

    def log(self, record: dict[str, Any]) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, record.get("step", 0))

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A W&B run in ``run_dir/wandb`` (online, or as ``WANDB_MODE`` says) with the run's
    config; its id is kept in ``run_dir/wandb_run_id`` and reused when the run resumes."""

    def __init__(self, run_dir: Path, resume_step: int | None, project: str, config: dict[str, Any]) -> None:
        wandb = import_logger("wandb")
        id_file = run_dir / WANDB_ID_FILE
        resuming = resume_step is not None and id_file.exists()
        run_id = id_file.read_text().strip() if resuming else secrets.token_hex(4)
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(project=project, dir=str(run_dir), config=config, id=run_id, name=run_dir.name,
                              resume="allow")

    def log(self, record: dict[str, Any]) -> None:
        self.run.log(scalars(record), step=record.get("step", 0))

    def flush(self) -> None:
        """W&B sends as it goes."""

    def close(self) -> None:
        self.run.finish()


def open_sinks(loggers: Sequence[str], run_dir: Path, resume_step: int | None, wandb_project: str,
               config: dict[str, Any]) -> list[Sink]:
    """The sinks of the optional loggers in ``loggers`` (``train.loggers``), opened (those
    already open are closed when a later one fails)."""
    sinks: list[Sink] = []
    try:
        if "tensorboard" in loggers:
            sinks.append(TensorBoardSink(run_dir, resume_step))
        if "wandb" in loggers:
            sinks.append(WandbSink(run_dir, resume_step, wandb_project, config))
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks
