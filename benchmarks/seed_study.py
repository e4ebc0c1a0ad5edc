"""Several arms over several seeds at an equal budget: mean ± sample std of what each learned.

An arm is ``NAME=RECIPE[:OVERRIDE,OVERRIDE,...]`` (commas inside brackets stay in a value, as
in ``eval.robustness=[0.1, 0.2]``). Each run trains one arm for one seed through the
command-line tool in a child process, with the recipe, then the ``--common`` overrides, then
the arm's own, then ``train.seed=<seed> train.progress=false eval.plots=false
eval.compare_random_init=false``, into ``benchmarks/_runs/<out>/<arm>-s<seed>/``. Runs go
seed-major (seed 0: every arm, then seed 1, ...), so a stopped study still covers every arm.
``--untrained`` adds a row ``untrained``: the first arm's run also evaluates its backbone at
initialisation (``eval.compare_random_init=true``), the baseline every arm should beat.

Per run: kNN and linear top-1 (classification), the SVM cross-validation accuracy (graphs,
``eval.protocol=svm_cv``) or mean ridge R² and MSE (regression, with the
R² per target in the JSON), whichever results.json holds; the effective rank of the features; the median training images/s of
metrics.jsonl (the first, warm-up window dropped when there are more); the child's wall time
(data, training, evaluation) and peak RSS. The table has one row per arm and one table per
dataset, with "vs" = the difference of the means from the first arm on that dataset.

``--resume`` reads a finished run instead of retraining it (a run is finished when its
results.json and this script's ``seed_study.json`` record exist; the record must name the same
recipe and overrides). A run whose folder is gone is read from the rows of ``results/<out>.json``
when one there has the same arm, seed, recipe file name and overrides, so a study can gain seeds
after its run folders were deleted. Without it, or for an unfinished run, the run folder is
deleted and trained afresh. ``--no-write`` prints the table without writing ``benchmarks/results/``.

    .venv/bin/python benchmarks/seed_study.py --out meta_methods_fashion_mnist --seeds 0 1 2 \\
        --common train.epochs=3 data.train_size=20000 \\
        --arm simclr=configs/simclr-gray-small-convnet.yaml \\
        --arm metamask=configs/metamask-gray-small-convnet.yaml \\
        --arm metamask-every-2=configs/metamask-gray-small-convnet.yaml:method.meta_every=2
    .venv/bin/python benchmarks/seed_study.py --out spiro_check --seeds 0 1 --resume --no-write \\
        --common train.epochs=1 data.train_size=512 data.test_size=256 train.batch_size=64 \\
        --arm simclr=configs/simclr-spirograph-convnet.yaml --arm byol=configs/byol-spirograph-convnet.yaml
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from contrastlab.bench.cells import median_speed, scores
from contrastlab.bench.suite import UNTRAINED  # the row of --untrained: the first arm's backbone at initialisation
from contrastlab.core.config import ConfigError
from contrastlab.recipes import load_config
from methods import CHILD, ROOT, RUNS
from report import RESULTS, environment, write_results

PER_RUN = ["train.progress=false", "eval.plots=false"]  # and eval.compare_random_init (false but for --untrained)
RECORD = "seed_study.json"  # written into a run folder once the run has finished
SAFE_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]*")  # a folder name, not hidden
# (key, column title, format, compared with the first arm)
METRICS = [("knn", "kNN top-1 %", ".2f", True), ("linear", "linear top-1 %", ".2f", True),
           ("svm", "SVM 10-fold %", ".2f", True),
           ("r2_mean", "R² (mean)", ".3f", True), ("mse_mean", "MSE (mean)", ".4f", False),
           ("rank", "rank (effective)", ".1f", True)]


@dataclass(frozen=True)
class Arm:
    name: str
    recipe: Path
    overrides: tuple[str, ...]


def split_overrides(text: str) -> list[str]:
    """``'a.b=1,c.d=[1, 2]'`` -> ``['a.b=1', 'c.d=[1, 2]']``: commas inside brackets stay."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char in "[{(") - (char in "]})")
        if char == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    return [*parts, text[start:].strip()]


def parse_arm(text: str, common: list[str]) -> Arm:
    """``NAME=RECIPE[:OVERRIDE,...]`` -> an :class:`Arm`, its recipe and overrides checked."""
    name, sep, rest = text.partition("=")
    recipe, _, extra = rest.partition(":")
    if not sep or not SAFE_NAME.fullmatch(name) or not recipe:
        raise SystemExit(f"arm '{text}': expected NAME=RECIPE[:OVERRIDE,...] with NAME made of "
                         "letters, digits and . _ + - (not first .)")
    overrides = split_overrides(extra) if extra else []
    if not Path(recipe).is_file():
        raise SystemExit(f"arm '{text}': recipe file {recipe} does not exist")
    try:
        load_config(recipe, [*common, *overrides])
    except ConfigError as err:
        raise SystemExit(f"arm '{text}': {err}") from None
    return Arm(name, Path(recipe).resolve(), tuple(overrides))


def children_cpu_s() -> float:
    """User + system CPU seconds of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def train(arm: Arm, seed: int, overrides: list[str], run_dir: Path) -> dict:
    """Train + evaluate one run in a fresh folder; writes and returns its record (wall time, CPU
    time of every thread, peak RSS)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    argv = [sys.executable, "-c", CHILD, "train", str(arm.recipe), "--run-dir", str(run_dir), *overrides]
    start, cpu_before = time.perf_counter(), children_cpu_s()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    wall_s, cpu_s = time.perf_counter() - start, children_cpu_s() - cpu_before
    if done.returncode != 0:
        raise SystemExit(f"arm '{arm.name}' seed {seed} failed ({shlex.join(argv[3:])}):\n{done.stderr[-3000:]}")
    if not (run_dir / "results.json").is_file():
        raise SystemExit(f"arm '{arm.name}' seed {seed}: no results.json in {run_dir} (is eval.at_end false?)")
    maxrss_kb = int(done.stdout.rsplit("MAXRSS_KB", 1)[1].split()[0])
    record = {"recipe": str(arm.recipe), "overrides": overrides, "wall_s": wall_s, "cpu_s": cpu_s,
              "peak_rss_mb": maxrss_kb / 1024}
    (run_dir / RECORD).write_text(json.dumps(record, indent=2))
    return record


def recorded_rows(out: str) -> list[dict]:
    """The rows of an earlier ``results/<out>.json`` (none when there is no such file)."""
    path = RESULTS / f"{out}.json"
    return json.loads(path.read_text())["rows"] if path.is_file() else []


def recorded(rows: list[dict], arm: Arm, seed: int, overrides: list[str], untrained: bool) -> list[dict] | None:
    """The entries of ``rows`` for this run (the trained one, then the untrained one under
    ``untrained``), or None when the run is not there in full."""
    def same_run(row: dict) -> bool:
        return (row["seed"] == seed and row["overrides"] == overrides
                and Path(row["recipe"]).name == arm.recipe.name)
    names = [arm.name, UNTRAINED] if untrained else [arm.name]
    found = [next((r for r in rows if r["arm"] == name and same_run(r)), None) for name in names]
    return None if None in found else [{**r, "read": True} for r in found]


def run(arm: Arm, seed: int, common: list[str], out: str, resume: bool, untrained: bool = False,
        earlier: list[dict] = ()) -> list[dict]:
    """One finished run of ``arm`` for ``seed`` (read under ``resume`` when there is one, in its
    folder or among the ``earlier`` rows); with ``untrained``, also the same backbone evaluated at
    initialisation (a second entry)."""
    run_dir = RUNS / out / f"{arm.name}-s{seed}"
    overrides = [*common, *arm.overrides, f"train.seed={seed}", *PER_RUN,
                 f"eval.compare_random_init={str(untrained).lower()}"]
    kept = recorded(earlier, arm, seed, overrides, untrained) if resume and not run_dir.is_dir() else None
    if kept is not None:
        return kept
    finished = (run_dir / RECORD).is_file() and (run_dir / "results.json").is_file()
    if resume and finished:
        record = json.loads((run_dir / RECORD).read_text())
        if (record["recipe"], record["overrides"]) != (str(arm.recipe), overrides):
            raise SystemExit(f"--resume: {run_dir} was trained from {record['recipe']} {record['overrides']}, "
                             f"not {arm.recipe} {overrides}; use another --out or drop --resume")
    else:
        record = train(arm, seed, overrides, run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    entry = {"arm": arm.name, "seed": seed, "dataset": results["dataset"], "run_dir": str(run_dir),
             "read": resume and finished, **record, "images_per_s": median_speed(run_dir),
             **scores(results["trained"], run_dir / "results.json")}
    if not untrained:
        return [entry]
    initial = {**entry, "arm": UNTRAINED, "images_per_s": None,
               **scores(results["random_init"], run_dir / "results.json")}
    return [entry, initial]


def run_line(entry: dict) -> str:
    """One printed line per finished run."""
    numbers = "  ".join(f"{title.split()[0]} {entry[key]:{fmt}}" for key, title, fmt, _ in METRICS if key in entry)
    speed = f"{entry['images_per_s']:.0f}" if entry["images_per_s"] is not None else "-"
    return (f"seed {entry['seed']} {entry['arm']:<16} {entry['dataset']:<14} {numbers}  "
            f"wall {entry['wall_s']:.0f} s  {speed} images/s{'  (read)' if entry['read'] else ''}")


def mean_std(values: list[float], fmt: str) -> str:
    """``mean ± sample std`` (the mean alone for one value, ``-`` for none)."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:{fmt}}"
    return f"{statistics.mean(values):{fmt}} ± {statistics.stdev(values):{fmt}}"


def dataset_table(runs: list[dict], arms: list[str]) -> list[str]:
    """Markdown table of one dataset: a row per arm, differences from the first arm's means."""
    by_arm = {a: [r for r in runs if r["arm"] == a] for a in arms}
    by_arm = {a: rs for a, rs in by_arm.items() if rs}
    metrics = [m for m in METRICS if any(m[0] in r for r in runs)]
    compared = [m for m in metrics if m[3]]
    reference = next(iter(by_arm))

    def mean(arm: str, key: str) -> float:
        return statistics.mean(r[key] for r in by_arm[arm])

    titles = (["arm", "seeds"] + [title for _, title, _, _ in metrics]
              + [f"{title.split()[0]} vs {reference}" for _, title, _, _ in compared]
              + ["images/s", "wall (s)", "CPU (s)", "peak RSS (MB)"])
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for arm, arm_runs in by_arm.items():
        cells = [arm, str(len(arm_runs))]
        cells += [mean_std([r[key] for r in arm_runs], fmt) for key, _, fmt, _ in metrics]
        cells += ["ref" if arm == reference else f"{mean(arm, key) - mean(reference, key):+{fmt}}"
                  for key, _, fmt, _ in compared]
        cells += [mean_std([r[key] for r in arm_runs if r.get(key) is not None], fmt)
                  for key, fmt in (("images_per_s", ".0f"), ("wall_s", ".0f"), ("cpu_s", ".0f"), ("peak_rss_mb", ".0f"))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def command_line(args: argparse.Namespace) -> str:
    """The command that re-runs this study (``--resume`` and ``--no-write`` left out)."""
    parts = ["python", "benchmarks/seed_study.py", "--out", args.out, "--seeds", *map(str, args.seeds)]
    if args.common:
        parts += ["--common", *args.common]
    if args.untrained:
        parts.append("--untrained")
    for text in args.arm:
        parts += ["--arm", text]
    return shlex.join(parts)


def markdown(runs: list[dict], arms: list[Arm], args: argparse.Namespace, command: str) -> list[str]:
    env = environment(command)
    lines = [f"# Seed study: {args.out}", "", f"`{command}`", "",
             f"torch {env['torch']}, {env['threads']} threads, {env['machine']}. "
             f"Common overrides: {' '.join(f'`{o}`' for o in args.common) or 'none'}. "
             f"Mean ± sample std over seeds {args.seeds}; \"vs\" columns: difference of the means "
             "from the first arm on that dataset. Images/s: median over the logged training windows after the first; "
             "wall time, CPU time (user + system, every thread) and peak RSS: the whole training + evaluation "
             "process (CPU time: runs recorded since 2026-12-07)."]
    order = [UNTRAINED] * args.untrained + [arm.name for arm in arms]
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        lines += ["", f"## {dataset}", "", *dataset_table([r for r in runs if r["dataset"] == dataset], order)]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="results/<out>.{json,md} and _runs/<out>/")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--common", nargs="*", default=[], metavar="OVERRIDE",
                        help="section.key=value overrides for every arm (after the recipe, before the arm's)")
    parser.add_argument("--arm", action="append", required=True, metavar="NAME=RECIPE[:OVERRIDE,...]",
                        help="one arm; repeat for each (the first is the reference)")
    parser.add_argument("--untrained", action="store_true",
                        help=f"add a row '{UNTRAINED}': the first arm's backbone at initialisation, per seed "
                             "(its wall time and memory are those of the first arm's run)")
    parser.add_argument("--resume", action="store_true", help="read finished runs instead of retraining them")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if not SAFE_NAME.fullmatch(args.out):
        raise SystemExit(f"--out '{args.out}': use letters, digits and . _ + - only (not first .)")
    if len(set(args.seeds)) != len(args.seeds):
        raise SystemExit(f"--seeds {args.seeds}: each seed once")
    bad = [o for o in args.common if "." not in o.partition("=")[0] or "=" not in o]
    if bad:
        raise SystemExit(f"--common '{bad[0]}' must look like section.key=value (arms go after --arm)")
    arms = [parse_arm(text, args.common) for text in args.arm]
    names = [arm.name for arm in arms]
    if len(set(names)) != len(names):
        raise SystemExit(f"arm names {names}: each name once")

    if args.untrained and UNTRAINED in names:
        raise SystemExit(f"--untrained adds a row named '{UNTRAINED}': rename that arm")

    earlier = recorded_rows(args.out) if args.resume else []
    runs = []
    for seed in args.seeds:
        for position, arm in enumerate(arms):
            entries = run(arm, seed, args.common, args.out, args.resume, args.untrained and position == 0, earlier)
            runs += entries
            for entry in entries:
                print(run_line(entry), flush=True)
    command = command_line(args)
    lines = markdown(runs, arms, args, command)
    print("\n" + "\n".join(lines))
    if not args.no_write:
        write_results(args.out, runs, lines, command)


if __name__ == "__main__":
    main()
