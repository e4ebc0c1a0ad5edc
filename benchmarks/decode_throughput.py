"""Decoding throughput of one DataLoader worker: images/s of decode + decode-time crops.

    python benchmarks/make_image_folder.py /tmp/bench-images --train 600 --test 0
    python benchmarks/make_image_folder.py /tmp/bench-large --train 200 --test 0 --sides 800 2000
    python benchmarks/decode_throughput.py /tmp/bench-images /tmp/bench-images:jpeg /tmp/bench-large:jpeg --out decode_throughput

One process, one torch thread (as in a DataLoader worker). Every variant decodes the same
``--images`` files of each folder's train split (a seeded sample), for each training size:
``train``: two random resized crops per image (scale 0.08..1, one decode per image, the
crops taken from the full-resolution image), ``eval``: resize + centre crop. Variants:

* ``pil``: Pillow, full-resolution decode (``ImageFiles(draft=False)``);
* ``pil-draft``: Pillow with JPEG draft mode (the default, ``ImageFiles(draft=True)``);
* ``simplejpeg``: libjpeg-turbo through the ``simplejpeg`` wheel for JPEGs, scaled while
  decoding by the finest factor (n/8) that keeps every crop's resolution, Pillow for the rest
  and for the resize (only when ``simplejpeg`` is importable; it is not a dependency).

Runs are interleaved over ``--repeats`` rounds; the table gives medians of images per CPU second
(``time.process_time``: the decoding work, the least disturbed by other jobs on a shared
machine), images per wall-clock second, the per-round speed-up over ``pil``, and the mean
absolute pixel difference to ``pil`` on the same crops (the fast paths are lossy).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from contrastlab.data import DATASETS
from contrastlab.data.augment import RandomResizedCropFlip
from contrastlab.data.dataset import SampleKey
from contrastlab.data.decode import crop_generator, opened, to_8bit, to_tensor
from contrastlab.data.stream import ImageFiles, read_header
from report import write_results

try:
    import simplejpeg
except ImportError:
    simplejpeg = None


def simplejpeg_open(data: ImageFiles, path: str, room: float) -> tuple[Image.Image, float, float]:
    """The JPEG at ``path`` decoded by simplejpeg at the coarsest n/8 scale that keeps
    ``1 / room`` of its size, as an ``L``/``RGB`` PIL image, with its scale (x, y) to the original."""
    raw = Path(path).read_bytes()
    height, width, _, _ = simplejpeg.decode_jpeg_header(raw)
    pixels = simplejpeg.decode_jpeg(raw, "GRAY" if data.channels == 1 else "RGB",
                                    min_width=math.ceil(width / room), min_height=math.ceil(height / room))
    image = to_8bit(Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels), data.channels)
    return image, image.width / width, image.height / height


def simplejpeg_crops(data: ImageFiles, key: SampleKey) -> list[torch.Tensor]:
    """``data[key]["inputs"]`` with JPEGs decoded by simplejpeg (the crop boxes drawn exactly as
    ImageFiles draws them)."""
    path = data.path(key.index)
    if not path.lower().endswith((".jpg", ".jpeg")):
        return data[key]["inputs"]
    with opened(path) as header:
        width, height = header.size
    boxes = [crop.box(width, height, crop_generator(key.seed, k)) for k, crop in enumerate(data.crops)]
    room = min(min(w, h) / crop.size for crop, (_, _, w, h, _) in zip(data.crops, boxes))
    image, sx, sy = simplejpeg_open(data, path, max(room, 1.0))
    views = []
    for crop, (left, top, w, h, flip) in zip(data.crops, boxes):
        view = image.resize((crop.size, crop.size), Image.Resampling.BILINEAR,
                            box=(left * sx, top * sy, (left + w) * sx, (top + h) * sy))
        views.append(to_tensor(view.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else view))
    return views


def simplejpeg_centre(data: ImageFiles, index: int) -> torch.Tensor:
    """``data[index]["inputs"]`` (resize + centre crop) with JPEGs decoded by simplejpeg."""
    path = data.path(index)
    if not path.lower().endswith((".jpg", ".jpeg")):
        return data[index]["inputs"]
    with opened(path) as header:
        width, height = header.size
    square = min(width, height)
    image, sx, sy = simplejpeg_open(data, path, max(square / data.image_size, 1.0))
    left, top = (width - square) / 2, (height - square) / 2
    box = (left * sx, top * sy, (left + square) * sx, (top + square) * sy)
    return to_tensor(image.resize((data.image_size, data.image_size), Image.Resampling.BILINEAR, box=box))


def decoders(data: ImageFiles, mode: str) -> dict:
    """Variant name -> function of a sample position returning the decoded input(s)."""
    full = dataclasses.replace(data, draft=False)
    if mode == "train":
        out = {"pil": lambda i: full[SampleKey(i, i)]["inputs"], "pil-draft": lambda i: data[SampleKey(i, i)]["inputs"]}
        if simplejpeg is not None:
            out["simplejpeg"] = lambda i: simplejpeg_crops(data, SampleKey(i, i))
    else:
        out = {"pil": lambda i: [full[i]["inputs"]], "pil-draft": lambda i: [data[i]["inputs"]]}
        if simplejpeg is not None:
            out["simplejpeg"] = lambda i: [simplejpeg_centre(data, i)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+",
                        help="folders from make_image_folder.py (their train splits are read); FOLDER:jpeg keeps the JPEGs only")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="write benchmarks/results/<out>.{json,md}")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for folder, size in itertools.product(args.folders, args.sizes):
        root, _, only = folder.partition(":")
        data = DATASETS.get("folder")("train", root, size=args.images, seed=0, image_size=size, in_memory=False)
        if only == "jpeg":
            data = data.subset(torch.tensor([data.path(i).endswith(".jpg") for i in range(len(data))]))
        sides = [side for i in range(len(data)) for side in read_header(data.path(i))[0]]
        label = f"{Path(root).name} ({min(sides)}..{max(sides)} px{', JPEGs only' if only else ''})"
        for mode in ("train", "eval"):
            dataset = data.with_decode_crops([RandomResizedCropFlip(size), RandomResizedCropFlip(size)]) if mode == "train" else data
            variants = decoders(dataset, mode)
            cpu: dict[str, list[float]] = {name: [] for name in variants}  # images per CPU second, per round
            wall: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(args.repeats):
                for name, decode in variants.items():
                    start, start_cpu = time.perf_counter(), time.process_time()
                    for i in range(len(dataset)):
                        decode(i)
                    cpu[name].append(len(dataset) / (time.process_time() - start_cpu))
                    wall[name].append(len(dataset) / (time.perf_counter() - start))
            reference = [variants["pil"](i) for i in range(min(100, len(dataset)))]
            for name, decode in variants.items():
                diffs = [(a.float() - b.float()).abs().mean().item()
                         for i, ref in enumerate(reference) for a, b in zip(decode(i), ref)]
                row = {"folder": label, "size": size, "mode": mode, "variant": name,
                       "images_per_cpu_s": statistics.median(cpu[name]), "images_per_s": statistics.median(wall[name]),
                       "speedup_vs_pil": statistics.median(c / p for c, p in zip(cpu[name], cpu["pil"])),
                       "rounds_images_per_cpu_s": cpu[name], "rounds_images_per_s": wall[name],
                       "mean_abs_diff_vs_pil": float(np.mean(diffs))}
                rows.append(row)
                print(f"{label} size {size:>3} {mode:<5} {name:<11} {row['images_per_cpu_s']:7.1f} images/CPU s, "
                      f"x{row['speedup_vs_pil']:.2f} vs pil (mean |diff| {row['mean_abs_diff_vs_pil']:.2f})", flush=True)
    cpus = len(os.sched_getaffinity(0))
    command = (f"python benchmarks/decode_throughput.py {' '.join(args.folders)} --images {args.images} --sizes "
               f"{' '.join(map(str, args.sizes))} --repeats {args.repeats}" + (f" --out {args.out}" if args.out else ""))
    lines = [
        "# Decoding throughput of one worker", "",
        f"`{command}`", "",
        f"torch {torch.__version__}, Pillow {Image.__version__}, simplejpeg "
        f"{getattr(simplejpeg, '__version__', 'not installed')}, {platform.machine()}, {cpus} CPUs available to the "
        f"process, shared with other jobs while measuring (absolute numbers are noisy; the variants were interleaved, "
        f"so their ratios are the robust part). One process, one torch thread = one DataLoader worker. "
        f"{args.images} images of each folder's train split (sides in the range shown, 80% RGB JPEG, 5% each of gray "
        f"JPEG, RGBA, palette and 16-bit PNG); `train`: two random resized crops per image (scale 0.08..1) from one "
        f"decode; `eval`: resize + centre crop. Medians over {args.repeats} interleaved rounds: images per CPU second "
        f"of the process (the work, least disturbed by other jobs), images per wall-clock second, and the speed-up "
        f"in CPU time over `pil` in the same round.", "",
        "| images | size | mode | variant | images / CPU s | images / s (wall) | speed-up vs pil | mean abs diff vs pil (0..255) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['folder']} | {r['size']} | {r['mode']} | {r['variant']} | {r['images_per_cpu_s']:.0f} | "
              f"{r['images_per_s']:.0f} | {r['speedup_vs_pil']:.2f} | {r['mean_abs_diff_vs_pil']:.2f} |" for r in rows]
    print("\n".join(lines))
    if args.out:
        write_results(args.out, rows, lines, command)


if __name__ == "__main__":
    main()
