"""``contrastlab bench SUITE.yaml``: run every cell of a suite (finished ones are read, not
re-run), count each row's FLOPs per step, measure the machine's peak, and write the report."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import torch

from contrastlab.bench.cells import CellFailed, read_cell, run_cell
from contrastlab.bench.efficiency import compute_dtype, machine_peaks, step_flops
from contrastlab.bench.plots import write_plots
from contrastlab.bench.report import group_rows, markdown, row_key, write_report
from contrastlab.bench.suite import Cell, load_suite
from contrastlab.core.config import ConfigError
from contrastlab.engine.setup import resolve_device
from contrastlab.recipes import load_config

FLOPS_CACHE = "flops.json"


def run_suite(path: str | Path, out: Path | None = None, resume: bool = True, command: str | None = None,
              only: list[str] | None = None) -> int:
    """Run the suite in ``path`` into ``out`` (default: beside the file, named as it without
    ``.yaml``): cells in ``out/runs/``, ``report.md``, ``report.json`` and plots in ``out``.
    ``only``: run just these datasets' cells and write no report (processes sharing a suite).
    Returns the number of cells that failed (their keys are listed in the report)."""
    suite = load_suite(path)
    out = Path(out) if out is not None else Path(path).with_suffix("")
    cells = suite.cells
    if only:
        unknown = sorted(set(only) - {cell.dataset for cell in cells})
        if unknown:
            raise ConfigError(f"suite {path}: --only {', '.join(unknown)}: the suite has no such dataset; it has "
                             f"{', '.join(dict.fromkeys(cell.dataset for cell in cells))}")
        cells = [cell for cell in cells if cell.dataset in only]
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    entries, failed = [], []
    for number, cell in enumerate(cells, start=1):
        try:
            record, read = run_cell(cell, runs, resume)
        except CellFailed as err:
            failed.append(cell.key)
            print(f"[{number}/{len(cells)}] {err}", file=sys.stderr, flush=True)
            continue
        cell_entries = read_cell(cell, runs, record)
        entries += cell_entries
        print(f"[{number}/{len(cells)}] {_summary(cell_entries[0], read)}", flush=True)
    if only:
        print(f"ran the cells of {', '.join(only)}; no report (run without --only to write it)", flush=True)
        return len(failed)

    device = resolve_device(load_config(suite.cells[0].recipe, suite.cells[0].overrides).train.device)
    peaks = machine_peaks(device)
    efficiency = _efficiency(suite.cells, out / FLOPS_CACHE, peaks, failed)
    rows = group_rows(entries, suite.reference, efficiency)
    plots = write_plots(out, rows, entries, suite.grid) if rows else []
    environment = {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
                   "cpu": _cpu_name(), "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
                   "peak_flops": peaks}
    command = command or f"contrastlab bench {path}"
    lines = markdown(suite.name, suite.about, command, environment, suite.common, suite.seeds, rows,
                     suite.reference, [str(p) for p in plots], failed)
    payload = {"suite": suite.name, "command": command, "environment": environment, "common": suite.common,
               "seeds": suite.seeds, "failed": failed, "rows": rows,
               "cells": [{k: v for k, v in e.items() if k not in ("r2", "mse")} for e in entries]}
    write_report(out, lines, payload)
    print(f"wrote {out / 'report.md'}, {out / 'report.json'} and {len(plots)} plots"
          + (f"; {len(failed)} cells failed" if failed else ""), flush=True)
    return len(failed)


def _summary(entry: dict, read: bool) -> str:
    numbers = "  ".join(f"{key} {entry[key]:.2f}" for key in ("knn", "linear", "svm", "r2_mean") if key in entry)
    speed = f"{entry['images_per_s']:.0f} images/s" if entry.get("images_per_s") else ""
    return f"{entry['key']}: {numbers}  {speed}  {entry['wall_s']:.0f} s" + ("  (read)" if read else "")


def _efficiency(cells: list[Cell], cache_path: Path, peaks: dict[str, dict[str, float]], failed: list[str]) -> dict[str, dict]:
    """FLOPs per step of each row (counted once on its first cell, cached in ``cache_path``
    by recipe and overrides), its compute dtype and that dtype's peak."""
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    out = {}
    for cell in cells:
        key = row_key({"dataset": cell.dataset, "arm": cell.arm, "point": dict(cell.point)})
        if key in out or cell.key in failed:
            continue
        cfg = load_config(cell.recipe, cell.overrides)
        identity = f"{cell.recipe} {' '.join(o for o in cell.overrides if not o.startswith('train.seed='))}"
        if cache.get(key, {}).get("identity") != identity:
            cache[key] = {"identity": identity, "flops_per_step": step_flops(cfg)}
            cache_path.write_text(json.dumps(cache, indent=2))
        dtype = compute_dtype(cfg)
        out[key] = {"flops_per_step": cache[key]["flops_per_step"], "compute_dtype": dtype,
                    "peak_flops": peaks[dtype]["peak"]}
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
