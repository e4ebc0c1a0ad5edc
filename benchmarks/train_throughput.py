"""Training throughput (images/s) of SimCLR steps: fp32 vs the default CPU settings.

Runs the real trainer (views made on the device, forward, backward, LARS step) on 32x32 RGB
images for a few steps per setting and reports the median images/s over the logged windows
after the first (warm-up) epoch.

    .venv/bin/python benchmarks/train_throughput.py            # writes benchmarks/results/train_throughput.{json,md}
    .venv/bin/python benchmarks/train_throughput.py --quick    # fewer steps, nothing written
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from contrastlab.engine.distributed import init_distributed
from contrastlab.engine.trainer import Trainer
from contrastlab.recipes import load_config

RESULTS = Path(__file__).parent / "results"
SETTINGS = {
    "fp32": ["train.precision=fp32", "train.channels_last=false"],
    "channels_last": ["train.precision=fp32", "train.channels_last=true"],
    "bf16": ["train.precision=bf16", "train.channels_last=false"],
    "default (channels_last + bf16)": [],
}
BACKBONES = {
    "convnet": (["backbone.name=convnet"], 256),
    "resnet18 (CIFAR stem)": (["backbone.name=resnet18", "backbone.options={cifar_stem: true}"], 128),
}


def measure(data_root: Path, overrides: list[str], batch_size: int, steps: int, run_dir: Path) -> float:
    cfg = load_config(overrides=[
        "data.name=npz", f"data.root={data_root}", "augment.preset=simclr-cifar",
        f"train.batch_size={batch_size}", "train.epochs=2", f"train.max_steps_per_epoch={steps}",
        f"train.log_every={max(1, steps // 3)}", "train.progress=false", "train.device=cpu",
        "eval.at_end=false", *overrides,
    ])
    Trainer(cfg, run_dir, init_distributed("cpu")).fit()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timed = [r["images_per_s"] for r in records if "images_per_s" in r and r["epoch"] > 1]
    return statistics.median(timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 steps per epoch; print only")
    args = parser.parse_args()
    steps = 3 if args.quick else 9
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        for split in ("train", "test"):
            np.savez(tmp / f"{split}.npz", x=rng.integers(0, 256, (2048, 32, 32, 3), dtype=np.uint8))
        for backbone, (backbone_overrides, batch) in BACKBONES.items():
            for setting, overrides in SETTINGS.items():
                ips = measure(tmp, backbone_overrides + overrides, batch, steps, tmp / f"{backbone}-{setting}")
                rows.append({"backbone": backbone, "setting": setting, "batch": batch, "images_per_s": ips})
                print(f"{backbone:<22} {setting:<32} batch {batch:<4} {ips:8.1f} images/s", flush=True)
    for row in rows:
        base = next(r for r in rows if r["backbone"] == row["backbone"] and r["setting"] == "fp32")
        row["speedup_vs_fp32"] = row["images_per_s"] / base["images_per_s"]
    if args.quick:
        return
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
           "python": sys.version.split()[0], "command": "python benchmarks/train_throughput.py"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_throughput.json").write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    lines = [
        "# SimCLR training throughput on CPU", "",
        f"`{env['command']}` — torch {env['torch']}, {env['threads']} threads, {env['machine']}.",
        "Images/s counts source images (each gives two views) through augmentation, forward, "
        "backward and the LARS step; median over logged windows after a warm-up epoch.", "",
        "| backbone | setting | batch | images/s | vs fp32 |", "|---|---|---|---|---|",
    ]
    lines += [f"| {r['backbone']} | {r['setting']} | {r['batch']} | {r['images_per_s']:.1f} | "
              f"{r['speedup_vs_fp32']:.2f}x |" for r in rows]
    (RESULTS / "train_throughput.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
