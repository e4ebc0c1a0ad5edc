"""Images/s of contrastlab's SimCLR training step against a plain-PyTorch reference loop.

The reference loop is SimCLR as a lightly user would write it: Fashion-MNIST (contrastlab's idx
loader), two views per image made by PIL in a ``torch.utils.data.DataLoader`` (random resized
crop 0.4-1 back to 28 px, brightness/contrast jitter p=0.8, Gaussian blur p=0.5, to tensor,
normalise), fp32 in contiguous memory, the recipe's ConvNet (from contrastlab's backbone
registry) with a Linear-BN-ReLU-Linear projector 256-512-128, NT-Xent on the full 2B x 2B
similarity matrix with its diagonal masked, SGD with momentum, batch 256; timed over the steps
after a few warm-up steps, with DataLoader num_workers 0 and 2.

Ours: ``configs/simclr-gray-small-convnet.yaml`` through the Trainer (views made on the batch),
with its default CPU settings (``train.precision=auto``: bf16 where the CPU computes bf16
natively, else fp32; channels-last), fp32 with channels-last, and fp32 + contiguous without the
online probe (like for like); timed over the logged windows of the second epoch.
With ``--peers``, a folder holding lightly and solo-learn, also our Trainer with the SimCLR loss
swapped for lightly's ``NTXentLoss`` and solo-learn's ``simclr_loss_func``.

    .venv/bin/pip install --no-deps --target /tmp/peers lightly solo-learn   # optional
    flock /tmp/timing.lock .venv/bin/python benchmarks/reference_loop.py --peers /tmp/peers
    .venv/bin/python benchmarks/reference_loop.py --quick    # 3 steps each, nothing written
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.abc
import importlib.machinery
import json
import os
import random
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageFilter
from torch import nn

import contrastlab.methods.simclr as simclr_module
from contrastlab.data import DATASETS
from contrastlab.engine.distributed import init_distributed
from contrastlab.engine.setup import autocast_dtype
from contrastlab.engine.trainer import Trainer
from contrastlab.losses import nt_xent
from contrastlab.models import build_backbone
from contrastlab.recipes import load_config
from report import write_results

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "simclr-gray-small-convnet.yaml"
BATCH, TEMPERATURE, SIZE = 256, 0.2, 28
OURS = {
    "contrastlab, defaults (precision=auto, channels-last)": ["train.precision=auto"],
    "contrastlab, fp32, channels-last": ["train.precision=fp32"],
    "contrastlab, fp32, contiguous, no online probe": ["train.precision=fp32", "train.channels_last=false",
                                                       "train.online_probe=false"],
}
OURS_DEFAULT = OURS["contrastlab, defaults (precision=auto, channels-last)"]
Loss = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


# ----------------------------------------------------------------------------- the reference loop
def random_resized_crop(img: Image.Image, scale=(0.4, 1.0), ratio=(3 / 4, 4 / 3)) -> Image.Image:
    """A random box of ``scale`` of the area and aspect ``ratio``, resized back to SIZE px."""
    width, height = img.size
    for _ in range(10):
        area = width * height * random.uniform(*scale)
        aspect = np.exp(random.uniform(np.log(ratio[0]), np.log(ratio[1])))
        w, h = round((area * aspect) ** 0.5), round((area / aspect) ** 0.5)
        if 0 < w <= width and 0 < h <= height:
            x, y = random.randint(0, width - w), random.randint(0, height - h)
            return img.resize((SIZE, SIZE), Image.Resampling.BILINEAR, box=(x, y, x + w, y + h))
    return img.resize((SIZE, SIZE), Image.Resampling.BILINEAR)


def jitter(img: Image.Image, strength: float = 0.8, prob: float = 0.8) -> Image.Image:
    """Brightness and contrast by factors in [1 - strength, 1 + strength], in random order."""
    if random.random() >= prob:
        return img
    enhancers = [ImageEnhance.Brightness, ImageEnhance.Contrast]
    random.shuffle(enhancers)
    for enhancer in enhancers:
        img = enhancer(img).enhance(random.uniform(1 - strength, 1 + strength))
    return img


def blur(img: Image.Image, prob: float = 0.5, sigma=(0.1, 2.0)) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(random.uniform(*sigma))) if random.random() < prob else img


class TwoViews(torch.utils.data.Dataset):
    """Each uint8 ``(H, W)`` image as two normalised ``(1, SIZE, SIZE)`` float views."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images
        self.mean, self.std = float(images.mean()) / 255, float(images.std()) / 255

    def __len__(self) -> int:
        return len(self.images)

    def view(self, img: Image.Image) -> torch.Tensor:
        pixels = np.asarray(blur(jitter(random_resized_crop(img))), dtype=np.float32) / 255
        return torch.from_numpy((pixels - self.mean) / self.std).unsqueeze(0)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = Image.fromarray(self.images[index])
        return self.view(img), self.view(img)


def plain_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent the plain way: cosine similarities of all 2B projections, the diagonal masked,
    cross-entropy towards each one's other view."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = (z @ z.T / temperature).fill_diagonal_(float("-inf"))
    n = len(z1)
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(logits, targets)


def reference_images_per_s(images: np.ndarray, workers: int, steps: int, warmup: int) -> float:
    """Images/s of the reference loop over ``steps`` steps after ``warmup`` steps."""
    torch.manual_seed(0)
    backbone = build_backbone("convnet", (1, SIZE, SIZE))
    model = nn.Sequential(backbone, nn.Linear(backbone.out_dim, 512), nn.BatchNorm1d(512), nn.ReLU(),
                          nn.Linear(512, 128))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-6)
    loader = torch.utils.data.DataLoader(TwoViews(images), batch_size=BATCH, shuffle=True, drop_last=True,
                                         num_workers=workers)
    batches = iter(loader)

    def train_step() -> None:
        x1, x2 = next(batches)
        z1, z2 = model(torch.cat([x1, x2])).chunk(2)
        loss = plain_nt_xent(z1, z2, TEMPERATURE)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()

    for _ in range(warmup):
        train_step()
    start = time.perf_counter()
    for _ in range(steps):
        train_step()
    return steps * BATCH / (time.perf_counter() - start)


# ----------------------------------------------------------------------------- our trainer
def trainer_images_per_s(overrides: list[str], steps: int, log_every: int) -> float:
    """Images/s of the recipe through the Trainer over the second epoch's ``steps`` steps (equal
    logged windows, so total images over total time)."""
    cfg = load_config(RECIPE, overrides=[
        f"train.batch_size={BATCH}", "train.epochs=2", f"train.max_steps_per_epoch={steps}",
        f"train.log_every={log_every}", "train.progress=false", "train.device=cpu", "eval.at_end=false",
        *overrides,
    ])
    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder) / "run"
        Trainer(cfg, run_dir, init_distributed("cpu")).fit()
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["images_per_s"] for r in records if "images_per_s" in r and r["epoch"] > 1]
    return len(speeds) / sum(1 / s for s in speeds)


@contextlib.contextmanager
def swapped_loss(loss: Loss):
    """Our SimCLR method computing its loss with ``loss(z1, z2, temperature)`` instead of ours."""
    ours = simclr_module.nt_xent
    simclr_module.nt_xent = lambda z1, z2, temperature, **_: loss(z1, z2, temperature)
    try:
        yield
    finally:
        simclr_module.nt_xent = ours


# ----------------------------------------------------------------------------- the peers' losses
class StubTorchvision(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Empty ``torchvision`` modules whose every attribute is a placeholder class: lightly's loss
    package imports torchvision ops and models it never uses in NT-Xent."""

    def find_spec(self, name, path, target=None):  # noqa: ANN001 - importlib's signature
        if name.split(".")[0] == "torchvision":
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):  # noqa: ANN001
        module = types.ModuleType(spec.name)
        module.__path__ = []

        def placeholder(attr: str):
            if attr.startswith("__"):
                raise AttributeError(attr)
            return type(attr, (), {})

        module.__getattr__ = placeholder
        return module

    def exec_module(self, module) -> None:  # noqa: ANN001
        pass


def lightly_loss() -> Loss:
    try:
        from lightly.loss import NTXentLoss
    except ModuleNotFoundError as err:
        if err.name is None or err.name.split(".")[0] != "torchvision":
            raise
        sys.meta_path.append(StubTorchvision())
        from lightly.loss import NTXentLoss
    made = functools.cache(lambda t: NTXentLoss(temperature=t))
    return lambda z1, z2, t: made(t)(z1, z2)


def solo_loss() -> Loss:
    if "solo" not in sys.modules:  # solo/__init__ imports its training stack (pytorch_lightning, ...)
        package = types.ModuleType("solo")
        package.__path__ = [str(Path(p) / "solo") for p in sys.path if (Path(p) / "solo" / "losses").is_dir()]
        sys.modules["solo"] = package
    from solo.losses.simclr import simclr_loss_func
    return lambda z1, z2, t: simclr_loss_func(z1, z2, temperature=t)


def import_note(name: str) -> str:
    """How the peer ``name`` was imported: with which stand-ins."""
    if name.startswith("lightly"):
        stubbed = any(isinstance(finder, StubTorchvision) for finder in sys.meta_path)
        return "torchvision absent: a stub torchvision inserted for its imports" if stubbed else "as is"
    return "solo.losses without solo/__init__.py, which imports pytorch_lightning and the training stack"


def peer_losses(folder: str | None) -> tuple[dict[str, Loss], list[str]]:
    """The peers' losses that import from ``folder`` (by name), and a note for each (how it was
    imported, or why it is skipped)."""
    if folder is None:
        return {}, ["peers' losses skipped: no --peers folder given"]
    sys.path.insert(0, folder)
    losses, notes = {}, []
    for name, load in (("lightly NTXentLoss", lightly_loss), ("solo-learn simclr_loss_func", solo_loss)):
        try:
            losses[name] = load()
        except Exception as err:  # noqa: BLE001 - any import failure skips that peer
            notes.append(f"{name} skipped: cannot import it from {folder} ({type(err).__name__}: {err})")
            continue
        z1, z2 = torch.randn(BATCH, 128), torch.randn(BATCH, 128)
        diff = abs(losses[name](z1, z2, TEMPERATURE).item() - nt_xent(z1, z2, TEMPERATURE).item())
        notes.append(f"{name}: imported from {folder} ({import_note(name)}); |its loss - ours| on random "
                     f"projections: {diff:.1e}")
    return losses, notes


# ----------------------------------------------------------------------------- the table
def measure_all(args: argparse.Namespace, images: np.ndarray) -> tuple[list[dict], list[str]]:
    steps, warmup, log_every = (3, 1, 1) if args.quick else (args.steps, 3, args.steps // 4)
    rows = []

    def record(variant: str, ips: float) -> None:
        rows.append({"variant": variant, "images_per_s": ips})
        print(f"{variant:<60} {ips:8.1f} images/s", flush=True)

    for workers in (0, 2):
        record(f"reference loop, num_workers={workers}", reference_images_per_s(images, workers, steps, warmup))
    for variant, overrides in OURS.items():
        record(variant, trainer_images_per_s(overrides, steps, log_every))
    losses, notes = peer_losses(args.peers)
    for name, loss in losses.items():
        with swapped_loss(loss):
            record(f"contrastlab, defaults, loss: {name}", trainer_images_per_s(OURS_DEFAULT, steps, log_every))
    for row in rows:
        for workers in (0, 2):
            row[f"vs_reference_workers{workers}"] = row["images_per_s"] / rows[workers // 2]["images_per_s"]
    for note in notes:
        print(note)
    return rows, notes



def markdown(rows: list[dict], notes: list[str], command: str, steps: int) -> list[str]:
    auto = autocast_dtype("auto", torch.device("cpu"))
    lines = [
        "# SimCLR images/s: contrastlab vs a plain-PyTorch reference loop", "",
        f"`{command}` — torch {torch.__version__}, {torch.get_num_threads()} threads. Fashion-MNIST 28 px, "
        f"ConvNet + 256-512-128 projector, batch {BATCH}, two views per image; CPU precision=auto resolves "
        f"to {'fp32' if auto is None else str(auto).removeprefix('torch.')} here (this CPU "
        f"{'computes' if auto is not None else 'has no'} native bf16).",
        f"Reference: per-image PIL views in a DataLoader, fp32 contiguous, plain NT-Xent, SGD with momentum; "
        f"{steps} steps after 3 warm-up steps. contrastlab: the recipe `{RECIPE.name}` through the Trainer "
        f"(batched views, LARS), the {steps} steps of its second epoch.", "",
        "| variant | images/s | vs reference (num_workers=0) | vs reference (num_workers=2) |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['variant']} | {r['images_per_s']:.1f} | {r['vs_reference_workers0']:.2f}x | "
              f"{r['vs_reference_workers2']:.2f}x |" for r in rows]
    return lines + [""] + [f"- {note}" for note in notes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", help="folder holding lightly and solo-learn (pip install --target)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant (a multiple of 4)")
    parser.add_argument("--quick", action="store_true", help="3 steps per variant; print only")
    args = parser.parse_args()
    images = DATASETS.get("fashion-mnist")("train").images[:, 0].numpy()
    rows, notes = measure_all(args, images)
    if not args.quick:
        threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
        command = f"{threads}python benchmarks/reference_loop.py" + (f" --peers {args.peers}" if args.peers else "")
        write_results("reference_loop", rows, markdown(rows, notes, command, args.steps), command)


if __name__ == "__main__":
    main()
