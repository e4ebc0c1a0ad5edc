"""Cost of InvCLR's penalty pass: forward mode (ours) vs the reference code's reverse mode.

Both compute, for view 1 of a Spirograph batch, a penalty whose gradient reaches the weights:

* forward mode (`contrastlab.components.invariance.directional_sensitivity`): one pass carrying
  tangents along one fresh draw, then backward;
* reverse mode (the reference code): ``G = d(eps . h^)/d alpha`` with ``create_graph``, the
  penalty ``mean_k (G . (alpha'_k - alpha))^2`` over 100 draws, then backward (double backward).

Each is timed as penalty + backward, in fp32 (the precision the penalty pass runs in), against
a plain forward + backward of the same batch. Median of ``--repeats`` runs.

    .venv/bin/python benchmarks/invclr_penalty_modes.py --out invclr_penalty_modes
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from contrastlab.components.invariance import directional_sensitivity
from contrastlab.data.preprocess import Normalize
from contrastlab.data.spirograph import SpirographViews, sample_factors, sample_nuisance
from contrastlab.models import build_backbone
from report import write_results


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="convnet")
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="write benchmarks/results/<out>.{json,md}")
    args = parser.parse_args()
    torch.manual_seed(0)
    views = SpirographViews(Normalize([0.3] * 3, [0.25] * 3))
    backbone = build_backbone(args.backbone, (3, 32, 32)).train()
    rows = []
    for batch_size in args.batch:
        generator = torch.Generator().manual_seed(0)
        batch = {"targets": sample_factors(batch_size, generator)}
        alpha = sample_nuisance(batch_size, generator)
        draws = torch.stack([sample_nuisance(batch_size, generator) for _ in range(100)])

        def encode(values):
            return backbone(views.apply(batch, values))

        def plain():
            backbone(views.apply(batch, {"nuisance": alpha})).sum().backward()

        def forward_mode():
            directional_sensitivity(encode, {"nuisance": alpha}, {"nuisance": draws[0] - alpha},
                                    generator=generator).mean().backward()

        def reverse_mode():
            leaf = alpha.clone().requires_grad_(True)
            h = F.normalize(encode({"nuisance": leaf}), dim=1)
            signs = torch.randint(0, 2, h.shape, generator=generator).float() * 2 - 1
            (grad,) = torch.autograd.grad((signs * h).sum(), leaf, create_graph=True)
            ((draws - leaf.detach()) * grad).sum(-1).square().mean().backward()

        row = {"batch": batch_size, **{name: timed(fn, args.repeats) for name, fn in
                                       (("plain", plain), ("forward_mode", forward_mode), ("reverse_mode", reverse_mode))}}
        rows.append(row)
        print(f"batch {batch_size}: plain {row['plain']:.3f} s, forward mode {row['forward_mode']:.3f} s, "
              f"reverse mode {row['reverse_mode']:.3f} s", flush=True)
    command = "python benchmarks/invclr_penalty_modes.py " + " ".join(
        [f"--backbone {args.backbone}", f"--batch {' '.join(map(str, args.batch))}", f"--repeats {args.repeats}"]
        + (["--out " + args.out] if args.out else []))
    lines = ["# InvCLR penalty pass: forward mode vs reverse mode (fp32, Spirograph)", "",
             f"`{command}` — torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, "
             f"backbone {args.backbone} in training mode. Seconds per pass incl. backward to the weights "
             "(median); the ratios are to a plain forward + backward of the same batch.", "",
             "| batch | plain fwd+bwd (s) | forward mode, 1 draw (s) | ratio | reverse mode + create_graph, 100 draws (s) | ratio |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['plain']:.3f} | {r['forward_mode']:.3f} | {r['forward_mode'] / r['plain']:.1f} | "
              f"{r['reverse_mode']:.3f} | {r['reverse_mode'] / r['plain']:.1f} |" for r in rows]
    print("\n".join(lines))
    if args.out:
        write_results(args.out, rows, lines, command)


if __name__ == "__main__":
    main()
