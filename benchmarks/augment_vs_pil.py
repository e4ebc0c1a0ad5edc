"""Throughput (images/s) of the batched ``simclr-cifar`` views vs the same pipeline in per-image PIL.

Both make the two views of a batch of 256 random 32x32 RGB uint8 images on the CPU: random
resized crop + flip, colour jitter (s = 0.5, p = 0.8), grayscale (p = 0.2), normalisation.
The PIL version loops over images (crop + resize, flip, ImageEnhance brightness / contrast /
colour, hue as an HSV shift, grayscale, to a normalised tensor), as a torchvision-style
per-image loader would. The batched version runs once per thread count in ``--threads``.

    .venv/bin/python benchmarks/augment_vs_pil.py          # writes benchmarks/results/augment_vs_pil.{json,md}
    .venv/bin/python benchmarks/augment_vs_pil.py --quick  # fewer repeats, nothing written
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance

from contrastlab.data.augment import build_views
from contrastlab.data.preprocess import Normalize

RESULTS = Path(__file__).parent / "results"
BATCH, SIZE = 256, 32
MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]
STRENGTH, JITTER_PROB, GRAY_PROB = 0.5, 0.8, 0.2


def pil_crop_box(rng: random.Random, width: int, height: int) -> tuple[float, float, float, float]:
    """torchvision's RandomResizedCrop box (scale 0.08-1, ratio 3/4-4/3), whole image as fallback."""
    for _ in range(10):
        area = rng.uniform(0.08, 1.0) * width * height
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = math.sqrt(area * ratio), math.sqrt(area / ratio)
        if w <= width and h <= height:
            left, top = rng.uniform(0, width - w), rng.uniform(0, height - h)
            return left, top, left + w, top + h
    return 0, 0, width, height


def pil_view(image: Image.Image, rng: random.Random) -> torch.Tensor:
    """One view of one image: ``(3, 32, 32)`` float32, normalised."""
    image = image.resize((SIZE, SIZE), Image.BILINEAR, box=pil_crop_box(rng, *image.size))
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    if rng.random() < JITTER_PROB:
        spread = 0.8 * STRENGTH
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(1 - spread, 1 + spread))
        image = ImageEnhance.Contrast(image).enhance(rng.uniform(1 - spread, 1 + spread))
        image = ImageEnhance.Color(image).enhance(rng.uniform(1 - spread, 1 + spread))
        hsv = np.array(image.convert("HSV"))
        shift = round(rng.uniform(-0.2 * STRENGTH, 0.2 * STRENGTH) * 255)
        hsv[..., 0] += np.uint8(shift % 256)  # wraps around the hue circle
        image = Image.frombytes("HSV", image.size, hsv.tobytes()).convert("RGB")
    if rng.random() < GRAY_PROB:
        image = image.convert("L").convert("RGB")
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def pil_views(images: list[Image.Image], rng: random.Random) -> list[torch.Tensor]:
    return [torch.stack([pil_view(image, rng) for image in images]) for _ in range(2)]


def seconds(run, repeats: int) -> float:
    """Median wall time of ``run()`` over ``repeats`` calls after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats; print only")
    parser.add_argument("--threads", default=f"1,{torch.get_num_threads()}", help="comma-separated torch thread counts")
    args = parser.parse_args()
    repeats = 3 if args.quick else 15
    threads = sorted({int(t) for t in args.threads.split(",")})

    array = np.random.default_rng(0).integers(0, 256, (BATCH, SIZE, SIZE, 3), dtype=np.uint8)
    batch = {"inputs": torch.from_numpy(array).permute(0, 3, 1, 2).contiguous(), "index": torch.arange(BATCH)}
    pil_images = [Image.fromarray(a) for a in array]
    views = build_views("simclr-cifar", image_size=SIZE, channels=3, normalize=Normalize(MEAN, STD))
    generator, rng = torch.Generator().manual_seed(0), random.Random(0)

    rows = [{"implementation": "PIL, per image", "threads": 1,
             "seconds": seconds(lambda: pil_views(pil_images, rng), repeats)}]
    for n in threads:
        torch.set_num_threads(n)
        rows.append({"implementation": "contrastlab, batched", "threads": n,
                     "seconds": seconds(lambda: [view(batch, generator) for view in views], repeats)})
    for row in rows:
        row["images_per_s"] = 2 * BATCH / row["seconds"]  # two views per image
        row["speedup_vs_pil"] = rows[0]["seconds"] / row["seconds"]

    header = f"{'implementation':<22} {'threads':>7} {'ms / batch':>11} {'images/s':>10} {'vs PIL':>7}"
    lines = [header] + [
        f"{r['implementation']:<22} {r['threads']:>7} {1000 * r['seconds']:>11.1f} {r['images_per_s']:>10.0f} "
        f"{r['speedup_vs_pil']:>6.1f}x"
        for r in rows
    ]
    print("\n".join(lines))
    if args.quick:
        return
    env = {"torch": torch.__version__, "pillow": Image.__version__, "default_threads": torch.get_num_threads(),
           "machine": platform.machine(), "python": sys.version.split()[0], "batch": BATCH, "image_size": SIZE,
           "repeats": repeats, "load_average_1min": os.getloadavg()[0],
           "command": "python benchmarks/augment_vs_pil.py"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "augment_vs_pil.json").write_text(json.dumps({"env": env, "rows": rows}, indent=2) + "\n")
    markdown = [
        "# Batched augmentations vs per-image PIL", "",
        f"Two `simclr-cifar` views of {BATCH} random {SIZE}x{SIZE} RGB uint8 images on the CPU "
        f"(median of {repeats} runs; images/s counts both views).", "",
        "| implementation | threads | ms / batch | images/s | speed-up vs PIL |", "|---|---|---|---|---|",
        *[f"| {r['implementation']} | {r['threads']} | {1000 * r['seconds']:.1f} | {r['images_per_s']:.0f} | "
          f"{r['speedup_vs_pil']:.1f}x |" for r in rows],
        "", f"torch {env['torch']}, Pillow {env['pillow']}, Python {env['python']}, {env['machine']}, "
        f"1-minute load average {env['load_average_1min']:.2f} at the end; command: `{env['command']}`", "",
        "Other processes on the machine inflate the multi-thread timings most (OpenMP threads wait "
        "for each other); compare the 1-thread rows across machines.", "",
    ]
    (RESULTS / "augment_vs_pil.md").write_text("\n".join(markdown))


if __name__ == "__main__":
    main()
