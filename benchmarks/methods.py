"""One row per method at an equal budget: speed, peak memory, and what the encoder learned.

Each method trains from its own `configs/<method>-<kind>-convnet.yaml` recipe (the
`gray-small` recipe for Fashion-MNIST, the `spirograph` one for Spirograph) through the
command-line tool (same backbone, batch 256, default CPU settings: channels_last + bf16), on
Fashion-MNIST and on Spirograph, then is evaluated (kNN, linear probe, ridge R²). A "random
init" row evaluates the same backbone untrained. Every run is a separate process, so peak
memory is that process's maximum resident set size (data, model, evaluation).

    .venv/bin/python benchmarks/methods.py                       # writes benchmarks/results/methods.{json,md}
    .venv/bin/python benchmarks/methods.py --fmnist-epochs 1 --spiro-epochs 2 --only simclr moco
    .venv/bin/python benchmarks/methods.py --only byol --update   # re-measure rows, keep the others
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "benchmarks" / "_runs"
VARIANTS = {
    "simclr": ("simclr", []),
    "simclr + dcl": ("simclr", ["method.loss=dcl"]),
    "simclr + hcl": ("simclr", ["method.loss=hcl"]),
    "moco": ("moco", []),
    "byol": ("byol", []),
    "barlow_twins": ("barlow_twins", []),
}
CHILD = (
    "import resource, sys\n"
    "from contrastlab.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    "sys.exit(code)\n"
)


RECIPE_KIND = {"fashion-mnist": "gray-small", "spirograph": "spirograph"}  # dataset -> its recipes' data kind


def train(method: str, dataset: str, overrides: list[str], run_dir: Path) -> dict:
    """Train + evaluate one recipe in a child process; returns results.json plus speed and memory."""
    recipe = ROOT / "configs" / f"{method}-{RECIPE_KIND[dataset]}-convnet.yaml"
    argv = [sys.executable, "-c", CHILD, "train", str(recipe), "--run-dir", str(run_dir),
            "train.progress=false", "eval.plots=false", *overrides]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[3:])} failed:\n{done.stderr[-3000:]}")
    maxrss_kb = int(done.stdout.rsplit("MAXRSS_KB", 1)[1].split()[0])
    results = json.loads((run_dir / "results.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["images_per_s"] for r in records if "images_per_s" in r][1:]  # drop the warm-up window
    return {"results": results, "images_per_s": statistics.median(speeds), "peak_rss_mb": maxrss_kb / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fmnist-epochs", type=int, default=3)
    parser.add_argument("--spiro-epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), help="a subset of the variants")
    parser.add_argument("--update", action="store_true",
                        help="replace only these variants' rows in the existing results (same budget)")
    args = parser.parse_args()
    budgets = {"fashion-mnist": args.fmnist_epochs, "spirograph": args.spiro_epochs}
    rows = {}
    for variant in args.only or VARIANTS:
        method, extra = VARIANTS[variant]
        row = {}
        for dataset, epochs in budgets.items():
            slug = variant.replace(" + ", "-")
            overrides = [f"train.epochs={epochs}", f"train.seed={args.seed}", "eval.max_train=null",
                         f"eval.compare_random_init={'true' if variant == 'simclr' else 'false'}", *extra]
            row[dataset] = train(method, dataset, overrides, RUNS / f"{slug}-{dataset}-s{args.seed}")
            print(f"{variant:<14} {dataset:<14} {row[dataset]['images_per_s']:7.0f} images/s", flush=True)
        rows[variant] = row
    write(rows, budgets, args)


def merged(previous: dict, fresh: list[dict], budgets: dict) -> list[dict]:
    """The stored table with the rows of ``fresh`` put in place of (or after) those variants'."""
    if previous["env"]["budget_epochs"] != budgets:
        raise SystemExit(f"--update: the stored table has budget {previous['env']['budget_epochs']}, not {budgets}")
    by_variant = {e["variant"]: {"command": previous["env"]["command"], **e} for e in previous["rows"]}
    by_variant.update({e["variant"]: e for e in fresh})
    order = [v for v in [*VARIANTS, "random init"] if v in by_variant]
    return [by_variant[v] for v in order]


def metrics(results: dict) -> dict:
    """The table's numbers from one column of results.json."""
    out = {}
    if "knn" in results:
        out["knn"], out["linear"] = results["knn"]["accuracy"], results["linear"]["accuracy"]
    if "regression" in results:
        out["r2"] = results["regression"]["r2_mean"]
    return out


def write(rows: dict, budgets: dict, args: argparse.Namespace) -> None:
    command = "python benchmarks/methods.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in (("fmnist_epochs", args.fmnist_epochs),
                                                     ("spiro_epochs", args.spiro_epochs), ("seed", args.seed)))
    if args.only:
        command += " --only " + " ".join(f"'{v}'" for v in args.only) + (" --update" if args.update else "")
    table = []
    for variant, row in rows.items():
        fm, sp = row["fashion-mnist"], row["spirograph"]
        table.append({
            "variant": variant,
            "images_per_s": fm["images_per_s"],
            "peak_rss_mb": max(fm["peak_rss_mb"], sp["peak_rss_mb"]),
            **{f"fmnist_{k}": v for k, v in metrics(fm["results"]["trained"]).items()},
            **{f"spiro_{k}": v for k, v in metrics(sp["results"]["trained"]).items()},
            "command": command,
        })
    if "simclr" in rows:
        base = rows["simclr"]
        table.append({"variant": "random init", **{f"fmnist_{k}": v for k, v in metrics(base["fashion-mnist"]["results"]["random_init"]).items()},
                      **{f"spiro_{k}": v for k, v in metrics(base["spirograph"]["results"]["random_init"]).items()},
                      "command": command})
    if args.update:
        table = merged(json.loads((RESULTS / "methods.json").read_text()), table, budgets)
    simclr_speed = next((e["images_per_s"] for e in table if e["variant"] == "simclr"), None)
    for entry in table:
        if entry.get("images_per_s") and simclr_speed:
            entry["step_time_vs_simclr"] = simclr_speed / entry["images_per_s"]
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
           "budget_epochs": budgets, "command": command}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "methods.json").write_text(json.dumps({"env": env, "rows": table}, indent=2))

    def cell(entry: dict, key: str, fmt: str) -> str:
        return format(entry[key], fmt) if entry.get(key) is not None else "-"

    commands = list(dict.fromkeys(e["command"] for e in table))
    lines = [
        "# Methods at an equal budget (CPU)", "",
        f"torch {env['torch']}, {env['threads']} threads, {env['machine']}. Backbone: "
        f"convnet, batch 256, channels_last + bf16. Budget: {budgets['fashion-mnist']} epoch(s) of "
        f"Fashion-MNIST (60k images), {budgets['spirograph']} epoch(s) of Spirograph (10k). "
        "Images/s on Fashion-MNIST (source images per second, two views each); peak memory is the "
        "training process's maximum RSS including data and evaluation. kNN (k=200, t=0.1) and "
        "linear probe fit on all training features (60k), test set 10k; R² is the "
        "mean over Spirograph's four targets.", "",
        "| method | images/s | step time vs SimCLR | peak RSS (MB) | F-MNIST kNN % | F-MNIST linear % | Spirograph R² |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in table:
        lines.append(f"| {e['variant']} | {cell(e, 'images_per_s', '.0f')} | {cell(e, 'step_time_vs_simclr', '.2f')} | "
                     f"{cell(e, 'peak_rss_mb', '.0f')} | {cell(e, 'fmnist_knn', '.2f')} | "
                     f"{cell(e, 'fmnist_linear', '.2f')} | {cell(e, 'spiro_r2', '.3f')} |")
    lines += ["", "Commands (rows in brackets):"]
    lines += [f"- `{c}` ({', '.join(e['variant'] for e in table if e['command'] == c)})" for c in commands]
    (RESULTS / "methods.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
