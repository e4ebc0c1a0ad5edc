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

# Faults per cycle of allocating and freeing a 64 MiB tensor (16,384 pages), over the last
# `MEASURED` of `CYCLES` cycles. With memory retained, the first few cycles can still fault: a
# small allocation placed after the big block keeps it from merging into the heap's top, and the
# hole is a few bytes short of the next aligned request; within about eight cycles (exactly 8 in
# each of 30 runs on 2026-12-07, up to 8 in 100 runs before) the holes coalesce and every later
# cycle re-uses resident pages. The measured window starts well after that.
CYCLES, MEASURED = 40, 8
REFILL_FAULTS = f"""
import resource, sys, torch
from contrastlab.engine.host_memory import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory() and retain_freed_memory()  # idempotent
faults = []
for _ in range({CYCLES}):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(16 * 2**20); del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(*faults[-{MEASURED}:])
"""


def refill_faults(mode: str) -> list[int]:
    out = subprocess.run([sys.executable, "-c", REFILL_FAULTS, mode], capture_output=True, text=True, check=True)
    return [int(v) for v in out.stdout.split()]


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's")
def test_a_freed_large_tensor_is_refilled_without_page_faults():
    assert min(refill_faults("system")) > 8_000  # glibc unmapped it: every page faults again, every cycle
    assert sum(refill_faults("retain")) < 500


@pytest.mark.parametrize("retain", [True, False])
def test_the_trainer_applies_the_setting_as_configured(tmp_path, monkeypatch, retain):
    calls = []
    monkeypatch.setattr(trainer_module, "retain_freed_memory", lambda: calls.append(1))
    cfg = tiny_config(f"train.retain_freed_memory={str(retain).lower()}")
    Trainer(cfg, tmp_path / "run", init_distributed("cpu")).close()
    assert calls == ([1] if retain else [])
