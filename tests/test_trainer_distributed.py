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


def _rank_that_dies(rank: int, port: int, out_dir: str) -> None:
    """Rank 1 exits abruptly at its third step; rank 0 records what it raised, and when."""
    import datetime
    import os
    import time

    from contrastlab.engine.distributed import init_distributed
    from contrastlab.engine.trainer import RanksLost
    from contrastlab.methods.simclr import SimCLR

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    env = init_distributed("cpu", timeout=datetime.timedelta(seconds=20))
    original, calls = SimCLR.training_step, []

    def step(self, batch):
        calls.append(1)
        if rank == 1 and len(calls) == 3:
            os._exit(1)
        return original(self, batch)

    SimCLR.training_step = step
    start = time.monotonic()
    try:
        Trainer(tiny_config("train.epochs=3"), Path(out_dir) / "run", env).fit()
    except RanksLost as err:
        (Path(out_dir) / "rank0.txt").write_text(f"{time.monotonic() - start:.1f}\n{err}")
    os._exit(0)


def test_when_a_rank_dies_the_other_stops_with_a_clear_message_in_bounded_time(tmp_path):
    import multiprocessing

    from multiproc import free_port

    ctx = multiprocessing.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_rank_that_dies, args=(rank, port, str(tmp_path))) for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    alive = [p.is_alive() for p in procs]
    for p in procs:
        p.kill()
    assert alive == [False, False], "a rank hung"
    seconds, message = (tmp_path / "rank0.txt").read_text().split("\n", 1)
    assert float(seconds) < 60
    assert "rank 0 lost the other ranks at step 2" in message and "--resume" in message  # 2 steps per epoch
