"""Where a training step's time goes, layer by layer: the forward and backward wall time of every
leaf module of the backbone and the projector (module hooks; CPU ops are synchronous), and the
rest of the step (views, loss, optimiser) as the difference to the whole step timed without hooks.

    flock /tmp/timing.lock .venv/bin/python benchmarks/step_profile.py --out step_profile_convnet

SimCLR's Fashion-MNIST recipe (batch 256, bf16 + channels-last unless overridden); ``--warmup``
untimed steps, then ``--rounds`` rounds of ``--steps`` steps, alternately with and without the
hooks; medians over the rounds. (``torch.profiler`` was not used: on this machine it more than
doubled the ConvNet's step, and not evenly over the operators.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from contrastlab.engine.distributed import init_distributed
from contrastlab.engine.trainer import Trainer
from contrastlab.recipes import config_from
from report import write_results

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "simclr-gray-small-convnet.yaml"
COMMON = ["data.train_size=10240", "data.test_size=500", "eval.at_end=false", "train.progress=false",
          "train.loggers=[jsonl]", "train.epochs=1", "train.online_probe=false", "train.precision=bf16"]


class LayerTimer:
    """Forward and backward seconds of every leaf module of ``model``, keyed by
    ``(module path, type, output shape)``, while :meth:`attach` ed."""

    def __init__(self, model: nn.Module, prefix: str) -> None:
        self.leaves = [(f"{prefix}.{name}", m) for name, m in model.named_modules() if not list(m.children())]
        self.seconds: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0.0])
        self.handles: list = []

    def attach(self) -> None:
        for name, module in self.leaves:
            started = {}

            def forward_pre(mod, inputs, started=started):
                started["forward"] = time.perf_counter()

            def forward_post(mod, inputs, output, started=started, name=name):
                started["shape"] = tuple(output.shape)
                self.seconds[name, type(mod).__name__, started["shape"]][0] += time.perf_counter() - started["forward"]

            def backward_pre(mod, grad_output, started=started):
                started["backward"] = time.perf_counter()

            def backward_post(mod, grad_input, grad_output, started=started, name=name):
                self.seconds[name, type(mod).__name__, started["shape"]][1] += time.perf_counter() - started["backward"]

            self.handles += [module.register_forward_pre_hook(forward_pre), module.register_forward_hook(forward_post),
                             module.register_full_backward_pre_hook(backward_pre),
                             module.register_full_backward_hook(backward_post)]

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def timed_steps(trainer: Trainer, steps: int) -> float:
    start = time.perf_counter()
    trainer.train_steps(steps)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default="step_profile_convnet")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = config_from(RECIPE, COMMON + [f"train.max_steps_per_epoch={args.warmup + 2 * args.rounds * args.steps}"]
                      + args.overrides)
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(cfg, Path(folder), init_distributed("cpu"))
        timers = [LayerTimer(trainer.method.backbone, "backbone"), LayerTimer(trainer.method.projector, "projector")]
        trainer.train_steps(args.warmup)
        plain, hooked = [], []
        for _ in range(args.rounds):
            plain.append(timed_steps(trainer, args.steps))
            for timer in timers:
                timer.attach()
            hooked.append(timed_steps(trainer, args.steps))
            for timer in timers:
                timer.detach()
        trainer.close()
    step = statistics.median(plain)
    per_step = 1000 / (args.steps * args.rounds)  # seconds summed over every hooked step -> ms per step
    layers = [(key, fwd * per_step, bwd * per_step) for timer in timers for key, (fwd, bwd) in timer.seconds.items()]
    inside = sum(f + b for _, f, b in layers)
    by_type: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for (_, kind, _), fwd, bwd in layers:
        by_type[kind][0] += fwd
        by_type[kind][1] += bwd

    command = "flock /tmp/timing.lock .venv/bin/python benchmarks/step_profile.py " + " ".join(sys.argv[1:])
    lines = ["# Where SimCLR's training step spends its time", "",
             f"`{command}`; {torch.get_num_threads()} threads; overrides: {' '.join(COMMON + args.overrides)}. "
             f"Whole step without hooks: **{1000 * step:.0f} ms** (median of {args.rounds} rounds of {args.steps}; "
             f"with hooks {1000 * statistics.median(hooked):.0f} ms). Per leaf module, forward and backward wall "
             f"time with the hooks; the rest of the step (views, loss, optimiser, the hooks' own cost) is the "
             f"difference.", "",
             "| module type | forward ms | backward ms | total ms | share of the step % |", "|---|---|---|---|---|"]
    for kind, (fwd, bwd) in sorted(by_type.items(), key=lambda item: -sum(item[1])):
        lines.append(f"| {kind} | {fwd:.1f} | {bwd:.1f} | {fwd + bwd:.1f} | {100 * (fwd + bwd) / (1000 * step):.1f} |")
    rest = 1000 * statistics.median(hooked) - inside
    lines += [f"| rest of the step | | | {rest:.1f} | {100 * rest / (1000 * step):.1f} |", "",
              "Per layer:", "", "| module | type | output shape | forward ms | backward ms |", "|---|---|---|---|---|"]
    for (name, kind, shape), fwd, bwd in layers:
        lines.append(f"| {name} | {kind} | {list(shape)} | {fwd:.1f} | {bwd:.1f} |")
    rows = [{"module": name, "type": kind, "shape": list(shape), "forward_ms": fwd, "backward_ms": bwd}
            for (name, kind, shape), fwd, bwd in layers]
    write_results(args.out, [{"step_ms": 1000 * step, "hooked_step_ms": 1000 * statistics.median(hooked),
                              "layers": rows}], lines, command)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
