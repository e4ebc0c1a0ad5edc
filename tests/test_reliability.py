"""Faults lose nothing and runs never clobber each other: run-folder locks and unique names,
full disks, killed checkpoint writes, damaged checkpoints, standard JSON metrics, and crashes
of a real ``contrastlab train`` process (``kill -9``, SIGINT) followed by ``--resume``."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from contrastlab.cli import main
from contrastlab.engine import checkpoint as ckpt
from contrastlab.engine.distributed import init_distributed
from contrastlab.engine.metrics import MetricsLogger
from contrastlab.engine.run_folder import RunFolderError, RunLock, create_unique
from contrastlab.engine.trainer import Trainer, TrainingDiverged
from contrastlab.methods.simclr import SimCLR
from test_trainer import TINY, losses, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def test_default_run_folders_are_unique_even_within_one_second(tmp_path):
    made = [create_unique(tmp_path / "runs" / "simclr-20261203-101010") for _ in range(3)]
    assert [p.name for p in made] == ["simclr-20261203-101010", "simclr-20261203-101010-2",
                                      "simclr-20261203-101010-3"]
    assert all(p.is_dir() for p in made)


def test_a_run_folder_in_use_refuses_a_second_writer(tmp_path):
    env = init_distributed("cpu")
    first = Trainer(tiny_config("train.epochs=1"), tmp_path, env)
    with pytest.raises(RunFolderError, match=rf"{tmp_path} is in use by another contrastlab process \(pid {os.getpid()}\)"):
        Trainer(tiny_config("train.epochs=1"), tmp_path, env)
    first.fit()  # fit releases the folder
    with pytest.raises(RunFolderError, match="already holds the checkpoint of an earlier run.*--resume"):
        Trainer(tiny_config("train.epochs=1"), tmp_path, env)
    RunLock(tmp_path).release()  # and a refused Trainer released it too


def test_the_lock_is_held_across_processes(tmp_path):
    """A second process (as a second `contrastlab train`) is refused while the lock is held."""
    held = RunLock(tmp_path)
    probe = ("import sys; from pathlib import Path; from contrastlab.engine.run_folder import RunLock, RunFolderError\n"
             "try:\n    RunLock(Path(sys.argv[1]))\nexcept RunFolderError as err:\n    print(err); sys.exit(3)\n")
    refused = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True)
    assert refused.returncode == 3 and "in use" in refused.stdout
    held.release()
    assert subprocess.run([sys.executable, "-c", probe, str(tmp_path)]).returncode == 0


def test_a_full_disk_keeps_the_old_checkpoint_and_says_so(tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path, {"old": torch.ones(2)})
    before = (tmp_path / ckpt.CHECKPOINT_NAME).read_bytes()

    def full_disk(state, path):  # what torch.save raises when the disk fills mid-write
        Path(path).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing "
                           "file data/0: file write failed")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(ckpt.CheckpointError, match=rf"could not write {tmp_path}/checkpoint.pt: the disk is full "
                                                   r".*MiB free.*the previous checkpoint.pt is unchanged"):
        ckpt.save_checkpoint(tmp_path, {"new": torch.zeros(2)})
    assert (tmp_path / ckpt.CHECKPOINT_NAME).read_bytes() == before
    assert list(tmp_path.glob(".*.tmp")) == []


def test_the_cli_reports_a_full_disk_in_one_line(tmp_path, monkeypatch, capsys):
    def full_disk(self, epochs_done):
        raise ckpt.CheckpointError("could not write X: the disk is full")

    monkeypatch.setattr(Trainer, "_save", full_disk)
    assert main(["train", "--run-dir", str(tmp_path), *TINY, "train.epochs=1", "eval.at_end=false"]) == 2
    assert capsys.readouterr().err.strip().endswith("error: could not write X: the disk is full")


def test_temporaries_left_by_a_killed_write_are_removed_on_the_next_start(tmp_path, capsys):
    stray = tmp_path / ".checkpoint.pt.abc123.tmp"
    stray.write_bytes(b"half a checkpoint")
    Trainer(tiny_config("train.epochs=1"), tmp_path, init_distributed("cpu")).close()
    assert not stray.exists()
    assert f"removed {stray}" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["eval", "export"])
def test_a_checkpoint_missing_keys_is_named(tmp_path, capsys, command):
    Trainer(tiny_config("train.epochs=1", "eval.at_end=false"), tmp_path, init_distributed("cpu")).fit()
    state = ckpt.load_checkpoint(tmp_path)
    del state["input_shape"], state["method"]
    torch.save(state, tmp_path / ckpt.CHECKPOINT_NAME)
    args = [command, str(tmp_path)] + (["--out", str(tmp_path / "b.safetensors")] if command == "export" else [])
    assert main(args) == 2
    assert "checkpoint.pt is not a contrastlab checkpoint: it lacks method, input_shape" in capsys.readouterr().err


def test_metrics_are_standard_json(tmp_path):
    logger = MetricsLogger(tmp_path)
    logger.log({"step": 1, "loss": float("nan"), "extra": [1.0, float("inf")]})
    line = (tmp_path / "metrics.jsonl").read_text().strip()
    assert "NaN" not in line and "Infinity" not in line
    assert json.loads(line, parse_constant=lambda token: pytest.fail(f"non-standard {token}")) == \
        {"step": 1, "loss": None, "extra": [1.0, None]}


def test_divergence_says_how_to_resume_with_a_changed_value(tmp_path, monkeypatch):
    original = SimCLR.training_step

    def poisoned(self, step):
        out = original(self, step)
        out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(SimCLR, "training_step", poisoned)
    with pytest.raises(TrainingDiverged, match=rf"contrastlab train --resume {tmp_path} optim.lr=0.025"):
        Trainer(tiny_config("train.epochs=1"), tmp_path, init_distributed("cpu")).fit()


def test_a_batch_larger_than_the_training_set_is_a_config_error(tmp_path, capsys):
    assert main(["train", "--run-dir", str(tmp_path), *TINY, "train.batch_size=512", "eval.at_end=false"]) == 2
    assert "train.batch_size=512 is larger than the 256 training" in capsys.readouterr().err


def test_an_empty_training_set_is_named(tmp_path, capsys):
    np.savez(tmp_path / "train.npz", x=np.zeros((0, 8, 8), np.uint8))
    np.savez(tmp_path / "test.npz", x=np.zeros((4, 8, 8), np.uint8))
    args = ["train", "--run-dir", str(tmp_path / "run"), *TINY, "data.name=npz", f"data.root={tmp_path}",
            "data.train_size=null", "data.test_size=null", "eval.at_end=false"]
    assert main(args) == 2
    assert "the training split of 'npz' holds no samples" in capsys.readouterr().err


# ------------------------------------------------------------------ real processes, real signals
CLI = [sys.executable, "-m", "contrastlab.cli"]
RUN = [*TINY, "train.epochs=3", "eval.at_end=false"]


def train_process(run_dir: Path, *extra: str, resume: bool = False, prelude: str = "") -> subprocess.Popen:
    """``contrastlab train`` in a child process (``prelude``: Python run first, to plant a fault)."""
    args = ["train", "--resume", str(run_dir), *extra] if resume else ["train", "--run-dir", str(run_dir), *RUN, *extra]
    code = f"{prelude}\nimport sys\nfrom contrastlab.cli import main\nsys.exit(main({args!r}))"
    # SIGINT back to its default in the child: a shell's background job (`cmd &`, as CI scripts
    # may start pytest) inherits it ignored, and Python then installs no KeyboardInterrupt handler
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("whole")
    process = train_process(run_dir)
    assert process.wait(timeout=300) == 0, process.stderr.read()
    return losses(run_dir)


KILL_IN_CHECKPOINT_WRITE = """
import os, signal, torch
_save, _calls = torch.save, []
def save(state, path):
    _calls.append(path)
    if len(_calls) == {n}:  # half-way through this checkpoint's write
        with open(path, "wb") as f:
            f.write(b"half")
        os.kill(os.getpid(), signal.SIGKILL)
    _save(state, path)
torch.save = save
"""


@pytest.mark.parametrize("write", [1, 2])
def test_kill_9_during_a_checkpoint_write_then_resume_equals_an_uninterrupted_run(tmp_path, uninterrupted, write):
    process = train_process(tmp_path, prelude=KILL_IN_CHECKPOINT_WRITE.format(n=write + 1))
    assert process.wait(timeout=300) == -signal.SIGKILL
    assert len(list(tmp_path.glob(".checkpoint.pt.*.tmp"))) == 1  # the killed write's temporary
    assert ckpt.load_checkpoint(tmp_path)["epoch"] == write  # the previous checkpoint is intact
    resumed = train_process(tmp_path, resume=True)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert list(tmp_path.glob(".*.tmp")) == []
    assert losses(tmp_path) == uninterrupted


def test_kill_9_at_a_random_moment_then_resume_equals_an_uninterrupted_run(tmp_path):
    longer = "train.epochs=20"  # 4 steps per epoch, each logged
    whole = train_process(tmp_path / "whole", longer)
    assert whole.wait(timeout=300) == 0, whole.stderr.read()
    target = random.randint(5, 70)  # killed once this step is logged: within an epoch or its checkpoint
    process = train_process(tmp_path / "killed", longer)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if metrics.exists() and metrics.read_text().count('"loss"') >= target:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL, "the run ended before it was killed"
    resumed = train_process(tmp_path / "killed", resume=True)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert losses(tmp_path / "killed") == losses(tmp_path / "whole")


def test_sigint_stops_cleanly_and_keeps_the_last_checkpoint(tmp_path):
    process = train_process(tmp_path, "train.epochs=1000")  # far more than can run before the signal
    deadline = time.monotonic() + 300
    while not (tmp_path / ckpt.CHECKPOINT_NAME).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130
    stderr = process.stderr.read()
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert ckpt.load_checkpoint(tmp_path)["epoch"] >= 1
    assert list(tmp_path.glob(".*.tmp")) == []
    RunLock(tmp_path).release()  # the folder is free again
