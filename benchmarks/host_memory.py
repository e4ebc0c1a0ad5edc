"""SimCLR's training step with and without ``train.retain_freed_memory``: milliseconds per step,
page faults per step, and MFU against this run's peaks (the faster of matmul and convolution,
and the matmul alone).

The setting is process-wide and cannot be undone, so every measurement is its own process
(``--child``); the two settings alternate over ``--rounds`` so that drift in the machine's
load hits both alike, and the table gives the median and the best round.

    flock /tmp/timing.lock .venv/bin/python benchmarks/host_memory.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from report import write_results

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "simclr-gray-small-convnet.yaml"
BACKBONES = {"convnet": [], "resnet18": ["backbone.name=resnet18", "backbone.options={cifar_stem: true}"]}
STEPS = {"convnet": 30, "resnet18": 4}
COMMON = ["data.train_size=10240", "data.test_size=500", "eval.at_end=false", "train.progress=false",
          "train.loggers=[jsonl]", "train.epochs=1", "train.max_steps_per_epoch=40", "train.online_probe=false",
          "train.precision=bf16"]


def measure(backbone: str, retain: bool) -> dict:
    """One process's numbers: FLOPs per step, the peaks, then ``STEPS`` timed trainer steps
    after two untimed ones."""
    from contrastlab.bench.efficiency import machine_peaks, step_flops
    from contrastlab.engine.distributed import init_distributed
    from contrastlab.engine.trainer import Trainer
    from contrastlab.recipes import config_from

    overrides = COMMON + BACKBONES[backbone] + [f"train.retain_freed_memory={str(retain).lower()}"]
    cfg = config_from(RECIPE, overrides)
    flops = step_flops(cfg)
    peaks = machine_peaks(torch.device("cpu"))["bf16"]
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(cfg, Path(folder), init_distributed("cpu"))
        trainer.train_steps(2)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        trainer.train_steps(STEPS[backbone])
        seconds = (time.perf_counter() - start) / STEPS[backbone]
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / STEPS[backbone]
        trainer.close()
    return {"backbone": backbone, "retain": retain, "ms_per_step": 1000 * seconds, "faults_per_step": faults,
            "gflop_per_step": flops / 1e9, "peak_gflops": peaks["peak"] / 1e9, "matmul_gflops": peaks["matmul"] / 1e9,
            "mfu": flops / seconds / peaks["peak"], "mfu_of_matmul": flops / seconds / peaks["matmul"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--out", default="host_memory")
    parser.add_argument("--child", nargs=2, metavar=("BACKBONE", "RETAIN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1] == "true")))
        return

    runs = []
    for round_ in range(args.rounds):
        for backbone in args.backbones:
            for retain in (False, True):
                out = subprocess.run([sys.executable, __file__, "--child", backbone, str(retain).lower()],
                                     capture_output=True, text=True, check=True)
                runs.append(json.loads(out.stdout.splitlines()[-1]))
                print(f"round {round_ + 1}: {backbone} retain={retain}: {runs[-1]['ms_per_step']:.0f} ms/step, "
                      f"{runs[-1]['faults_per_step']:.0f} faults/step", flush=True)

    rows = []
    for backbone in args.backbones:
        for retain in (False, True):
            mine = [r for r in runs if r["backbone"] == backbone and r["retain"] == retain]
            ms = [r["ms_per_step"] for r in mine]
            rows.append({"backbone": backbone, "retain_freed_memory": retain, "rounds": mine,
                         "median_ms": statistics.median(ms), "best_ms": min(ms),
                         "median_faults": statistics.median(r["faults_per_step"] for r in mine),
                         "gflop_per_step": mine[0]["gflop_per_step"],
                         "median_mfu": statistics.median(r["mfu"] for r in mine),
                         "median_mfu_of_matmul": statistics.median(r["mfu_of_matmul"] for r in mine)})
    command = "flock /tmp/timing.lock .venv/bin/python benchmarks/host_memory.py " + " ".join(sys.argv[1:])
    lines = [
        "# Host memory kept in the process (`train.retain_freed_memory`)",
        "",
        f"SimCLR's trainer step on Fashion-MNIST, batch 256, bf16 + channels-last, {torch.get_num_threads()} threads "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); {args.rounds} alternating rounds, each "
        "its own process. MFU: the step's FLOPs (FlopCounterMode) x steps/s over the bf16 peak measured in the same "
        "process (the faster of a 2048² matmul and a 3x3 convolution), and over the matmul alone.",
        "",
        f"Command: `{command}`",
        "",
        "| backbone | retain freed memory | GFLOP/step | ms/step (median) | ms/step (best) | page faults/step | "
        "MFU % | MFU % of matmul peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['backbone']} | {'yes' if row['retain_freed_memory'] else 'no'} | "
                     f"{row['gflop_per_step']:.1f} | {row['median_ms']:.0f} | {row['best_ms']:.0f} | "
                     f"{row['median_faults']:.0f} | {100 * row['median_mfu']:.1f} | "
                     f"{100 * row['median_mfu_of_matmul']:.1f} |")
    write_results(args.out, rows, lines, command)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
