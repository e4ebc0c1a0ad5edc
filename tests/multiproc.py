"""Runs a test worker as a real multi-process gloo job on loopback, bounded in time."""

from __future__ import annotations

import datetime
import multiprocessing
import os
import socket
import sys
import traceback
from pathlib import Path
from typing import Callable

import torch
import torch.distributed

from contrastlab.core.distributed import DistEnv
from contrastlab.engine.distributed import cleanup_distributed, init_distributed


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, out_dir: str, body: Callable[[DistEnv], dict]) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        env = init_distributed("cpu", timeout=datetime.timedelta(seconds=60))
        torch.save(body(env), Path(out_dir) / f"rank{rank}.pt")
        torch.distributed.barrier()  # no rank tears down gloo while another is still using it
        cleanup_distributed()
    except BaseException:
        (Path(out_dir) / f"rank{rank}.err").write_text(traceback.format_exc())
        raise
    # With all work done and the group destroyed, leave without the interpreter's teardown: a
    # gloo background thread can still be joinable there, and its destructor aborts the process
    # ("terminate called without an active exception"), seen once in a while on CI.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(body: Callable[[DistEnv], dict], out_dir: Path, world: int = 2) -> list[dict]:
    """Run ``body(env) -> results`` on ``world`` spawned gloo ranks; returns each rank's results.

    ``body`` must be a top-level function of an importable module (spawn pickles it).
    """
    ctx = multiprocessing.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(r, world, port, str(out_dir), body)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    errors = "\n".join(f.read_text() for f in sorted(Path(out_dir).glob("*.err")))
    codes = [p.exitcode for p in procs]
    assert codes == [0] * world, f"worker exit codes {codes}\n{errors}"
    return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world)]
