"""What each method loses when its batch shrinks, from the ``batch-size`` suite's report.

Per dataset, method and score: the mean ± std over seeds at every batch size, the drop from the
largest to the smallest batch (score at the largest minus score at the smallest, paired by seed:
positive means the smaller batch is worse), and the spread (best minus worst mean over the batch
sizes). AUC-CL's claim holds on a score when its drop is the smallest of the methods by more than
two standard errors of the difference to the runner-up; inconclusive when it is the smallest by
less; not holding otherwise; not testable when every method gains from the smaller batch (at
equal epochs a smaller batch takes more steps, which at a short budget outweighs it).

    .venv/bin/python benchmarks/batch_size_robustness.py   # after: contrastlab bench benchmarks/suites/batch-size.yaml
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from report import write_results

REPORT = Path(__file__).parent / "suites" / "batch-size" / "report.json"
SCORES = ("knn", "linear", "r2_mean")
CLAIMANT = "auccl"
BATCH = "train.batch_size"


def paired_drops(cells: list[dict], score: str, largest: int, smallest: int) -> list[float]:
    """Per seed: the score at ``largest`` minus the score at ``smallest``."""
    at = {(c["seed"], int(c["point"][BATCH])): c[score] for c in cells}
    return [at[seed, largest] - at[seed, smallest] for seed in sorted({c["seed"] for c in cells})
            if (seed, largest) in at and (seed, smallest) in at]


def standard_error(values: list[float]) -> float:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")


def verdict(drops: dict[str, list[float]], spreads: dict[str, float]) -> str:
    """Whether the claimant drops least, by more than two standard errors of the difference;
    untestable when no method drops (each gains from the smaller batch beyond two standard errors)."""
    if CLAIMANT not in drops or len(drops) < 2:
        return "not run"
    if all(statistics.mean(d) + 2 * standard_error(d) < 0 for d in drops.values()):
        first, second = sorted(spreads, key=spreads.get)[:2]
        return (f"not testable at this budget: every method scores higher at the smallest batch (more steps at "
                f"equal epochs); smallest spreads: {first} {spreads[first]:.3g}, {second} {spreads[second]:.3g}"
                + ("" if CLAIMANT in (first, second) else f", {CLAIMANT} {spreads[CLAIMANT]:.3g}"))
    ranked = sorted(drops, key=lambda arm: statistics.mean(drops[arm]))
    if ranked[0] != CLAIMANT:
        return f"does not hold ({ranked[0]} drops least)"
    runner_up = ranked[1]
    gap = statistics.mean(drops[runner_up]) - statistics.mean(drops[CLAIMANT])
    error = math.hypot(standard_error(drops[runner_up]), standard_error(drops[CLAIMANT]))
    return f"holds (z = {gap / error:.1f} over {runner_up})" if gap > 2 * error else \
        f"inconclusive (least, by {gap:.3g}; z = {gap / error:.1f} over {runner_up})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, default=REPORT)
    parser.add_argument("--out", default="batch_size_robustness")
    args = parser.parse_args()
    report = json.loads(args.report.read_text())
    cells = [c for c in report["cells"] if c["arm"] != "untrained" and BATCH in c["point"]]
    batches = sorted({int(c["point"][BATCH]) for c in cells})
    command = "python benchmarks/batch_size_robustness.py " + " ".join(sys.argv[1:])
    lines = ["# Batch-size robustness (AUC-CL's claim)", "",
             f"From `{report['command']}` ({len(cells)} cells, seeds {report['seeds']}); budget: "
             f"{' '.join(report['common'])}. Drop: the score at batch {batches[-1]} minus at batch {batches[0]}, "
             "paired by seed, mean ± std (positive: the smaller batch is worse). Spread: best minus worst mean "
             "over the batch sizes.", "", f"Command: `{command}`", ""]
    rows = []
    for dataset in dict.fromkeys(c["dataset"] for c in cells):
        mine = [c for c in cells if c["dataset"] == dataset]
        for score in (s for s in SCORES if s in mine[0]):
            lines += [f"## {dataset}: {score}", "",
                      "| method | " + " | ".join(f"batch {b}" for b in batches) + " | drop | spread |",
                      "|---|" + "---|" * (len(batches) + 2)]
            drops, spreads = {}, {}
            for arm in dict.fromkeys(c["arm"] for c in mine):
                arm_cells = [c for c in mine if c["arm"] == arm]
                means = {}
                cols = []
                for b in batches:
                    values = [c[score] for c in arm_cells if int(c["point"][BATCH]) == b]
                    means[b] = statistics.mean(values)
                    cols.append(f"{means[b]:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1
                                else f"{means[b]:.3f}")
                drops[arm] = paired_drops(arm_cells, score, batches[-1], batches[0])
                drop_std = statistics.stdev(drops[arm]) if len(drops[arm]) > 1 else float("nan")
                spread = spreads[arm] = max(means.values()) - min(means.values())
                lines.append(f"| {arm} | " + " | ".join(cols) +
                             f" | {statistics.mean(drops[arm]):+.3f} ± {drop_std:.3f} | {spread:.3f} |")
                rows.append({"dataset": dataset, "score": score, "arm": arm, "means": means,
                             "drops": drops[arm], "spread": spread})
            lines += ["", f"AUC-CL drops least: **{verdict(drops, spreads)}**", ""]
    write_results(args.out, rows, lines, command)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
