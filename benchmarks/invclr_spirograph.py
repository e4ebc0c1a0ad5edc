"""The InvCLR Spirograph study: SimCLR vs InvCLR at the same budget, over seeds.

Both arms train from `configs/invclr-spirograph-convnet.yaml` through the command-line tool;
SimCLR is the same recipe with `method.gp_weight=0` (which trains exactly like `simclr`, a
tested property). Each run is evaluated with a ridge probe per target (MSE and R², test set),
once on single-draw features and once with features averaged over M nuisance re-draws, and on
a robustness curve: test images re-rendered with the background-colour range shifted up by s.

    .venv/bin/python benchmarks/invclr_spirograph.py                   # 3 seeds, recipe budget
    .venv/bin/python benchmarks/invclr_spirograph.py --seeds 0 --epochs 2 --no-write
    .venv/bin/python benchmarks/invclr_spirograph.py --train invclr    # simclr read from its run folders

A larger budget (a study of its own, written to ``results/<out>.md``), its arms side by side in
two processes, then the report from both arms' run folders:

    .venv/bin/python benchmarks/invclr_spirograph.py --out invclr_spirograph_resnet18 --seeds 0 \
        --common backbone.name=resnet18 ... --train simclr --no-write &
    .venv/bin/python benchmarks/invclr_spirograph.py --out invclr_spirograph_resnet18 --seeds 0 \
        --common backbone.name=resnet18 ... --train invclr --no-write
    .venv/bin/python benchmarks/invclr_spirograph.py --out invclr_spirograph_resnet18 --seeds 0 \
        --common backbone.name=resnet18 ... --train
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
RECIPE = "configs/invclr-spirograph-convnet.yaml"
TARGETS = ("m", "b", "sigma", "f_r")


def train(arm: str, overrides: list[str], run_dir: Path) -> dict:
    argv = [sys.executable, "-m", "contrastlab", "train", RECIPE, "--run-dir", str(run_dir),
            "train.progress=false", "eval.plots=false", "eval.compare_random_init=false", *overrides]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{arm}: {' '.join(argv[2:])} failed:\n{done.stderr[-3000:]}")
    return json.loads((run_dir / "results.json").read_text())


def scores(results: dict) -> dict[str, float]:
    """MSE and R² per target and their means, from one column of results.json."""
    regression = results["regression"]
    out = {f"mse_{t}": regression["mse"][t] for t in TARGETS}
    out.update({f"r2_{t}": regression["r2"][t] for t in TARGETS})
    out["mse_mean"], out["r2_mean"] = regression["mse_mean"], regression["r2_mean"]
    return out


def spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="default: the recipe's")
    parser.add_argument("--gp-weight", type=float, help="InvCLR's lambda; default: the recipe's")
    parser.add_argument("--averaging", type=int, default=30, help="M, draws averaged per image")
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.4])
    parser.add_argument("--out", default="invclr_spirograph", help="results/<out>.{json,md}; runs in _runs/<out>-<arm>-s<seed>")
    parser.add_argument("--common", nargs="*", default=[], metavar="OVERRIDE",
                        help="section.key=value overrides for both arms (after the recipe)")
    parser.add_argument("--train", nargs="*", choices=["simclr", "invclr"], default=["simclr", "invclr"],
                        help="the arms to train (default both); the others' runs are read from their run folders, "
                             "left by an earlier invocation with the same --out and seeds")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    common = [f"eval.feature_averaging={args.averaging}",
              f"eval.robustness=[{', '.join(map(str, args.strengths))}]", *args.common]
    if args.epochs:
        common.append(f"train.epochs={args.epochs}")
    arms = {"simclr": ["method.gp_weight=0"],
            "invclr": [f"method.gp_weight={args.gp_weight}"] if args.gp_weight is not None else []}
    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    for seed in args.seeds:
        for arm, extra in arms.items():
            run_dir = RUNS / f"{args.out}-{arm}-s{seed}"
            if arm in args.train:
                results = train(arm, [*common, *extra, f"train.seed={seed}"], run_dir)
            elif (run_dir / "results.json").is_file():
                results = json.loads((run_dir / "results.json").read_text())
            else:
                print(f"seed {seed} {arm:<7} not trained here (--train) and no results in {run_dir}", flush=True)
                continue
            run = {"seed": seed, "single": scores(results["trained"]), "averaged": scores(results["trained_fa"]),
                   "robustness": [{"strength": point["strength"], **{k: point["regression"][k] for k in ("mse_mean", "r2_mean")}}
                                  for point in results["trained"]["robustness"]]}
            runs[arm].append(run)
            print(f"seed {seed} {arm:<7} R² {run['single']['r2_mean']:.3f} (FA {run['averaged']['r2_mean']:.3f})  "
                  f"MSE {run['single']['mse_mean']:.4f} (FA {run['averaged']['mse_mean']:.4f})", flush=True)
    missing = [f"{arm} seed {run}" for arm in arms for run in sorted(set(args.seeds) - {r["seed"] for r in runs[arm]})]
    if missing:
        raise SystemExit(f"no report: no results for {', '.join(missing)} (train them with --train)")
    report(runs, args)


def command_line(args: argparse.Namespace) -> str:
    """The command that records these results (without --train / --no-write)."""
    return "python benchmarks/invclr_spirograph.py " + " ".join(
        ([f"--out {args.out}"] if args.out != "invclr_spirograph" else [])
        + [f"--seeds {' '.join(map(str, args.seeds))}", f"--averaging {args.averaging}"]
        + ([f"--epochs {args.epochs}"] if args.epochs else [])
        + ([f"--gp-weight {args.gp_weight}"] if args.gp_weight is not None else [])
        + (["--common", *args.common] if args.common else []))


def report(runs: dict[str, list[dict]], args: argparse.Namespace) -> None:
    command = command_line(args)

    def cell(arm: str, features: str, key: str, fmt: str) -> str:
        mean, std = spread([run[features][key] for run in runs[arm]])
        return f"{mean:{fmt}} ± {std:{fmt}}"

    lines = ["# InvCLR vs SimCLR on Spirograph", "", f"`{command}` — torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, {platform.machine()}. Recipe `{RECIPE}`"
             + (f" with `{' '.join(args.common)}`" if args.common else "") + "; SimCLR = "
             f"the same recipe with `method.gp_weight=0`. Mean ± sample std over seeds {args.seeds}. "
             f"Ridge probe on the frozen backbone; test MSE in raw target units. FA = features averaged "
             f"over {args.averaging} nuisance re-draws, for the probe's training and test features.", ""]
    keys = [f"mse_{t}" for t in TARGETS] + ["mse_mean"] + [f"r2_{t}" for t in TARGETS] + ["r2_mean"]
    lines += ["| arm | features | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for arm in runs:
        for features, label in (("single", "single draw"), ("averaged", f"FA (M={args.averaging})")):
            fmts = [".4f" if k.startswith("mse") else ".3f" for k in keys]
            lines.append(f"| {arm} | {label} | " + " | ".join(cell(arm, features, k, f) for k, f in zip(keys, fmts)) + " |")
    strengths = [point["strength"] for point in next(iter(runs.values()))[0]["robustness"]]
    lines += ["", "Robustness: test images re-rendered with the background range shifted to U(s, 0.6 + s) "
              "(training: U(0, 0.6)); probe fitted on the training features. Test MSE (mean of the four targets):", "",
              "| arm | " + " | ".join(f"s = {s}" for s in strengths) + " |", "|---|" + "---|" * len(strengths)]
    for arm in runs:
        row = []
        for i in range(len(strengths)):
            mean, std = spread([run["robustness"][i]["mse_mean"] for run in runs[arm]])
            row.append(f"{mean:.4f} ± {std:.4f}")
        lines.append(f"| {arm} | " + " | ".join(row) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{args.out}.json").write_text(json.dumps({"command": command, "runs": runs}, indent=2))
        (RESULTS / f"{args.out}.md").write_text(text)


if __name__ == "__main__":
    main()
