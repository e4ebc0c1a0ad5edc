"""A tiny smooth backbone for finite-difference checks of meta-gradients (no ReLU kinks)."""

from torch import nn

IN, DIM = 3, 4  # input features, representation size


class TanhBackbone(nn.Module):
    """``(B, IN) -> (B, DIM)``: Linear -> tanh -> Linear."""

    out_dim = DIM

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(IN, 6), nn.Tanh(), nn.Linear(6, DIM))

    def forward(self, x):
        return self.net(x)
