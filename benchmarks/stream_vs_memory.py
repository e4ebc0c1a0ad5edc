"""Training images/s of a streamed image folder vs the same images in memory, at one training size.

    python benchmarks/stream_vs_memory.py /tmp/bench-images --out stream_vs_memory \\
        --arm convnet=backbone.name=convnet --arm resnet18=backbone.name=resnet18 --workers 1 2

For each arm (recipe overrides) the folder is loaded twice through the ``folder`` loader with
``data.image_size=SIZE``: in memory (every image decoded once, resized and centre-cropped to
SIZE; the views crop on the device) and streamed (decoded in ``data.num_workers`` DataLoader
workers, each view's random resized crop taken at decode time from the full-resolution image
to SIZE). Each timing is the wall-clock time of ``--steps`` training steps after ``--warmup``,
loading included (what a run sees); the arms alternate between the two paths ``--repeats``
times and the median is reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from contrastlab.data.dataset import batch_to
from contrastlab.engine.distributed import init_distributed
from contrastlab.engine.trainer import Trainer
from contrastlab.recipes import load_config
from report import write_results

RECIPE = Path(__file__).resolve().parent.parent / "configs" / "simclr-folder-convnet.yaml"


def images_per_second(overrides: list[str], steps: int, warmup: int, run_dir: Path) -> float:
    """Training images/s of ``steps`` steps after ``warmup``, data loading included."""
    cfg = load_config(RECIPE, [*overrides, "train.progress=false", "eval.at_end=false", "train.epochs=1",
                               f"train.max_steps_per_epoch={steps + warmup}"])
    trainer = Trainer(cfg, run_dir, init_distributed(cfg.train.device))
    trainer.batches.set_epoch(0)
    generator = torch.Generator().manual_seed(1)
    trainer.method.train()
    start = None
    for i, batch in enumerate(trainer.loader):
        if i == warmup:
            start = time.perf_counter()
        trainer._step(batch_to(batch, trainer.device), generator)
    elapsed = time.perf_counter() - start
    return steps * cfg.train.batch_size / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="an image folder with train/ (e.g. from make_image_folder.py)")
    parser.add_argument("--arm", action="append", required=True, help="name=override[,override...]")
    parser.add_argument("--size", type=int, default=64, help="data.image_size and the training crop size")
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out")
    args = parser.parse_args()
    common = [f"data.root={args.folder}", f"data.image_size={args.size}", f"augment.size={args.size}",
              f"train.batch_size={args.batch_size}"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for text in args.arm:
            name, _, overrides = text.partition("=")
            arm = overrides.split(",")
            paths = {"in memory": ["data.in_memory=true", "data.num_workers=0"]}
            paths.update({f"streamed, {w} worker(s)": ["data.in_memory=false", f"data.num_workers={w}"]
                          for w in args.workers})
            times: dict[str, list[float]] = {path: [] for path in paths}
            for repeat in range(args.repeats):
                for path, switches in paths.items():
                    run = Path(tmp) / f"{name}-{len(rows)}-{repeat}-{len(times[path])}"
                    times[path].append(images_per_second(common + arm + switches, args.steps, args.warmup, run))
                    print(f"{name} {path}: {times[path][-1]:.0f} images/s", file=sys.stderr)
            memory = statistics.median(times["in memory"])
            for path, values in times.items():
                rows.append({"arm": name, "overrides": arm, "path": path, "images_per_s": statistics.median(values),
                             "runs": values, "vs_in_memory": statistics.median(values) / memory})
    lines = [
        "# Streamed vs in-memory training throughput",
        "",
        f"Folder `{args.folder}`; training size {args.size} px (in memory: decoded once to {args.size} px, crops on the "
        f"device; streamed: crops at decode from the full image), batch {args.batch_size}, {args.steps} timed steps "
        f"after {args.warmup}, loading included; median of {args.repeats} alternating repeats; {os.cpu_count()} CPUs "
        "shared by the trainer's threads and the decoding workers.",
        "",
        "| arm | path | images/s | vs in memory |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['arm']} | {r['path']} | {r['images_per_s']:.0f} | {r['vs_in_memory']:.2f} |" for r in rows]
    lines += ["", f"Command: `python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`"]
    print("\n".join(lines))
    if args.out:
        write_results(args.out, rows, lines, " ".join(sys.argv))


if __name__ == "__main__":
    main()
