"""Forward + backward wall time of SimCLR's NT-Xent: ours against peer-style formulas.

Variants, all on two ``(B, D)`` fp32 projections that require grad:

* ``ours``: :func:`contrastlab.losses.nt_xent` (default ``kind="infonce"``: one matmul, the
  self-similarities at ``-inf``, torch's fused cross-entropy);
* ``ours composite``: the previous default, ``(pos, neg)`` by :func:`batch_pairs`
  (boolean-mask gather), concatenated, and the composite log-sum-exp that forward-mode
  tangents can be back-propagated through (what ``nt_xent`` still uses under a tangent);
* ``solo-learn style``: exponentiated similarities summed under a positive and a negative
  mask, ``-mean log(pos / (pos + neg))`` (solo-learn's published formula, no max shift);
* ``lightly style``: the four ``B x B`` view blocks, the self-similarity diagonals removed,
  rows of ``2B - 1`` logits with the positive at column ``i``, torch's cross-entropy
  (lightly's published formula).

The peers are written here from their formulas, not taken from their code. Every variant is
checked to give the same loss before timing; the rounds are interleaved over the variants so
that drift in the machine's load hits all alike; the time is the median over ``--repeats``.

    flock /tmp/timing.lock .venv/bin/python benchmarks/loss_speed.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from contrastlab.losses import batch_pairs, nt_xent
from contrastlab.losses.logsumexp import logsumexp
from report import write_results

Loss = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def composite(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """The previous default path (see the module docstring)."""
    pos, neg = batch_pairs(z1, z2)
    logits = torch.cat([pos[:, None], neg], dim=1) / t
    return (logsumexp(logits, dim=1) - logits[:, 0]).mean()


def solo_learn_style(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """``-mean_a log(P_a / (P_a + N_a))`` with ``P_a``, ``N_a`` the sums of ``exp(s_ak / t)`` over
    the other view of ``a``'s image and over the other images."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    image = torch.arange(z1.shape[0], device=z.device).repeat(2)
    same = image[:, None] == image[None, :]
    positive = same & ~torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    sim = torch.exp(z @ z.T / t)
    pos, neg = (sim * positive).sum(dim=1), (sim * ~same).sum(dim=1)
    return -torch.log(pos / (pos + neg)).mean()


def lightly_style(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """Cross-entropy over rows ``[a . other view, a . own view without a]`` of ``2B - 1``
    logits, the positive at column ``i`` for anchor ``i`` of either view."""
    a, b = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    n = a.shape[0]
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=a.device)
    own_a = (a @ a.T / t)[off_diagonal].view(n, n - 1)
    own_b = (b @ b.T / t)[off_diagonal].view(n, n - 1)
    logits = torch.cat([torch.cat([a @ b.T / t, own_a], dim=1), torch.cat([b @ a.T / t, own_b], dim=1)])
    return F.cross_entropy(logits, torch.arange(n, device=a.device).repeat(2))


VARIANTS: dict[str, Loss] = {
    "ours": lambda z1, z2, t: nt_xent(z1, z2, t),
    "ours composite": composite,
    "solo-learn style": solo_learn_style,
    "lightly style": lightly_style,
}
PEERS = ("solo-learn style", "lightly style")


def fwd_bwd_seconds(loss: Loss, z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    z1.grad = z2.grad = None
    start = time.perf_counter()
    loss(z1, z2, t).backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", default="loss_speed", help="write benchmarks/results/<out>.{json,md}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t = args.temperature
    load_before = os.getloadavg()[0]
    rows = []
    for b in args.batch:
        g = torch.Generator().manual_seed(b)
        z1, z2 = (torch.randn(b, args.dim, generator=g).requires_grad_() for _ in range(2))
        values = {name: loss(z1, z2, t).item() for name, loss in VARIANTS.items()}
        if max(values.values()) - min(values.values()) > 1e-4 * abs(values["ours"]):
            raise SystemExit(f"the variants disagree at B={b}: {values}")
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for round_ in range(args.warmup + args.repeats):
            for name, loss in VARIANTS.items():
                seconds = fwd_bwd_seconds(loss, z1, z2, t)
                if round_ >= args.warmup:
                    times[name].append(seconds)
        medians = {name: 1000 * statistics.median(v) for name, v in times.items()}
        fastest_peer = min(PEERS, key=medians.get)
        for name in VARIANTS:
            ratio = medians[name] / medians[fastest_peer]
            ratio_min = min(times[name]) / min(min(times[peer]) for peer in PEERS)
            rows.append({"batch": b, "dim": args.dim, "variant": name, "loss": values[name],
                         "ms_median": medians[name], "ms_min": 1000 * min(times[name]),
                         "ratio_to_fastest_peer": ratio, "fastest_peer": fastest_peer,
                         "ratio_to_fastest_peer_min": ratio_min})
            print(f"B={b:<5} {name:<17} {medians[name]:8.2f} ms  x{ratio:.2f}", flush=True)
    command = ("flock /tmp/timing.lock .venv/bin/python benchmarks/loss_speed.py"
               + " --batch " + " ".join(map(str, args.batch)) + f" --dim {args.dim} --temperature {t}"
               + f" --threads {args.threads} --warmup {args.warmup} --repeats {args.repeats} --out {args.out}")
    lines = [
        "# NT-Xent forward + backward: ours vs peer-style formulas", "",
        f"`{command}`", "",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, CPU; D={args.dim}, t={t}. "
        f"Median (and minimum) over {args.repeats} forward+backward calls after {args.warmup} warm-up rounds, "
        "rounds interleaved over the variants; the ratio is to the faster of the two peer-style formulas at "
        "that batch size (of the medians, and of the minima). "
        f"1-minute load average {load_before:.1f} at the start and {os.getloadavg()[0]:.1f} at the end, on "
        f"{os.cpu_count()} CPUs shared with other work: the minimum is the least disturbed figure. "
        "See the script's docstring for what each variant computes.", "",
        "| B | variant | ms (median) | ms (min) | vs fastest peer (medians) | (minima) |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['batch']} | {r['variant']} | {r['ms_median']:.2f} | {r['ms_min']:.2f} | "
              f"{r['ratio_to_fastest_peer']:.2f} | {r['ratio_to_fastest_peer_min']:.2f} |" for r in rows]
    print("\n".join(lines))
    write_results(args.out, rows, lines, command)


if __name__ == "__main__":
    main()
