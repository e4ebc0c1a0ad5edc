"""Freed host memory kept in the process: large tensors re-use their pages instead of faulting
them in again, and the trainer applies it as ``train.retain_freed_memory`` says."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from contrastlab.engine import trainer as trainer_module
from contrastlab.engine.distributed import init_distributed
from contrastlab.engine.trainer import Trainer
from test_trainer import tiny_config

GLIBC = platform.libc_ver()[0] == "glibc"

# Faults taken by a 64 MiB tensor filled again after the first one was freed (16,384 pages).
REFILL_FAULTS = """
import resource, sys, torch
from contrastlab.engine.host_memory import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory() and retain_freed_memory()  # idempotent
x = torch.ones(16 * 2**20); del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.ones(16 * 2**20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def refill_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", REFILL_FAULTS, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's")
def test_a_freed_large_tensor_is_refilled_without_page_faults():
    assert refill_faults("system") > 8_000  # glibc unmapped it: every page faults again
    assert refill_faults("retain") < 500


@pytest.mark.parametrize("retain", [True, False])
def test_the_trainer_applies_the_setting_as_configured(tmp_path, monkeypatch, retain):
    calls = []
    monkeypatch.setattr(trainer_module, "retain_freed_memory", lambda: calls.append(1))
    cfg = tiny_config(f"train.retain_freed_memory={str(retain).lower()}")
    Trainer(cfg, tmp_path / "run", init_distributed("cpu")).close()
    assert calls == ([1] if retain else [])
