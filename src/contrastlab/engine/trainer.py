"""One training loop for every method: views, precision, optimiser, schedule, checkpoints, logs."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from contrastlab.core.config import Config, ConfigError, OptimConfig, save_config
from contrastlab.core.distributed import DistEnv, all_reduce_mean
from contrastlab.core.optim import build_optimizer, learning_rate, optimizer_over, set_learning_rate
from contrastlab.data.dataset import Batch, batch_to, num_classes
from contrastlab.data.eval_input import preprocessing_record
from contrastlab.data.loading import BatchLoader
from contrastlab.engine import checkpoint as ckpt
from contrastlab.engine.distributed import maybe_sync_batchnorm, wrap_ddp
from contrastlab.engine.external_loggers import check_installed, open_sinks
from contrastlab.engine.host_memory import retain_freed_memory
from contrastlab.engine.metrics import MetricsLogger
from contrastlab.engine.progress import TrainingProgress
from contrastlab.engine.run_folder import RunFolderError, RunLock, remove_temporaries
from contrastlab.engine.sampler import EpochBatches, epoch_generator
from contrastlab.engine.setup import (
    RunData,
    autocast_dtype,
    check_held_out,
    load_data,
    make_method,
    make_views,
    training_views,
    view_shape,
)
from contrastlab.methods.base import StepInput

MAIN = "main"  # the name of the main optimiser (every parameter not in a group of its own)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class RanksLost(RuntimeError):
    """A collective failed: another rank died or stopped answering (``train.dist_timeout_s``)."""


def lost_ranks(err: RuntimeError) -> bool:
    """Whether ``err`` is a collective's failure (gloo raises plain ``RuntimeError``s)."""
    return isinstance(err, torch.distributed.DistError) or any(
        marker in str(err) for marker in ("gloo", "Connection closed by peer", "timed out", "Timed out"))


class Trainer:
    """Trains ``cfg.method`` on ``cfg.data``; writes everything to ``run_dir``.

    ``data`` replaces the splits of ``cfg.data`` (:func:`load_data` with a user's datasets).

    Layout of ``run_dir``: ``config.yaml``, ``checkpoint.pt`` (every
    ``train.checkpoint_every`` epochs and at the end), ``metrics.jsonl``, and as
    ``train.loggers`` asks ``metrics.csv``, ``tensorboard/``, ``wandb/`` with ``wandb_run_id``.

    Batches come through the dataset protocol (:class:`BatchLoader`: in memory, or decoded in
    ``data.num_workers`` worker processes); the views are made on the training device. The
    method's own parameter groups (:meth:`Method.parameter_groups`) get optimisers of their own,
    scheduled and checkpointed beside the main one.
    """

    def __init__(self, cfg: Config, run_dir: Path, env: DistEnv, resume: bool = False,
                 data: RunData | None = None) -> None:
        self.cfg, self.run_dir, self.env = cfg, Path(run_dir), env
        self.lock = RunLock(self.run_dir) if env.rank == 0 else None  # released by fit() or close()
        try:
            self._claim_folder(resume)
            self._setup(resume, data)
        except BaseException:
            self.close()
            raise

    def _claim_folder(self, resume: bool) -> None:
        """Refuse to train afresh over an earlier run; remove what a killed write left."""
        if self.env.rank != 0:
            return
        if not resume and (self.run_dir / ckpt.CHECKPOINT_NAME).exists():
            raise RunFolderError(f"{self.run_dir} already holds the checkpoint of an earlier run; continue it with "
                                 f"'contrastlab train --resume {self.run_dir}', or give another --run-dir")
        for path in remove_temporaries(self.run_dir):
            print(f"removed {path}, left by an interrupted write", file=sys.stderr)

    def _setup(self, resume: bool, data: RunData | None) -> None:
        cfg, env = self.cfg, self.env
        self.device = env.device
        self.amp_dtype = autocast_dtype(cfg.train.precision, self.device)
        if cfg.train.retain_freed_memory:
            retain_freed_memory()
        torch.manual_seed(cfg.train.seed)
        check_installed(cfg.train.loggers)

        self.data = data if data is not None else load_data(cfg)
        if cfg.eval.at_end:  # before training, not after it: the probes must not score on their own data
            check_held_out(cfg, self.data)
        per_rank = len(self.data.train) // env.world_size
        if per_rank == 0:
            raise ConfigError(f"data: the training split of '{cfg.data.name}' holds no samples for this process "
                              f"({len(self.data.train)} samples, {env.world_size} processes)")
        views = make_views(cfg, self.data)
        self.input_shape = view_shape(self.data, views)
        train_set, self.views = training_views(self.data.train, views)
        method = make_method(cfg, self.input_shape, len(self.data.train))
        method = maybe_sync_batchnorm(method, cfg.train.sync_batchnorm, env).to(self.device)
        if cfg.train.channels_last:
            method = method.to(memory_format=torch.channels_last)
        self.method = method
        self.model = wrap_ddp(method, env)
        self.optimizers = self._build_optimizers()
        method.attach_optimizer(self.optimizers[MAIN][0])
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        classes = num_classes(self.data.train)
        self.probe: nn.Linear | None = None
        if cfg.train.online_probe and classes is not None:
            self.probe = nn.Linear(method.backbone.out_dim, classes).to(self.device)
            self.probe_optimizer = torch.optim.Adam(self.probe.parameters(), lr=1e-3)

        full_batches, rest = divmod(per_rank, cfg.train.batch_size)
        self.steps_per_epoch = full_batches + (0 if cfg.train.drop_last or rest < 2 else 1)
        if cfg.train.max_steps_per_epoch is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.train.max_steps_per_epoch)
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"train.batch_size={cfg.train.batch_size} is larger than the {per_rank} training "
                f"images per process of '{cfg.data.name}'; lower train.batch_size"
            )
        cfg = self.cfg = self._epochs_for_min_samples(cfg, full_batches)
        self.total_steps = self.steps_per_epoch * cfg.train.epochs
        self.batches = EpochBatches(len(train_set), cfg.train.batch_size, self.steps_per_epoch, cfg.train.seed, env)
        self.loader = BatchLoader(train_set, self.batches, cfg.data.num_workers,
                                  pin_memory=self.device.type == "cuda")
        self.start_epoch, self.step = 0, 0
        if resume:
            self._restore()
        if env.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
        resume_step = self.step if resume else None
        sinks = []
        if env.rank == 0:
            sinks = open_sinks(cfg.train.loggers, self.run_dir, resume_step, cfg.train.wandb_project, cfg.to_dict())
        self.logger = MetricsLogger(self.run_dir, resume_step, enabled=env.rank == 0,
                                    write_csv="csv" in cfg.train.loggers, sinks=sinks)

    def _epochs_for_min_samples(self, cfg: Config, full_steps_per_epoch: int) -> Config:
        """``cfg`` with ``train.epochs`` raised so that the run sees ``train.min_samples``
        samples, counted over full epochs (``max_steps_per_epoch`` caps each epoch, not the count)."""
        wanted = cfg.train.min_samples
        if wanted is None:
            return cfg
        seen_per_epoch = max(1, full_steps_per_epoch) * cfg.train.batch_size * self.env.world_size
        epochs = -(-wanted // seen_per_epoch)
        if epochs <= cfg.train.epochs:
            return cfg
        if self.env.rank == 0:
            print(f"train.epochs raised from {cfg.train.epochs} to {epochs}: {seen_per_epoch} samples per epoch, "
                  f"train.min_samples={wanted} (pass train.epochs=N alone to train exactly N epochs)",
                  file=sys.stderr)
        return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=epochs))

    def _build_optimizers(self) -> dict[str, tuple[torch.optim.Optimizer, OptimConfig]]:
        """The main optimiser (``optim``) over every trainable parameter that is neither an
        outer parameter nor in one of the method's groups, then one per group, by name."""
        groups = self.method.parameter_groups(self.cfg.optim)
        names = [MAIN] + [g.name for g in groups]
        if len(set(names)) != len(names):
            raise ValueError(f"{type(self.method).__name__}: parameter group names must be unique and not "
                             f"'{MAIN}', got {names[1:]}")
        grouped = [p for g in groups for p in g.params]
        if len({id(p) for p in grouped}) != len(grouped):
            raise ValueError(f"{type(self.method).__name__}: a parameter is in two parameter groups")
        exclude = list(self.method.outer_parameters()) + grouped
        optimizers = {MAIN: (build_optimizer(self.method, self.cfg.optim, exclude=exclude), self.cfg.optim)}
        for group in groups:
            optimizers[group.name] = (optimizer_over(list(group.params), group.optim), group.optim)
        return optimizers

    # ----------------------------------------------------------------------------- loop
    def fit(self) -> None:
        self.progress = TrainingProgress(self.cfg.train.epochs, self.steps_per_epoch, self.step,
                                         enabled=self.cfg.train.progress and self.env.rank == 0)
        try:
            for epoch in range(self.start_epoch, self.cfg.train.epochs):
                self._train_epoch(epoch)
                last = epoch + 1 == self.cfg.train.epochs
                if last or (epoch + 1) % self.cfg.train.checkpoint_every == 0:
                    self._save(epoch + 1)
        except RuntimeError as err:
            if not (self.env.distributed and lost_ranks(err)):
                raise
            raise RanksLost(
                f"rank {self.env.rank} lost the other ranks at step {self.step} (one died, or did not answer "
                f"within train.dist_timeout_s={self.cfg.train.dist_timeout_s:g}): {str(err).splitlines()[0][:300]}. "
                f"Resume with 'contrastlab train --resume {self.run_dir}' ({self._kept_checkpoint()})."
            ) from None
        finally:
            self.progress.close()
            self.close()

    def train_steps(self, count: int) -> None:
        """``count`` optimisation steps on the first batches of the first epoch, without logging
        or checkpoints: for measurements (the bench counts one step's FLOPs this way)."""
        self.batches.set_epoch(0)
        generator = epoch_generator(self.cfg.train.seed, 0, 1 + self.env.rank)
        self.model.train()
        for _, batch in zip(range(count), self.loader):
            self._step(batch_to(batch, self.device, non_blocking=True), generator)

    def _kept_checkpoint(self) -> str:
        """Where a stopped run can resume from, for its error message."""
        saved = self.run_dir / ckpt.CHECKPOINT_NAME
        return f"the last good checkpoint is {saved}" if saved.exists() else "no checkpoint was written yet"

    def close(self) -> None:
        """Shut down the training loader's workers, flush the metrics and release the run folder
        (done by :meth:`fit`; idempotent). The workers would otherwise live on through the
        evaluation that follows training, holding their memory."""
        if getattr(self, "loader", None) is not None:
            self.loader.close()
        if getattr(self, "logger", None) is not None and not self.logger.closed:
            self.logger.close()
        if self.lock is not None:
            self.lock.release()

    def _train_epoch(self, epoch: int) -> None:
        cfg = self.cfg.train
        self.batches.set_epoch(epoch)
        generator = epoch_generator(cfg.seed, epoch, 1 + self.env.rank)
        self.model.train()
        self.progress.begin_epoch(epoch)
        window_start, window_images, window_loss, window_correct = time.perf_counter(), 0, [], []
        window_skipped, epoch_losses, epoch_correct, epoch_probed = None, [], 0, 0
        for i, batch in enumerate(self.loader):
            batch_size = len(batch["index"])
            out = self._step(batch_to(batch, self.device, non_blocking=True), generator)
            self.progress.advance(batch_size * self.env.world_size)
            if "skipped" in out:  # the method can skip batches: count them per window
                window_skipped = (window_skipped or 0) + out["skipped"]
            if not out.get("skipped"):
                loss = out["loss"].item()
                epoch_losses.append(loss)
                window_loss.append(loss)
            window_images += batch_size * self.env.world_size
            if "probe_correct" in out:
                window_correct.append(out["probe_correct"])
                epoch_correct, epoch_probed = epoch_correct + out["probe_correct"], epoch_probed + batch_size
            if self.step % cfg.log_every == 0 or i + 1 == self.steps_per_epoch:
                elapsed = time.perf_counter() - window_start
                record = {
                    "step": self.step,
                    "epoch": epoch + (i + 1) / self.steps_per_epoch,
                    "loss": sum(window_loss) / len(window_loss) if window_loss else float("nan"),
                    "lr": self.optimizers[MAIN][0].param_groups[0]["lr"],
                    "images_per_s": window_images / max(elapsed, 1e-9),
                }
                for name, (optimizer, _) in self.optimizers.items():
                    if name != MAIN:
                        record[f"lr/{name}"] = optimizer.param_groups[0]["lr"]
                if window_correct:
                    record["online_acc"] = 100.0 * sum(window_correct) / (len(window_correct) * batch_size)
                if window_skipped is not None:
                    record["skipped_steps"] = window_skipped
                record.update(out["extra"])
                self.logger.log(record)
                self.progress.logged(record)
                window_start, window_images, window_loss, window_correct = time.perf_counter(), 0, [], []
                window_skipped = None if window_skipped is None else 0
        epoch_loss = sum(epoch_losses) / len(epoch_losses) if epoch_losses else float("nan")
        self.logger.log({"step": self.step, "epoch": epoch + 1, "epoch_loss": epoch_loss})
        self.logger.flush()
        self.progress.end_epoch(epoch_loss, 100.0 * epoch_correct / epoch_probed if epoch_probed else None)

    def _step(self, batch: Batch, generator: torch.Generator) -> dict:
        """One optimisation step; returns the loss, the probe's correct count and extra scalars."""
        for optimizer, cfg in self.optimizers.values():
            set_learning_rate(optimizer, learning_rate(cfg, self.step, self.total_steps, self.steps_per_epoch))
        params = [view.sample(batch, generator) for view in self.views]
        views = [view.apply(batch, p) for view, p in zip(self.views, params)]
        if self.cfg.train.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) if torch.is_tensor(v) and v.dim() == 4 else v
                     for v in views]
        step = StepInput(views, params, self.views, batch, generator, self.step / self.total_steps,
                         self.step // self.steps_per_epoch)
        with self._autocast():
            out = self.model(step)
        loss = out["loss"]
        if "skip_step" in out:  # every rank skips when one asks (the collectives stay in step)
            if all_reduce_mean(out["skip_step"].float()) > 0:
                self.step += 1
                return {"loss": loss.detach(), "skipped": 1, "extra": {}}
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"loss became {loss.item()} at step {self.step}; stopped ({self._kept_checkpoint()}). "
                "Try a lower optim.lr, optim.grad_clip, or train.precision=fp32: an override after --resume "
                f"changes the run's saved config.yaml, e.g. 'contrastlab train --resume {self.run_dir} "
                f"optim.lr={self.optimizers[MAIN][1].lr / 2:g}'."
            )
        for optimizer, _ in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        for optimizer, cfg in self.optimizers.values():
            if cfg.grad_clip is not None:
                self.scaler.unscale_(optimizer)
                params = [p for group in optimizer.param_groups for p in group["params"]]
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            self.scaler.step(optimizer)
        self.scaler.update()
        self.method.on_after_optimizer_step((self.step + 1) / self.total_steps)
        self.step += 1

        result = {"loss": all_reduce_mean(loss.detach()), "extra": {}}
        if "skip_step" in out:
            result["skipped"] = 0
        for key, value in out.items():
            if key in ("loss", "features", "skip_step") or not torch.is_tensor(value):
                continue
            if value.numel() == 1:
                result["extra"][key] = value.item()
            elif value.dim() == 1:  # per-dimension diagnostics (MetaMask's mask): metrics.jsonl only
                result["extra"][key] = value.detach().float().cpu().tolist()
        if self.probe is not None:
            result["probe_correct"] = self._probe_step(out["features"], batch["labels"])
        return result

    def _probe_step(self, features: torch.Tensor, labels: torch.Tensor) -> int:
        logits = self.probe(features.float())
        loss = F.cross_entropy(logits, labels)
        self.probe_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.probe_optimizer.step()
        return int((logits.argmax(1) == labels).sum())

    def _autocast(self):  # noqa: ANN202
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ----------------------------------------------------------------------- checkpoints
    def _save(self, epochs_done: int) -> None:
        if self.env.rank != 0:
            return
        state = {
            "method": self.method.state_dict(),
            "optimizers": {name: optimizer.state_dict() for name, (optimizer, _) in self.optimizers.items()},
            "scaler": self.scaler.state_dict(),
            "epoch": epochs_done,
            "step": self.step,
            "config": self.cfg.to_dict(),
            "input_shape": list(self.input_shape),
            "preprocessing": preprocessing_record(self.data.train, self.data.normalize, self.cfg.data.image_size),
        }
        if self.probe is not None:
            state["probe"] = self.probe.state_dict()
            state["probe_optimizer"] = self.probe_optimizer.state_dict()
        ckpt.save_checkpoint(self.run_dir, state)

    def _restore(self) -> None:
        state = ckpt.load_checkpoint(self.run_dir, map_location=self.device)
        try:
            self.method.load_state_dict(state["method"])
            saved = state["optimizers"] if "optimizers" in state else {MAIN: state["optimizer"]}  # before groups
            if set(saved) != set(self.optimizers):
                raise ValueError(f"the checkpoint has optimisers {sorted(saved)}, this run {sorted(self.optimizers)}")
            for name, (optimizer, _) in self.optimizers.items():
                optimizer.load_state_dict(saved[name])
            if self.probe is not None and "probe" in state:
                self.probe.load_state_dict(state["probe"])
                self.probe_optimizer.load_state_dict(state["probe_optimizer"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise ckpt.CheckpointError(
                f"{self.run_dir / ckpt.CHECKPOINT_NAME} does not match this configuration "
                f"(method, backbone or heads changed?): {err}"
            ) from None
        self.scaler.load_state_dict(state["scaler"])
        self.start_epoch, self.step = int(state["epoch"]), int(state["step"])
        if self.start_epoch >= self.cfg.train.epochs:
            raise ckpt.CheckpointError(
                f"{self.run_dir} already finished {self.start_epoch} of train.epochs="
                f"{self.cfg.train.epochs}; raise train.epochs to train further"
            )
        if self.start_epoch * self.steps_per_epoch != self.step:
            raise ckpt.CheckpointError(
                f"{self.run_dir}: the checkpoint is at step {self.step} after {self.start_epoch} "
                f"epochs, which does not match {self.steps_per_epoch} steps per epoch; "
                "keep train.batch_size and the data unchanged when resuming"
            )
