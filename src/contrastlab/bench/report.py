"""A suite's report: cells grouped by (dataset, arm, grid point) into rows of mean ± std over
seeds, written as ``report.md`` and ``report.json``."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from contrastlab.bench.efficiency import mfu
from contrastlab.bench.suite import UNTRAINED

# (key, column title, format): the metrics a row can hold, in the order of the columns
METRICS = [("knn", "kNN top-1 %", ".2f"), ("linear", "linear top-1 %", ".2f"), ("svm", "SVM CV %", ".2f"),
           ("r2_mean", "ridge R²", ".3f"), ("mse_mean", "MSE", ".4f"), ("rank", "eff. rank", ".0f")]
HEADLINE = ("knn", "svm", "r2_mean")  # a row's headline metric: the first of these it has


def headline(row: dict) -> str | None:
    return next((key for key in HEADLINE if row.get(key) is not None), None)


def group_rows(entries: list[dict], reference: str | None, efficiency: dict[str, dict]) -> list[dict]:
    """One row per (dataset, arm, grid point): each metric's mean and sample std over seeds,
    mean images/s, wall time and peak memory, the step time relative to the ``reference`` arm
    at the same dataset and grid point, and (from ``efficiency``, keyed like the row) FLOPs per
    step and MFU."""
    groups: dict[tuple, list[dict]] = {}
    for entry in entries:
        groups.setdefault((entry["dataset"], entry["arm"], json.dumps(entry["point"])), []).append(entry)
    rows = []
    for (dataset, arm, point), members in groups.items():
        row = {"dataset": dataset, "arm": arm, "point": json.loads(point), "seeds": sorted(m["seed"] for m in members),
               "batch_size": members[0]["batch_size"], "epochs": members[0]["epochs"]}
        for key in [m[0] for m in METRICS] + ["images_per_s", "wall_s", "peak_rss_mb", "cuda_peak_mb"]:
            values = [m[key] for m in members if m.get(key) is not None]
            if values:
                row[key] = statistics.mean(values)
                row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
        row.update(efficiency.get(row_key(row), {}))
        if "flops_per_step" in row and row.get("images_per_s"):
            row["mfu"] = mfu(row["flops_per_step"], row["images_per_s"], row["batch_size"], row["peak_flops"])
        rows.append(row)
    for row in rows:
        base = next((r for r in rows if r["arm"] == reference and r["dataset"] == row["dataset"]
                     and r["point"] == row["point"]), None)
        if base is not None and row.get("images_per_s") and base.get("images_per_s"):
            row["step_time_vs_reference"] = base["images_per_s"] / row["images_per_s"]
    return rows


def row_key(row: dict) -> str:
    """The key of a row's group: ``dataset/arm[/key=value...]``."""
    return "/".join([row["dataset"], row["arm"], *(f"{k}={v}" for k, v in row["point"].items())])


def _mean_std(row: dict, key: str, fmt: str) -> str:
    if row.get(key) is None:
        return "-"
    std = row.get(f"{key}_std")
    return f"{row[key]:{fmt}}" + (f" ± {std:{fmt}}" if std is not None else "")


def dataset_table(rows: list[dict], reference: str | None) -> list[str]:
    """The Markdown table of one dataset's rows: the untrained backbone first."""
    rows = sorted(rows, key=lambda r: r["arm"] != UNTRAINED)
    metrics = [m for m in METRICS if any(r.get(m[0]) is not None for r in rows)]
    grid = sorted({k for r in rows for k in r["point"]})
    untrained = next((r for r in rows if r["arm"] == UNTRAINED), None)
    key = headline(rows[0]) if rows else None
    titles = (["arm", *grid, "seeds"] + [title for _, title, _ in metrics]
              + ([f"{key} vs untrained"] if untrained and key else [])
              + ["samples/s", f"step time / {reference}" if reference else "step time", "peak RSS MB",
                 "GFLOP/step", "MFU %"])
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for row in rows:
        trained = row["arm"] != UNTRAINED  # the untrained row holds for every grid point
        cells = [row["arm"], *(str(row["point"].get(k, "")) if trained else "" for k in grid), str(len(row["seeds"]))]
        cells += [_mean_std(row, k, fmt) for k, _, fmt in metrics]
        if untrained and key:
            gain = "" if row is untrained or row.get(key) is None else f"{row[key] - untrained[key]:+.2f}"
            cells.append(gain)
        cells += [_mean_std(row, "images_per_s", ".0f") if trained else "",
                  f"{row['step_time_vs_reference']:.2f}" if "step_time_vs_reference" in row else "",
                  f"{row['peak_rss_mb']:.0f}" if trained and "peak_rss_mb" in row else "",
                  f"{row['flops_per_step'] / 1e9:.1f}" if trained and "flops_per_step" in row else "",
                  f"{100 * row['mfu']:.1f} ({row['compute_dtype']})" if trained and "mfu" in row else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(suite_name: str, about: str, command: str, environment: dict, common: list[str], seeds: list[int],
             rows: list[dict], reference: str | None, plots: list[str], failed: list[str]) -> list[str]:
    peaks = "; ".join(f"{name} {p['peak'] / 1e9:.0f} GFLOP/s (matmul {p['matmul'] / 1e9:.0f}, convolution "
                      f"{p['conv'] / 1e9:.0f})" for name, p in environment["peak_flops"].items())
    lines = [f"# Bench: {suite_name}", ""]
    if about:
        lines += [about, ""]
    lines += [f"Command: `{command}`", "",
              f"Machine: {environment['cpu']}, {environment['threads']} thread(s), device {environment['device']}, "
              f"torch {environment['torch']}, Python {environment['python']}. Peak measured in this run: "
              f"{peaks}.", "",
              f"Budget (every cell): {' '.join(f'`{o}`' for o in common) or 'the recipes as they are'}; "
              f"seeds {seeds}; mean ± sample std over seeds.",
              "Samples/s (images, sequences or graphs): median over the logged training windows after the first, averaged over seeds. "
              f"Step time / {reference}: its images/s over this row's, same dataset and grid point. "
              "Peak RSS: the training + evaluation process (its data-loader workers not included). "
              "GFLOP/step: matrix multiplies and convolutions of one training step, forward and backward "
              "(torch.utils.flop_counter); MFU: those FLOPs x steps/s over the peak of the step's "
              "compute dtype (the faster of a 2048² matmul and a 3x3 convolution, 128 channels). The untrained row: the first arm's backbone at initialisation."]
    if failed:
        lines += ["", f"**Failed cells ({len(failed)})**: " + ", ".join(f"`{k}`" for k in failed)]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        lines += ["", f"## {dataset}", "", *dataset_table([r for r in rows if r["dataset"] == dataset], reference)]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return lines


def write_report(out: Path, lines: list[str], payload: dict) -> None:
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "report.json").write_text(json.dumps(payload, indent=2) + "\n")
