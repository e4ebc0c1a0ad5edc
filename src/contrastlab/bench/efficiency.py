"""Hardware efficiency: the FLOPs of one training step, this machine's peak FLOP/s, and MFU.

MFU (model FLOPs utilisation) = FLOPs per training step x steps per second / peak FLOP/s, the
peak being the faster of a large matrix multiply and a large convolution in the step's compute
dtype, measured in the same process.
The FLOPs are what :class:`torch.utils.flop_counter.FlopCounterMode` counts: matrix
multiplies and convolutions, forward and backward (elementwise work, normalisation, pooling,
recurrent cells and the optimiser are not counted, as is usual for MFU).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from contrastlab.core.config import Config
from contrastlab.engine.distributed import init_distributed
from contrastlab.engine.setup import autocast_dtype, resolve_device
from contrastlab.engine.trainer import Trainer
from contrastlab.recipes import config_from

PEAK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def matmul_peak(dtype: torch.dtype, device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """The best FLOP/s of ``(size, size) @ (size, size)`` multiplies in ``dtype`` on ``device``."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    return 2 * size**3 / _best_time(lambda: a @ b, device, repeats)


def conv_peak(dtype: torch.dtype, device: torch.device, repeats: int = 5) -> float:
    """The best FLOP/s of a 3x3 convolution, 128 to 128 channels on a (64, 128, 32, 32)
    channels-last batch, in ``dtype`` on ``device``. On CPUs where torch's matmul library runs
    below the vector units' peak (MKL on AMD: 175 GFLOP/s fp32 on 2 cores where oneDNN's
    convolutions reach 300), this is the higher of the two."""
    x = torch.randn(64, 128, 32, 32, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(128, 128, 3, 3, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    return 2 * 64 * 32 * 32 * 128 * 128 * 9 / _best_time(lambda: F.conv2d(x, w, padding=1), device, repeats)


def machine_peaks(device: torch.device) -> dict[str, dict[str, float]]:
    """Per compute dtype this device trains in (fp32 and bf16, and fp16 on CUDA): the matmul
    and convolution FLOP/s measured now, and ``peak``, the higher of the two (what MFU divides by)."""
    names = ["fp32", "bf16", "fp16"] if device.type == "cuda" else ["fp32", "bf16"]
    peaks = {}
    for name in names:
        measured = {"matmul": matmul_peak(PEAK_DTYPES[name], device), "conv": conv_peak(PEAK_DTYPES[name], device)}
        peaks[name] = {**measured, "peak": max(measured.values())}
    return peaks


def compute_dtype(cfg: Config) -> str:
    """The name of the dtype the step's matrix multiplies run in (``train.precision`` resolved
    on this machine: ``auto`` is fp32 on a CPU without native bf16)."""
    dtype = autocast_dtype(cfg.train.precision, resolve_device(cfg.train.device))
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def step_flops(cfg: Config) -> int:
    """FLOPs of one training step of ``cfg`` (its second step: one-time set-up in the first,
    such as filling a queue, is not counted), in a throw-away run folder."""
    quiet = config_from(cfg, ["eval.at_end=false", "train.progress=false", "train.loggers=[jsonl]",
                              "train.epochs=1", "train.max_steps_per_epoch=2"])
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(quiet, Path(folder), init_distributed(quiet.train.device))
        try:
            trainer.train_steps(1)
            with FlopCounterMode(display=False) as counter:
                trainer.train_steps(1)
        finally:
            trainer.close()
    return counter.get_total_flops()


def mfu(flops_per_step: float, images_per_s: float, images_per_step: int, peak: float) -> float:
    """Model FLOPs utilisation in [0, 1]: achieved FLOP/s over ``peak``."""
    return flops_per_step * images_per_s / images_per_step / peak


def _best_time(work, device: torch.device, repeats: int) -> float:
    """The least wall time of ``repeats`` calls of ``work`` (one untimed first)."""
    best = float("inf")
    for attempt in range(repeats + 1):
        _synchronize(device)
        start = time.perf_counter()
        work()
        _synchronize(device)
        if attempt:
            best = min(best, time.perf_counter() - start)
    return best


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
