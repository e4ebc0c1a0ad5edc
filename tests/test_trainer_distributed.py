"""The trainer as `torchrun --nproc_per_node 2` runs it: 2 gloo ranks on CPU."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from contrastlab.core.distributed import DistEnv
from contrastlab.engine.checkpoint import load_checkpoint
from contrastlab.engine.trainer import Trainer
from multiproc import run_ranks
from test_trainer import tiny_config


def train(env: DistEnv, run_dir: str) -> dict:
    cfg = tiny_config("train.epochs=2", "method.name=moco", "method.queue_size=64")
    trainer = Trainer(cfg, Path(run_dir), env)
    trainer.fit()
    return {"state": trainer.method.state_dict(), "steps": trainer.step,
            "records": len(trainer.logger.records)}


def test_ddp_training_keeps_ranks_identical_and_rank0_writes(tmp_path):
    ranks = run_ranks(functools.partial(train, run_dir=str(tmp_path / "run")), tmp_path)
    # 256 images / 2 ranks / batch 64 = 2 steps per epoch
    assert [r["steps"] for r in ranks] == [4, 4]
    a, b = (r["state"] for r in ranks)
    # DDP-averaged gradients and identical queues: the replicas' weights never diverge. (BatchNorm
    # running statistics are per rank between DDP's buffer broadcasts, as in any DDP job.)
    weights = [k for k in a if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert "queue.features" in weights and "teacher.module.0.features.0.weight" in weights
    for key in weights:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key
    assert ranks[0]["records"] > 0 and ranks[1]["records"] == 0  # only rank 0 logs
    saved = load_checkpoint(tmp_path / "run")
    assert saved["step"] == 4 and torch.equal(saved["method"]["queue.features"], a["queue.features"])


def train_streamed(env: DistEnv, run_dir: str) -> dict:
    from contrastlab.data import DATASETS
    from contrastlab.data.dataset import SampleKey
    from test_loading import PerSample

    def load(split, root=None, size=None, seed=0):
        return PerSample(DATASETS.get("digits")(split, root=root, size=size, seed=seed))

    DATASETS._entries["per_sample_digits"] = (load, "test: digits one sample at a time")
    cfg = tiny_config("train.epochs=1", "data.name=per_sample_digits", "eval.at_end=false")
    trainer = Trainer(cfg, Path(run_dir), env)
    trainer.fit()
    seen = [k.index for k in trainer.loader.dataset.keys if isinstance(k, SampleKey)]
    return {"state": trainer.method.state_dict(), "seen": seen}


def test_ddp_ranks_read_disjoint_shards_of_a_streamed_dataset(tmp_path):
    ranks = run_ranks(functools.partial(train_streamed, run_dir=str(tmp_path / "run")), tmp_path)
    seen = [set(r["seen"]) for r in ranks]
    assert [len(r["seen"]) for r in ranks] == [128, 128] and len(seen[0]) == len(seen[1]) == 128
    assert not seen[0] & seen[1]  # each rank its own shard of the epoch's permutation
    a, b = (r["state"] for r in ranks)
    for key in (k for k in a if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))):
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key
