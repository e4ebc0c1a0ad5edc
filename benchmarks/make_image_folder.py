"""Generate a seeded folder of learnable images of mixed sizes and modes, for the streaming benchmarks.

    python benchmarks/make_image_folder.py /tmp/images --train 20000 --test 1000

writes ``OUT/train/<class>/<i>.<ext>`` and ``OUT/test/<class>/<i>.<ext>``. Each class is one shape
(disc, square, triangle, ring, cross, bars, diamond, star, half disc, dots) in one hue, drawn at a random place,
scale and rotation over a random two-colour gradient background with noise, so a network can
learn the classes but not from a single pixel. Sizes are uniform in 64..512 px per side
(``--sides``), independently per side. Formats by position: 80% RGB JPEG, 5% grayscale JPEG, 5% RGBA PNG,
5% palette PNG, 5% 16-bit grayscale PNG. Image ``i`` of a split depends only on (seed, split,
i), so a smaller ``--train`` gives a prefix of a larger one.
"""

from __future__ import annotations

import argparse
import colorsys
import math
import os
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("disc", "square", "triangle", "ring", "cross", "bars", "diamond", "star", "half-disc", "dots")
# (fraction of images, kind) in the order of the cycle of 20 positions
FORMATS = [("jpeg", 16), ("gray-jpeg", 1), ("rgba-png", 1), ("palette-png", 1), ("png16", 1)]
CYCLE = [kind for kind, count in FORMATS for _ in range(count)]


def polygon(centre: tuple[float, float], radius: float, angle: float, points: list[tuple[float, float]]) -> list:
    """``points`` (polar: fraction of ``radius``, turn fraction) rotated by ``angle`` around ``centre``."""
    cx, cy = centre
    return [(cx + r * radius * math.cos(2 * math.pi * t + angle), cy + r * radius * math.sin(2 * math.pi * t + angle))
            for r, t in points]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, centre: tuple[float, float], radius: float,
               angle: float, colour: tuple[int, int, int]) -> None:
    """One class shape of size ``radius`` at ``centre``."""
    cx, cy = centre
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "disc":
        draw.ellipse(box, fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(radius / 3)))
    elif shape == "square":
        draw.polygon(polygon(centre, radius, angle, [(1, t / 4 + 1 / 8) for t in range(4)]), fill=colour)
    elif shape == "diamond":
        draw.polygon(polygon(centre, radius, angle, [(1, 0), (0.5, 0.25), (1, 0.5), (0.5, 0.75)]), fill=colour)
    elif shape == "triangle":
        draw.polygon(polygon(centre, radius, angle, [(1, t / 3) for t in range(3)]), fill=colour)
    elif shape == "star":
        draw.polygon(polygon(centre, radius, angle, [(1 if k % 2 == 0 else 0.4, k / 10) for k in range(10)]), fill=colour)
    elif shape == "cross":
        for t in (0, 0.25):
            ends = polygon(centre, radius, angle, [(1, t), (1, t + 0.5)])
            draw.line(ends, fill=colour, width=max(2, int(radius / 3)))
    elif shape == "bars":
        for offset in (-0.6, 0, 0.6):
            a = polygon((cx + offset * radius * math.cos(angle), cy + offset * radius * math.sin(angle)),
                        radius, angle, [(1, 0.25), (1, 0.75)])
            draw.line(a, fill=colour, width=max(2, int(radius / 6)))
    elif shape == "half-disc":
        draw.pieslice(box, math.degrees(angle), math.degrees(angle) + 180, fill=colour)
    else:  # dots
        for k in range(5):
            x, y = polygon(centre, radius * 0.7, angle, [(1, k / 5)])[0]
            r = radius * 0.25
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)


def render(seed: int, split: str, index: int, classes: int, sides: tuple[int, int]) -> tuple[int, str, Image.Image]:
    """Image ``index`` of ``split``: ``(label, format kind, PIL image in RGB)``."""
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, index])
    label = int(rng.integers(classes))
    width, height = (int(v) for v in rng.integers(sides[0], sides[1] + 1, size=2))
    low, high = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
    ramp = (np.linspace(0, 1, width, dtype=np.float32)[None, :, None] if rng.random() < 0.5
            else np.linspace(0, 1, height, dtype=np.float32)[:, None, None])
    background = low + (high - low) * ramp + rng.standard_normal((height, width, 3), dtype=np.float32) * 12
    image = Image.fromarray(background.clip(0, 255).astype(np.uint8))
    hue = (label / classes + rng.normal(0, 0.02)) % 1.0
    colour = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.6 + 0.4 * rng.random(), 0.7 + 0.3 * rng.random()))
    side = min(width, height)
    radius = side * rng.uniform(0.18, 0.4)
    centre = (rng.uniform(radius, width - radius), rng.uniform(radius, height - radius))
    draw_shape(ImageDraw.Draw(image), SHAPES[label % len(SHAPES)], centre, radius, rng.uniform(0, 2 * math.pi), colour)
    return label, CYCLE[index % len(CYCLE)], image


def write(job: tuple[Path, int, str, int, int, tuple[int, int]]) -> int:
    """Render and save one image; returns its label."""
    out, seed, split, index, classes, sides = job
    label, kind, image = render(seed, split, index, classes, sides)
    folder = out / split / f"class{label:02d}"
    stem = folder / f"{index:06d}"
    if kind == "jpeg":
        image.save(stem.with_suffix(".jpg"), quality=90)
    elif kind == "gray-jpeg":
        image.convert("L").save(stem.with_suffix(".jpg"), quality=90)
    elif kind == "rgba-png":
        alpha = Image.linear_gradient("L").resize(image.size)
        image.putalpha(alpha)
        image.save(stem.with_suffix(".png"), compress_level=1)
    elif kind == "palette-png":
        image.quantize(64).save(stem.with_suffix(".png"), compress_level=1)
    else:  # 16-bit gray: 8-bit luma spread over 0..65535 (v * 257), so the decoder must scale it back
        gray = np.asarray(image.convert("L")).astype(np.uint16) * 257
        Image.fromarray(gray).save(stem.with_suffix(".png"), compress_level=1)
    return label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=20_000)
    parser.add_argument("--test", type=int, default=1_000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sides", type=int, nargs=2, default=(64, 512), help="range of each side in pixels")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    for split in ("train", "test"):
        for label in range(args.classes):
            (args.out / split / f"class{label:02d}").mkdir(parents=True, exist_ok=True)
    jobs = [(args.out, args.seed, split, i, args.classes, tuple(args.sides))
            for split, n in (("train", args.train), ("test", args.test)) for i in range(n)]
    start = time.perf_counter()
    with Pool(args.workers) as pool:
        labels = pool.map(write, jobs, chunksize=64)
    print(f"{len(jobs)} images ({args.train} train, {args.test} test, {args.classes} classes, "
          f"{np.bincount(labels).min()}..{np.bincount(labels).max()} per class) in {args.out} "
          f"in {time.perf_counter() - start:.1f} s with {args.workers} processes")


if __name__ == "__main__":
    main()
