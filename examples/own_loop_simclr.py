"""SimCLR in one's own plain-PyTorch training loop, with contrastlab's loss and backbone (the
lightly way): the dataset, the augmentation, the loop and the optimiser are the user's.

    .venv/bin/python examples/own_loop_simclr.py             # 8x8 digits, 30 epochs (about 20 s)
    .venv/bin/python examples/own_loop_simclr.py --epochs 2  # a smoke run

Prints the kNN accuracy (k = 20) of the backbone's features on held-out digits before and after.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, Dataset

from contrastlab.eval.knn import knn_accuracy
from contrastlab.losses import NTXentLoss
from contrastlab.models import as_backbone


class Digits(Dataset):
    """scikit-learn's 8x8 digits as float images (1, 8, 8) in [0, 1], with labels."""

    def __init__(self, train: bool) -> None:
        digits = load_digits()
        images = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]
        split = slice(0, 1400) if train else slice(1400, None)
        self.images, self.labels = images[split], torch.tensor(digits.target)[split]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


def augment(image: torch.Tensor) -> torch.Tensor:
    """One random view of a (1, 8, 8) image: a crop of 5 to 8 pixels resized back, and a
    random brightness and contrast."""
    side = int(torch.randint(5, 9, ()))
    top, left = (int(torch.randint(0, 9 - side, ())) for _ in range(2))
    crop = image[:, top: top + side, left: left + side]
    view = F.interpolate(crop[None], size=(8, 8), mode="bilinear", align_corners=False)[0]
    brightness, contrast = 1 + 0.4 * (torch.rand(2) - 0.5)
    return ((view - view.mean()) * contrast + view.mean() * brightness).clamp(0, 1)


class TwoViews(Dataset):
    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, _ = self.base[i]
        return augment(image), augment(image)


def features(backbone: nn.Module, data: Digits) -> torch.Tensor:
    backbone.eval()
    with torch.no_grad():
        return backbone(data.images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    train, test = Digits(train=True), Digits(train=False)

    # Any nn.Module mapping (B, 1, 8, 8) to (B, D) features; as_backbone reads D from one forward pass.
    backbone = as_backbone(nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten()), input_shape=(1, 8, 8))
    projector = nn.Sequential(nn.Linear(backbone.out_dim, 128), nn.ReLU(), nn.Linear(128, 64))
    criterion = NTXentLoss(temperature=0.2)
    optimizer = torch.optim.Adam([*backbone.parameters(), *projector.parameters()], lr=3e-3)

    before = knn_accuracy(features(backbone, train), train.labels, features(backbone, test), test.labels, k=20)
    loader = DataLoader(TwoViews(train), batch_size=128, shuffle=True, drop_last=True)
    for epoch in range(args.epochs):
        backbone.train()
        for x1, x2 in loader:
            loss = criterion(projector(backbone(x1)), projector(backbone(x2)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch + 1}/{args.epochs}  loss {loss.item():.4f}")
    after = knn_accuracy(features(backbone, train), train.labels, features(backbone, test), test.labels, k=20)
    print(f"kNN accuracy on held-out digits: {before:.2f}% at initialisation, {after:.2f}% after training")


if __name__ == "__main__":
    main()
