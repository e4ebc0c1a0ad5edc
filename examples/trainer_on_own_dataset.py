"""BYOL (or any method) on one's own ``torch.utils.data.Dataset`` through contrastlab's trainer
(the solo-learn way): the trainer makes the views, schedules, checkpoints, logs and evaluates.

    .venv/bin/python examples/trainer_on_own_dataset.py                  # SimCLR, 60 epochs (about 1 min)
    .venv/bin/python examples/trainer_on_own_dataset.py --method byol
    .venv/bin/python examples/trainer_on_own_dataset.py --epochs 2       # a smoke run

The dataset yields ``(image, label)`` pairs of PIL images here; tensors or numpy arrays work too
(see ``contrastlab.data.user_dataset``). The results table compares the trained backbone with
the same backbone at initialisation.
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from torch.utils.data import Dataset

import contrastlab


class Digits(Dataset):
    """scikit-learn's 8x8 digits as grayscale PIL images, with labels (``targets``, as torchvision
    datasets keep them, so contrastlab reads the labels without opening every image)."""

    def __init__(self, train: bool) -> None:
        digits = load_digits()
        split = slice(0, 1400) if train else slice(1400, None)
        self.images = (digits.images[split] * 16).clip(0, 255).astype(np.uint8)
        self.targets = digits.target[split].tolist()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[i], mode="L"), self.targets[i]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="simclr", help="simclr, byol, moco, barlow_twins, ...")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--run-dir", default=None, help="default: runs/run-<time>")
    args = parser.parse_args()
    recipe = f"configs/{args.method}-gray-small-convnet.yaml"  # the method's recipe for small gray images
    run = contrastlab.train(recipe, [f"train.epochs={args.epochs}", "eval.knn_k=20", "eval.plots=false"],
                            dataset=Digits(train=True), test_dataset=Digits(train=False), run_dir=args.run_dir)
    trained, untrained = run.results["trained"], run.results["random_init"]
    print(f"{args.method}: kNN {trained['knn']['accuracy']:.2f}% (untrained {untrained['knn']['accuracy']:.2f}%), "
          f"linear {trained['linear']['accuracy']:.2f}% (untrained {untrained['linear']['accuracy']:.2f}%); "
          f"run folder {run.run_dir}")


if __name__ == "__main__":
    main()
