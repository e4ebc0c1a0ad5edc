"""Step-time ratio of method variants to a baseline, on the same data, backbone and batch.

Each variant trains with the real trainer (views made on the device, forward, backward,
optimiser step) for ``--steps`` steps after ``--warmup`` untimed ones; the runs are
interleaved over ``--repeats`` rounds so that drift in the machine's load hits every variant
alike; the ratio is that of the mean step times over all timed steps (the median is beside it). A variant is
``name=override,override,...`` on the ``--base`` recipe, or ``name=RECIPE.yaml[:override,...]``
on another recipe (the first variant is the baseline).

    .venv/bin/python benchmarks/step_time.py --out invclr_step_time \\
        --base configs/simclr-spirograph-convnet.yaml \\
        "simclr=method.name=simclr" "invclr=method.name=invclr,method.gp_weight=0.01"
    .venv/bin/python benchmarks/step_time.py --out metamask_step_time \
        --base configs/metamask-gray-small-convnet.yaml \
        "barlow_twins=configs/barlow_twins-gray-small-convnet.yaml" "metamask=method.meta_order=second"
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from contrastlab.data.dataset import batch_to
from contrastlab.engine.distributed import init_distributed
from contrastlab.engine.trainer import Trainer
from contrastlab.recipes import load_config
from report import write_results


def parse_variant(text: str, base: str) -> tuple[str, tuple[str, list[str]]]:
    """``name=[RECIPE.yaml:]override,...`` -> ``(name, (recipe, overrides))``."""
    name, _, spec = text.partition("=")
    recipe, colon, overrides = spec.partition(":")
    if not colon and recipe.endswith(".yaml"):
        overrides = ""
    elif not (colon and recipe.endswith(".yaml")):
        recipe, overrides = base, spec
    if not name or not (overrides or recipe != base):
        raise SystemExit(f"a variant is name=override[,override...] or name=RECIPE.yaml[:override,...], got '{text}'")
    if not Path(recipe).is_file():
        raise SystemExit(f"variant '{text}': no recipe file {recipe}")
    return name, (recipe, overrides.split(",") if overrides else [])


def step_times(recipe: str, overrides: list[str], steps: int, warmup: int, run_dir: Path) -> list[float]:
    """Seconds per step of ``steps`` timed steps (after ``warmup``) of one fresh trainer."""
    cfg = load_config(recipe, [*overrides, "train.progress=false", "eval.at_end=false", "train.epochs=1",
                               f"train.max_steps_per_epoch={steps + warmup}"])
    trainer = Trainer(cfg, run_dir, init_distributed(cfg.train.device))
    generator = torch.Generator().manual_seed(1)
    trainer.method.train()
    times = []
    for i, batch in enumerate(trainer.loader):
        start = time.perf_counter()
        trainer._step(batch_to(batch, trainer.device), generator)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="name=override,override (the first is the baseline)")
    parser.add_argument("--base", required=True, help="the recipe every variant starts from")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="write benchmarks/results/<out>.{json,md}")
    args = parser.parse_args()
    variants = dict(parse_variant(v, args.base) for v in args.variants)
    times: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeats):
            for name, (recipe, overrides) in variants.items():
                times[name] += step_times(recipe, overrides, args.steps, args.warmup, Path(tmp) / f"{name}-{round_}")
                print(f"round {round_ + 1}: {name:<28} {statistics.mean(times[name]):.3f} s/step", flush=True)
    baseline = next(iter(variants))
    cfg = load_config(*variants[baseline])
    base_mean = statistics.mean(times[baseline])
    rows = [{"variant": name, "recipe": variants[name][0], "overrides": variants[name][1],
             "seconds_per_step_median": statistics.median(t), "seconds_per_step_mean": statistics.mean(t),
             "ratio": statistics.mean(t) / base_mean, "ratio_median": statistics.median(t) / statistics.median(times[baseline]),
             "images_per_s": load_config(*variants[name]).train.batch_size / statistics.mean(t)}
            for name, t in times.items()]
    command = "python benchmarks/step_time.py " + " ".join(
        [f"--base {args.base}", f"--steps {args.steps}", f"--warmup {args.warmup}", f"--repeats {args.repeats}"]
        + (["--out " + args.out] if args.out else []) + [f'"{v}"' for v in args.variants])
    lines = [
        f"# Step time vs {baseline}", "",
        f"`{command}`", "",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}; "
        f"baseline: data {cfg.data.name}, backbone {cfg.backbone.name}, batch {cfg.train.batch_size}, precision "
        f"{cfg.train.precision}, channels_last {cfg.train.channels_last}. {args.steps * args.repeats} timed "
        f"steps per variant, runs interleaved; the ratio is of the mean step times (a variant whose steps "
        f"differ, e.g. a meta step every k steps, costs its mean), the median is beside it.", "",
        "| variant | recipe | overrides | mean s/step | median s/step | images/s | step time vs baseline | (medians) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['variant']} | {Path(r['recipe']).name} | `{' '.join(r['overrides'])}` | "
              f"{r['seconds_per_step_mean']:.3f} | {r['seconds_per_step_median']:.3f} | {r['images_per_s']:.0f} | "
              f"{r['ratio']:.2f} | {r['ratio_median']:.2f} |" for r in rows]
    print("\n".join(lines))
    if args.out:
        write_results(args.out, rows, lines, command)


if __name__ == "__main__":
    main()
