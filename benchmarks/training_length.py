"""Accuracy against training length: kNN and linear top-1 of each recipe after 1, 3, 10, 30
epochs, beside the untrained backbone, on one dataset.

Each (recipe, epochs) is a separate run of the whole budget (the learning-rate schedule ends at
that epoch, as a user's ``train.epochs=N`` run does), trained through :mod:`seed_study`'s runner
into ``benchmarks/_runs/<out>/``; the first recipe's first run also evaluates the backbone at
initialisation (the "untrained" line). Writes ``results/<out>.{json,md}`` and
``results/<out>.png`` (kNN and linear panels, epochs on a log axis).

    .venv/bin/python benchmarks/training_length.py --out training_length_digits --epochs 1 3 10 30 \\
        --common data.name=digits eval.knn_k=20 \\
        --recipe simclr=configs/simclr-gray-small-convnet.yaml --recipe byol=configs/byol-gray-small-convnet.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from report import RESULTS, write_results
from seed_study import SAFE_NAME, UNTRAINED, mean_std, parse_arm, run, run_line

PANELS = (("knn", "kNN top-1 %"), ("linear", "linear top-1 %"))


def plot(runs: list[dict], names: list[str], epochs: list[int], path: str, title: str) -> None:
    """kNN and linear accuracy against epochs, one line per recipe, the untrained level dashed."""
    figure = Figure(figsize=(10, 4), dpi=120)
    FigureCanvasAgg(figure)
    for position, (key, label) in enumerate(PANELS):
        axes = figure.add_subplot(1, len(PANELS), position + 1)
        for name in names:
            points = sorted((r["epochs"], r[key]) for r in runs if r["arm"] == name)
            axes.plot([e for e, _ in points], [v for _, v in points], marker="o", label=name)
        untrained = [r[key] for r in runs if r["arm"] == UNTRAINED]
        if untrained:
            axes.axhline(sum(untrained) / len(untrained), color="black", linestyle="--", label=UNTRAINED)
        axes.set_xscale("log")
        axes.set_xticks(epochs, [str(e) for e in epochs])
        axes.set_xlabel("training epochs")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path)


def table(runs: list[dict], names: list[str], epochs: list[int]) -> list[str]:
    """One row per recipe: ``kNN / linear`` at each length, then the untrained row."""
    lines = ["| recipe | " + " | ".join(f"{e} ep kNN / linear" for e in epochs) + " |",
             "|---|" + "---|" * len(epochs)]
    for name in names:
        cells = []
        for e in epochs:
            done = [r for r in runs if r["arm"] == name and r["epochs"] == e]
            cells.append(" / ".join(mean_std([r[key] for r in done], ".2f") for key, _ in PANELS))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    base = [r for r in runs if r["arm"] == UNTRAINED]
    if base:
        level = " / ".join(mean_std([r[key] for r in base], ".2f") for key, _ in PANELS)
        lines.append(f"| {UNTRAINED} | " + " | ".join([level] * len(epochs)) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="results/<out>.{json,md,png} and _runs/<out>/")
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 3, 10, 30])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--common", nargs="*", default=[], metavar="OVERRIDE",
                        help="section.key=value overrides for every run (after the recipe)")
    parser.add_argument("--recipe", action="append", required=True, metavar="NAME=RECIPE[:OVERRIDE,...]")
    parser.add_argument("--resume", action="store_true", help="read finished runs instead of retraining them")
    args = parser.parse_args()
    if not SAFE_NAME.fullmatch(args.out):
        raise SystemExit(f"--out '{args.out}': use letters, digits and . _ + - only (not first .)")
    if any(e < 1 for e in args.epochs) or len(set(args.epochs)) != len(args.epochs):
        raise SystemExit(f"--epochs {args.epochs}: distinct positive numbers")
    recipes = [parse_arm(text, args.common) for text in args.recipe]
    names = [r.name for r in recipes]
    runs = []
    for position, recipe in enumerate(recipes):
        for index, epochs in enumerate(args.epochs):
            arm = dataclasses.replace(recipe, name=f"{recipe.name}-e{epochs}",
                                      overrides=(*recipe.overrides, f"train.epochs={epochs}"))
            entries = run(arm, args.seed, args.common, args.out, args.resume, untrained=position == index == 0)
            for entry in entries:
                entry.update(arm=recipe.name if entry["arm"] != UNTRAINED else UNTRAINED, epochs=epochs)
                print(run_line(entry), flush=True)
            runs += entries
    parts = ["python", "benchmarks/training_length.py", "--out", args.out, "--epochs", *map(str, args.epochs),
             "--seed", str(args.seed)]
    parts += ["--common", *args.common] if args.common else []
    for text in args.recipe:
        parts += ["--recipe", text]
    command = shlex.join(parts)
    dataset = runs[0]["dataset"]
    title = f"{dataset}: accuracy against training length (seed {args.seed})"
    lines = [f"# {title}", "", f"`{command}`", "",
             f"Common overrides: {' '.join(f'`{o}`' for o in args.common) or 'none'}. Each cell is one run "
             "trained for that many epochs (its schedule ends there); the untrained row is the first recipe's "
             f"backbone at initialisation. Plot: `{args.out}.png`.", "", *table(runs, names, args.epochs)]
    print("\n".join(lines))
    write_results(args.out, runs, lines, command)
    plot(runs, names, args.epochs, str(RESULTS / f"{args.out}.png"), title)


if __name__ == "__main__":
    main()
