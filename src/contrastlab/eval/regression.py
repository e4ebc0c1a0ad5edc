"""Ridge regression of continuous targets (e.g. Spirograph's factors) from frozen features."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from contrastlab.eval.features import check_features, standardize, validation_split

RIDGE_ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def fit_ridge(x: torch.Tensor, y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form ridge with an unpenalised intercept, solved in float64: per target,
    minimise ``||y - x w - b||^2 + alpha * ||w||^2`` (scikit-learn's ``Ridge``).

    Args:
        x: ``(N, D)`` float; y: ``(N, T)`` float; alpha > 0.
    Returns:
        ``weight``: ``(D, T)`` and ``bias``: ``(T,)``, float64.
    """
    x, y = x.double(), y.double()
    x_mean, y_mean = x.mean(dim=0), y.mean(dim=0)
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ xc + alpha * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    weight = torch.linalg.solve(gram, xc.T @ yc)
    return weight, y_mean - x_mean @ weight


def ridge_regression(
    train_feats: torch.Tensor,
    train_targets: torch.Tensor,
    test_feats: torch.Tensor,
    test_targets: torch.Tensor,
    target_names: Sequence[str],
    alphas: Sequence[float] = RIDGE_ALPHAS,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> dict:
    """Test R^2 and MSE of ridge regression with ``alpha`` chosen on a validation split.

    Features are standardised with the train statistics; each alpha is fitted on a seeded
    random ``1 - val_fraction`` of the train set and scored by its validation MSE averaged over
    the targets; the best (the first on ties) is refitted on all train features.

    Args:
        train_feats: ``(N, D)`` float; train_targets: ``(N, T)`` float.
        test_feats: ``(M, D)`` float; test_targets: ``(M, T)`` float.
        target_names: ``T`` names, the keys of the per-target results.
    Returns:
        ``{"r2": {name: R^2}, "mse": {name: MSE in target units}, "r2_mean", "mse_mean",
        "alpha"}``. ``R^2 = 1 - SSE / SST`` on the test set; a constant test target gets 1
        when predicted exactly and 0 otherwise (scikit-learn's convention).
    """
    check_features("train features", train_feats, train_targets)
    check_features("test features", test_feats, test_targets, dim=train_feats.shape[1])
    if train_targets.dim() != 2 or test_targets.shape[1:] != train_targets.shape[1:]:
        raise ValueError(
            f"targets must be (N, T) with the same T on both sides, got train "
            f"{tuple(train_targets.shape)} and test {tuple(test_targets.shape)}"
        )
    if len(target_names) != train_targets.shape[1]:
        raise ValueError(f"{train_targets.shape[1]} target columns but target_names={list(target_names)}")
    if not alphas or min(alphas) <= 0:
        raise ValueError(f"alphas must be a non-empty list of values > 0, got {list(alphas)}")
    train_x, test_x = standardize(train_feats.double(), test_feats.double())
    train_y, test_y = train_targets.double(), test_targets.double()
    fit, val = validation_split(len(train_x), val_fraction, seed)
    fit, val = fit.to(train_x.device), val.to(train_x.device)

    def val_mse(alpha: float) -> float:
        weight, bias = fit_ridge(train_x[fit], train_y[fit], alpha)
        return float((train_x[val] @ weight + bias - train_y[val]).pow(2).mean())

    alpha = min(alphas, key=val_mse)
    weight, bias = fit_ridge(train_x, train_y, alpha)
    sse = (test_x @ weight + bias - test_y).pow(2).sum(dim=0)
    sst = (test_y - test_y.mean(dim=0)).pow(2).sum(dim=0)
    r2 = torch.where(sst > 0, 1 - sse / sst.clamp_min(1e-300), (sse == 0).double())
    mse = sse / len(test_y)
    return {
        "r2": dict(zip(target_names, r2.tolist())),
        "mse": dict(zip(target_names, mse.tolist())),
        "r2_mean": float(r2.mean()),
        "mse_mean": float(mse.mean()),
        "alpha": float(alpha),
    }
