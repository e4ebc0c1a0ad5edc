"""Running a bench cell (a child process, resumable) and reading what it measured."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from contrastlab.bench.suite import UNTRAINED, Cell

RECORD = "bench_cell.json"  # written into a run folder once its cell has finished
LOG = "bench.log"  # the child's stdout and stderr


class CellFailed(RuntimeError):
    """A cell's training or evaluation failed; the message holds the end of its log."""


def run_cell(cell: Cell, runs: Path, resume: bool = True) -> tuple[dict, bool]:
    """Train and evaluate ``cell`` into ``runs/<cell.key>`` in a child process, unless (with
    ``resume``) that folder holds a finished run of the same recipe and overrides. Returns the
    cell's record (recipe, overrides, wall time, peak memory) and whether it was read."""
    run_dir = runs / cell.key
    record_path = run_dir / RECORD
    identity = {"recipe": str(cell.recipe), "overrides": list(cell.overrides)}
    if resume and record_path.is_file() and (run_dir / "results.json").is_file():
        record = json.loads(record_path.read_text())
        if {k: record.get(k) for k in identity} == identity:
            return record, True
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    peaks = run_dir / "bench_peaks.json"
    argv = [sys.executable, "-m", "contrastlab.bench.child", str(peaks), str(cell.recipe), str(run_dir),
            *cell.overrides]
    start = time.perf_counter()
    with open(run_dir / LOG, "w") as log:
        done = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT)
    wall_s = time.perf_counter() - start
    if done.returncode != 0 or not peaks.is_file():
        tail = (run_dir / LOG).read_text()[-2000:]
        raise CellFailed(f"cell {cell.key} failed (exit code {done.returncode}; log {run_dir / LOG}):\n{tail}")
    record = {**identity, "wall_s": wall_s, **json.loads(peaks.read_text())}
    record_path.write_text(json.dumps(record, indent=2))
    return record, False


def scores(results: dict, where: Path) -> dict:
    """The headline numbers of one column (``trained`` or ``random_init``) of a results.json:
    kNN and linear top-1 (classification), SVM cross-validation accuracy (graphs), mean ridge
    R² and MSE (regression, with per-target lists), and the features' effective rank."""
    out = {}
    if "knn" in results:
        out["knn"], out["linear"] = results["knn"]["accuracy"], results["linear"]["accuracy"]
    if "svm" in results:
        out["svm"] = results["svm"]["accuracy"]
    if "regression" in results:
        regression = results["regression"]
        out.update(r2_mean=regression["r2_mean"], mse_mean=regression["mse_mean"],
                   r2=regression["r2"], mse=regression["mse"])
    if not out:
        raise ValueError(f"{where}: the results hold neither knn/linear, svm nor regression")
    if "diagnostics" in results:
        out["rank"] = results["diagnostics"]["effective_rank"]
    return out


def training_records(run_dir: Path) -> list[dict]:
    """The training windows logged in ``run_dir/metrics.jsonl`` (records with ``images_per_s``)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, filter(str.strip, lines)) if "images_per_s" in r]


def median_speed(run_dir: Path) -> float | None:
    """Median images/s over the logged training windows, the first (warm-up) dropped when there
    are more."""
    speeds = [r["images_per_s"] for r in training_records(run_dir)]
    return statistics.median(speeds[1:] or speeds) if speeds else None


def read_cell(cell: Cell, runs: Path, record: dict) -> list[dict]:
    """The cell's entry for the report (and, when it evaluated its initialisation, a second
    entry for the untrained backbone, arm ``untrained``)."""
    run_dir = runs / cell.key
    results = json.loads((run_dir / "results.json").read_text())
    train = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]
    records = training_records(run_dir)
    entry = {"dataset": cell.dataset, "arm": cell.arm, "point": dict(cell.point), "seed": cell.seed,
             "key": cell.key, **record, "images_per_s": median_speed(run_dir),
             "batch_size": train["batch_size"], "epochs": train["epochs"],
             "loss_curve": [(r["epoch"], r["loss"]) for r in records],
             **scores(results["trained"], run_dir / "results.json")}
    if "random_init" not in results:
        return [entry]
    untrained = {**entry, "arm": UNTRAINED, "images_per_s": None, "loss_curve": [],
                 **scores(results["random_init"], run_dir / "results.json")}
    return [entry, untrained]
