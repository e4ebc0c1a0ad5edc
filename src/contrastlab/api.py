"""The Python API: train and evaluate from Python, on a recipe or on one's own dataset; build a
method around one's own backbone for one's own training loop.

    import contrastlab
    run = contrastlab.train("configs/simclr-gray-small-convnet.yaml", ["train.epochs=2"])
    run = contrastlab.train({"method": {"name": "byol"}}, dataset=my_images, test_dataset=my_test)
    print(run.results["trained"]["knn"]["accuracy"], run.run_dir)

The command line (:mod:`contrastlab.cli`) calls :func:`train` and :func:`evaluate`.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from contrastlab.core.config import Config, ConfigError
from contrastlab.core.distributed import broadcast_object
from contrastlab.data.dataset import Dataset
from contrastlab.data.user_dataset import UserImages
from contrastlab.engine.checkpoint import load_checkpoint
from contrastlab.engine.distributed import cleanup_distributed, init_distributed
from contrastlab.engine.evaluation import evaluate_run
from contrastlab.engine.run_folder import create_unique
from contrastlab.engine.setup import RunData, load_data, trained_backbone
from contrastlab.engine.trainer import Trainer
from contrastlab.methods import METHODS
from contrastlab.methods.base import Method
from contrastlab.models.custom import as_backbone
from contrastlab.recipes import config_from

ConfigSource = str | Path | Config | Mapping[str, Any] | None


@dataclass
class Run:
    """A finished run: its folder, its config and (when it was evaluated) its results, as in
    ``results.json``: ``results["trained"]`` and, with ``eval.compare_random_init``,
    ``results["random_init"]``."""

    run_dir: Path
    config: Config
    results: dict[str, Any] | None

    def backbone(self, encoder: str = "student") -> nn.Module:
        """The trained backbone (``encoder``: ``student``, or ``teacher`` for methods with an EMA
        teacher) in eval mode, on the CPU."""
        return trained_backbone(load_checkpoint(self.run_dir), self.config, encoder).eval()


def train(config: ConfigSource = None, overrides: Sequence[str] = (), *, dataset: Any = None,
          test_dataset: Any = None, run_dir: str | Path | None = None, resume: bool = False,
          default_stem: str | None = None) -> Run:
    """Pre-train as ``config`` says, then evaluate when ``eval.at_end`` (the default).

    Args:
        config: a recipe file, a :class:`Config`, a mapping of sections, or ``None`` (the
            defaults); with ``resume``, ``None`` (the run's own ``config.yaml`` is used).
        overrides: ``"section.key=value"`` strings applied on top.
        dataset: train on this instead of ``data.name``: a map-style dataset of images or
            ``(image, label)`` pairs (see :mod:`contrastlab.data.user_dataset`), or a dataset of
            contrastlab's protocol. ``data.name`` is then recorded as the dataset's name.
        test_dataset: the evaluation's test split for ``dataset``; without it, set
            ``data.test_fraction`` to hold out part of ``dataset``, or ``eval.at_end=false``.
        run_dir: the run folder (default: a new ``runs/<stem>-<time>``, the stem being the
            recipe file's, else ``default_stem`` or ``run``); rank 0 prints it before training.
        resume: continue the run in ``run_dir``.

    Under ``torchrun`` every process calls this; rank 0 writes the folder and evaluates.
    """
    if resume:
        if run_dir is None or config is not None:
            raise ConfigError("resume=True continues the run in run_dir with its own config.yaml: give run_dir, "
                              "and no config (overrides only)")
        config = Path(run_dir) / "config.yaml"
    cfg = config_from(config, overrides)
    data = _given_data(cfg, dataset, test_dataset, need_test=cfg.eval.at_end)
    env = init_distributed(cfg.train.device, timeout=datetime.timedelta(seconds=cfg.train.dist_timeout_s))
    try:
        if run_dir is None:  # rank 0 creates a folder no other run has; every rank uses it
            stem = Path(config).stem if isinstance(config, (str, Path)) else default_stem or "run"
            default = Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
            run_dir = broadcast_object(create_unique(default) if env.rank == 0 else None)
        run_dir = Path(run_dir)
        trainer = Trainer(cfg, run_dir, env, resume=resume, data=data)  # claims the folder
        if env.rank == 0:
            print(f"run folder: {run_dir}", flush=True)
        trainer.fit()
    finally:
        cleanup_distributed()
    results = evaluate_run(run_dir, cfg, data=data) if env.rank == 0 and cfg.eval.at_end else None
    return Run(run_dir, cfg, results)


def evaluate(run_dir: str | Path, overrides: Sequence[str] = (), *, dataset: Any = None,
             test_dataset: Any = None) -> dict[str, Any]:
    """Evaluate the run in ``run_dir`` again (``eval.*`` overrides, e.g. ``"eval.knn_k=20"``),
    on its own data or, for a run trained on a Python dataset, on ``dataset`` /
    ``test_dataset`` as :func:`train` takes them. Returns the results (also written to
    ``results.json``)."""
    cfg = config_from(Path(run_dir) / "config.yaml", overrides)
    return evaluate_run(Path(run_dir), cfg, data=_given_data(cfg, dataset, test_dataset, need_test=True))


def build_method(name: str, backbone: nn.Module, input_shape: tuple[int, ...] | None = None,
                 **fields: Any) -> Method:
    """Method ``name`` (see ``contrastlab list``) around one's own ``backbone``, for one's own
    training loop: ``out = method(StepInput(views=[x1, x2]))`` gives ``out["loss"]``; call
    ``method.on_after_optimizer_step(progress)`` after each optimiser step (EMA teachers, queues).

    ``backbone`` maps ``(B, *input_shape)`` to ``(B, D)`` features; without an ``out_dim``
    attribute, ``input_shape`` is needed to infer it (:func:`~contrastlab.models.as_backbone`).
    ``fields`` are the method's config fields (``temperature=0.2``), validated as a recipe's
    are. A method that trains a further encoder of its own gets an independently initialised
    copy of ``backbone`` (its parameters reset where its layers have ``reset_parameters``).
    """
    try:
        method_class = METHODS.get(name)
    except KeyError as err:
        raise ConfigError(f"method: {err.args[0]}") from None
    known = {f.name for f in dataclasses.fields(method_class.Config)} - {"name"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"method '{name}' has no field(s) {', '.join(unknown)}; its fields: {', '.join(sorted(known))}")
    cfg = method_class.Config(name=name, **fields)  # checked by the method, as a recipe's section is
    backbone = as_backbone(backbone, input_shape)
    method = method_class(cfg, backbone)
    method.build_encoders(lambda: _fresh_copy(backbone))
    return method


def _fresh_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every layer that can re-initialise itself re-initialised."""
    fresh = copy.deepcopy(module)
    for layer in fresh.modules():
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    return fresh


def _given_data(cfg: Config, dataset: Any, test_dataset: Any, need_test: bool) -> RunData | None:
    """The run's data when a dataset is given (wrapped into the protocol; ``cfg.data.name`` set
    to its name), else ``None`` (the trainer loads ``cfg.data``). Without a test split where
    none is ``need``ed, the training split stands in for it, marked as the probes' own data
    (which evaluation refuses)."""
    if dataset is None:
        if test_dataset is not None:
            raise ConfigError("test_dataset was given without dataset; give both, or neither (data.name is used)")
        return None
    train = _as_protocol(dataset, "dataset")
    test = None if test_dataset is None else _as_protocol(test_dataset, "test_dataset")
    cfg.data.name = train.name
    if test is not None or cfg.data.test_fraction is not None:
        return load_data(cfg, train, test)
    if need_test:
        raise ConfigError("dataset was given without test_dataset: give test_dataset, set data.test_fraction "
                          "(e.g. 0.1) to hold out part of dataset, or set eval.at_end=false")
    return dataclasses.replace(load_data(cfg, train, train), test_is_probe_train=True)


def _as_protocol(dataset: Any, name: str) -> Dataset:
    return dataset if isinstance(dataset, Dataset) else UserImages(dataset, name=name)
