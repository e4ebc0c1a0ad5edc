"""Projection and prediction heads."""

from __future__ import annotations

from torch import nn


class MLPHead(nn.Sequential):
    """Projector / predictor MLP: ``(B, in_dim) -> (B, out_dim)``.

    ``num_layers - 1`` blocks of ``Linear -> BatchNorm1d (if batch_norm) -> ReLU`` with
    ``hidden_dim`` units, then a final ``Linear`` to ``out_dim``, followed by a BatchNorm1d
    (affine iff ``last_bn_affine``) when ``last_batch_norm``. ``num_layers=1`` is a single
    Linear. ``bias`` applies to every Linear.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int = 2,
        batch_norm: bool = True,
        last_batch_norm: bool = False,
        last_bn_affine: bool = True,
        bias: bool = True,
    ) -> None:
        for field, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"MLPHead {field} must be a positive int, got {value!r}")
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"MLPHead num_layers must be an int >= 1, got {num_layers!r}")
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(width, hidden_dim, bias=bias))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU())
            width = hidden_dim
        layers.append(nn.Linear(width, out_dim, bias=bias))
        if last_batch_norm:
            layers.append(nn.BatchNorm1d(out_dim, affine=last_bn_affine))
        super().__init__(*layers)
        self.in_dim = in_dim
        self.out_dim = out_dim
