"""Training throughput by ``data.num_workers``: does augmenting in loader workers take the views
off the critical path?

Trains one recipe for a few epochs (no evaluation) once per worker count, each in a child
process, and reports the median samples/s of the logged windows after the first epoch and the
time per epoch they imply. Results go to ``benchmarks/results/<out>.{json,md}``.

    .venv/bin/python benchmarks/loader_workers.py --out graph_loader_workers \\
        --recipe configs/graphcl-proteins-gin-control.yaml --workers 0 1 2 --epochs 3 \\
        --common data.root=../shared/data/tu/PROTEINS
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from methods import CHILD, ROOT
from report import write_results


def throughput(recipe: str, workers: int, epochs: int, common: list[str]) -> dict:
    """One training run with ``workers`` loader workers: its samples/s after the first epoch."""
    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder) / "run"
        argv = [sys.executable, "-c", CHILD, "train", recipe, "--run-dir", str(run_dir), *common,
                f"data.num_workers={workers}", f"train.epochs={epochs}", "eval.at_end=false",
                "train.progress=false", "train.log_every=1"]
        done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            raise SystemExit(f"workers={workers} failed:\n{done.stderr[-3000:]}")
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["images_per_s"] for r in records if "images_per_s" in r and r["epoch"] > 1]
    if not speeds:
        raise SystemExit("no logged window after the first epoch: raise --epochs")
    steps_per_epoch = max(r["step"] for r in records if r.get("epoch") == 1)
    return {"workers": workers, "samples_per_s": statistics.median(speeds), "steps_per_epoch": steps_per_epoch,
            "windows": len(speeds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", type=int, required=True, help="training samples (for the time per epoch)")
    parser.add_argument("--common", nargs="*", default=[], metavar="OVERRIDE")
    args = parser.parse_args()
    rows = [throughput(args.recipe, w, args.epochs, args.common) for w in args.workers]
    base = rows[0]["samples_per_s"]
    command = shlex.join(["python", "benchmarks/loader_workers.py", *sys.argv[1:]])
    lines = [f"# Training throughput by data.num_workers: {args.recipe}", "", f"`{command}`", "",
             f"Median samples/s over the logged steps after the first epoch ({args.epochs} epochs, "
             f"{args.size} training samples, no evaluation); time per epoch = samples / (samples/s).", "",
             "| data.num_workers | samples/s | time per epoch (s) | vs 0 workers |", "|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['samples_per_s']:.0f} | {args.size / r['samples_per_s']:.2f} | "
              f"{r['samples_per_s'] / base:.2f}x |" for r in rows]
    print("\n".join(lines))
    write_results(args.out, rows, lines, command)


if __name__ == "__main__":
    main()
