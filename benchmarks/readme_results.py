"""The README's results section, generated from the ``cpu`` suite's report.

    .venv/bin/python benchmarks/readme_results.py          # rewrites README.md between the markers
    .venv/bin/python benchmarks/readme_results.py --check  # exit 1 when README.md is out of date

The section (between ``<!-- results:begin -->`` and ``<!-- results:end -->``) holds one table
(a row per method: its headline metric per dataset as the gain over the untrained backbone,
and its speed) and the accuracy-vs-speed plot; everything else is in the report it links.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "benchmarks" / "suites" / "cpu" / "report.json"
README = ROOT / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
FORMATS = {"knn": ".1f", "linear": ".1f", "svm": ".1f", "r2_mean": ".3f"}
COLUMNS = {"fashion-mnist": ("knn", "linear"), "spirograph": ("r2_mean",), "skeleton_actions": ("knn",),
           "mutag": ("svm",), "proteins": ("svm",)}
TITLES = {"knn": "kNN", "linear": "linear", "svm": "SVM", "r2_mean": "R²"}


def cell(row: dict | None, untrained: dict | None, key: str) -> str:
    """``value (gain over untrained)`` of ``key``; ``-`` where the method did not run."""
    if row is None or row.get(key) is None:
        return "-"
    fmt = FORMATS[key]
    gain = f" ({row[key] - untrained[key]:+{fmt}})" if untrained and untrained.get(key) is not None else ""
    return f"{row[key]:{fmt}}{gain}"


def section(report: dict) -> str:
    rows = report["rows"]
    datasets = [d for d in COLUMNS if any(r["dataset"] == d for r in rows)]
    by = {(r["dataset"], r["arm"]): r for r in rows}
    arms = list(dict.fromkeys(r["arm"] for r in rows if r["arm"] != "untrained"))
    titles = ["method"] + [f"{d} {TITLES[k]}" for d in datasets for k in COLUMNS[d]]
    titles += ["F-MNIST images/s", "step time / SimCLR", "MFU %"]
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for arm in ["untrained", *arms]:
        cells = [f"**{arm}**" if arm == "untrained" else arm]
        for dataset in datasets:
            untrained = None if arm == "untrained" else by.get((dataset, "untrained"))
            cells += [cell(by.get((dataset, arm)), untrained, key) for key in COLUMNS[dataset]]
        speed = by.get(("fashion-mnist", arm), {})
        cells += [f"{speed['images_per_s']:.0f}" if speed.get("images_per_s") else "",
                  f"{speed['step_time_vs_reference']:.2f}" if "step_time_vs_reference" in speed else "",
                  f"{100 * speed['mfu']:.1f}" if "mfu" in speed else ""]
        lines.append("| " + " | ".join(cells) + " |")
    env = report["environment"]
    peaks = ", ".join(f"{name} {value['peak'] / 1e9:.0f} GFLOP/s" for name, value in env["peak_flops"].items())
    return "\n".join([
        BEGIN,
        f"Measured with `OMP_NUM_THREADS={env['threads']} {report['command']}` on {env['cpu']} ({env['threads']} thread(s), torch {env['torch']}; "
        f"peak {peaks}); mean over seeds {report['seeds']}, in brackets the gain over the untrained "
        "backbone. The budget is small and equal per data kind (see the report): a ranking at this "
        "budget, not the papers' numbers. Full table with standard deviations, memory and FLOPs: "
        "[benchmarks/suites/cpu/report.md](benchmarks/suites/cpu/report.md); the papers' claims: "
        "[benchmarks/results/claims.md](benchmarks/results/claims.md).",
        "",
        *lines,
        "",
        "![accuracy against training speed](benchmarks/suites/cpu/accuracy_vs_speed.png)",
        END,
    ])


def updated(readme: str, text: str) -> str:
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"{README}: the markers {BEGIN} and {END} are missing")
    head, rest = readme.split(BEGIN, 1)
    return head + text + rest.split(END, 1)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    args = parser.parse_args()
    readme = README.read_text()
    new = updated(readme, section(json.loads(REPORT.read_text())))
    if args.check:
        sys.exit(0 if new == readme else f"{README} is not up to date with {REPORT}: run {Path(__file__).name}")
    README.write_text(new)


if __name__ == "__main__":
    main()
