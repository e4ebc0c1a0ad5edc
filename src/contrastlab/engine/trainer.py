"""One training loop for every method: views, precision, optimiser, schedule, checkpoints, logs."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from contrastlab.core.config import Config, save_config
from contrastlab.engine import checkpoint as ckpt
from contrastlab.core.distributed import DistEnv, all_reduce_mean, shard_indices
from contrastlab.engine.distributed import maybe_sync_batchnorm, wrap_ddp
from contrastlab.engine.metrics import MetricsLogger
from contrastlab.core.optim import build_optimizer, learning_rate, set_learning_rate
from contrastlab.engine.setup import autocast_dtype, load_data, make_method, make_views, view_shape
from contrastlab.methods.base import StepInput


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A CPU generator determined by (seed, epoch, stream): resuming at an epoch boundary
    replays exactly the same data order (stream 0) and augmentations (stream 1 + rank)."""
    return torch.Generator().manual_seed(((seed * 1_000_003) + epoch) * 1_009 + stream)


class Trainer:
    """Trains ``cfg.method`` on ``cfg.data``; writes everything to ``run_dir``.

    Layout of ``run_dir``: ``config.yaml``, ``checkpoint.pt`` (every
    ``train.checkpoint_every`` epochs and at the end), ``metrics.jsonl``, ``metrics.csv``,
    ``tensorboard/`` (when tensorboard is installed).
    """

    def __init__(self, cfg: Config, run_dir: Path, env: DistEnv, resume: bool = False) -> None:
        self.cfg, self.run_dir, self.env = cfg, Path(run_dir), env
        self.device = env.device
        self.amp_dtype = autocast_dtype(cfg.train.precision, self.device)
        torch.manual_seed(cfg.train.seed)

        self.data = load_data(cfg)
        self.views = make_views(cfg, self.data)
        self.input_shape = view_shape(cfg, self.data)
        method = make_method(cfg, self.input_shape, len(self.data.train))
        method = maybe_sync_batchnorm(method, cfg.train.sync_batchnorm, env).to(self.device)
        if cfg.train.channels_last:
            method = method.to(memory_format=torch.channels_last)
        self.method = method
        self.model = wrap_ddp(method, env)
        self.optimizer = build_optimizer(method, cfg.optim, exclude=method.outer_parameters())
        method.attach_optimizer(self.optimizer)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        labels = self.data.train.labels
        self.probe: nn.Linear | None = None
        if cfg.train.online_probe and labels is not None:
            self.probe = nn.Linear(method.backbone.out_dim, self.data.train.num_classes).to(self.device)
            self.probe_optimizer = torch.optim.Adam(self.probe.parameters(), lr=1e-3)

        per_rank = len(self.data.train) // env.world_size
        self.steps_per_epoch = per_rank // cfg.train.batch_size
        if cfg.train.max_steps_per_epoch is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.train.max_steps_per_epoch)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"train.batch_size={cfg.train.batch_size} is larger than the {per_rank} training "
                f"images per process of '{cfg.data.name}'; lower train.batch_size"
            )
        self.total_steps = self.steps_per_epoch * cfg.train.epochs
        self.start_epoch, self.step = 0, 0
        if resume:
            self._restore()
        if env.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
        self.logger = MetricsLogger(self.run_dir, self.step if resume else None, enabled=env.rank == 0)

    # ----------------------------------------------------------------------------- loop
    def fit(self) -> None:
        try:
            for epoch in range(self.start_epoch, self.cfg.train.epochs):
                self._train_epoch(epoch)
                last = epoch + 1 == self.cfg.train.epochs
                if last or (epoch + 1) % self.cfg.train.checkpoint_every == 0:
                    self._save(epoch + 1)
        finally:
            self.logger.close()

    def _train_epoch(self, epoch: int) -> None:
        cfg = self.cfg.train
        order = torch.randperm(len(self.data.train), generator=epoch_generator(cfg.seed, epoch, 0))
        local = shard_indices(order, self.env)
        generator = epoch_generator(cfg.seed, epoch, 1 + self.env.rank)
        self.model.train()
        bar = tqdm(
            range(self.steps_per_epoch),
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not cfg.progress or self.env.rank != 0,
            dynamic_ncols=True,
        )
        window_start, window_images, window_loss, window_correct = time.perf_counter(), 0, [], []
        epoch_losses = []
        for i in bar:
            index = local[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            out = self._step(self._batch(index), generator)
            loss = out["loss"].item()
            epoch_losses.append(loss)
            window_loss.append(loss)
            window_images += len(index) * self.env.world_size
            if "probe_correct" in out:
                window_correct.append(out["probe_correct"])
            if self.step % cfg.log_every == 0 or i + 1 == self.steps_per_epoch:
                elapsed = time.perf_counter() - window_start
                record = {
                    "step": self.step,
                    "epoch": epoch + (i + 1) / self.steps_per_epoch,
                    "loss": sum(window_loss) / len(window_loss),
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "images_per_s": window_images / max(elapsed, 1e-9),
                }
                if window_correct:
                    record["online_acc"] = 100.0 * sum(window_correct) / (len(window_correct) * len(index))
                record.update(out["extra"])
                self.logger.log(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.0f}")
                window_start, window_images, window_loss, window_correct = time.perf_counter(), 0, [], []
        self.logger.log({"step": self.step, "epoch": epoch + 1, "epoch_loss": sum(epoch_losses) / len(epoch_losses)})
        self.logger.flush()

    def _batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        train = self.data.train
        batch = {"images": train.images[index], "index": index}
        if train.labels is not None:
            batch["labels"] = train.labels[index]
        if train.targets is not None:
            batch["targets"] = train.targets[index]
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _step(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict:
        """One optimisation step; returns the loss, the probe's correct count and extra scalars."""
        lr = learning_rate(self.cfg.optim, self.step, self.total_steps, self.steps_per_epoch)
        set_learning_rate(self.optimizer, lr)
        params = [view.sample(batch, generator) for view in self.views]
        views = [view.apply(batch, p) for view, p in zip(self.views, params)]
        if self.cfg.train.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        step = StepInput(views, params, self.views, batch, generator, self.step / self.total_steps)
        with self._autocast():
            out = self.model(step)
        loss = out["loss"]
        if not torch.isfinite(loss):
            saved = self.run_dir / ckpt.CHECKPOINT_NAME
            kept = f"the last good checkpoint is {saved}" if saved.exists() else "no checkpoint was written yet"
            raise TrainingDiverged(
                f"loss became {loss.item()} at step {self.step}; stopped ({kept}). "
                "Try a lower optim.lr, optim.grad_clip, or train.precision=fp32."
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.optim.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.method.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.on_after_optimizer_step((self.step + 1) / self.total_steps)
        self.step += 1

        result = {"loss": all_reduce_mean(loss.detach()), "extra": {}}
        for key, value in out.items():
            if key in ("loss", "features") or not torch.is_tensor(value):
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
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epochs_done,
            "step": self.step,
            "config": self.cfg.to_dict(),
            "input_shape": list(self.input_shape),
        }
        if self.probe is not None:
            state["probe"] = self.probe.state_dict()
            state["probe_optimizer"] = self.probe_optimizer.state_dict()
        ckpt.save_checkpoint(self.run_dir, state)

    def _restore(self) -> None:
        state = ckpt.load_checkpoint(self.run_dir, map_location=self.device)
        try:
            self.method.load_state_dict(state["method"])
            self.optimizer.load_state_dict(state["optimizer"])
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
