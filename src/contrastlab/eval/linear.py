"""Linear probe: a logistic-regression classifier on frozen, standardised features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from contrastlab.eval.features import check_features, standardize, validation_split

WEIGHT_DECAYS = (0.0, 1e-5, 1e-4, 1e-3, 1e-2)


def fit_linear_classifier(
    feats: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    weight_decay: float = 0.0,
    max_iter: int = 200,
) -> nn.Linear:
    """Minimise ``cross_entropy(W x + b, y) + weight_decay * ||W||^2`` (bias unpenalised)
    with full-batch L-BFGS from zero weights (deterministic).

    Args:
        feats: ``(N, D)`` float; labels: ``(N,)`` int64 in ``[0, num_classes)``.
    Returns:
        the fitted ``nn.Linear(D, num_classes)``, on ``feats``' device, without gradients.
    """
    linear = nn.Linear(feats.shape[1], num_classes, device=feats.device)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(
        linear.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(feats), labels) + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return linear.requires_grad_(False)


def classifier_accuracy(classifier: nn.Module, feats: torch.Tensor, labels: torch.Tensor) -> float:
    """Percent of ``feats``: ``(N, D)`` whose argmax logit equals ``labels``: ``(N,)``."""
    return 100.0 * int((classifier(feats).argmax(dim=1) == labels).sum()) / len(labels)


def linear_probe(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    weight_decays: Sequence[float] = WEIGHT_DECAYS,
    val_fraction: float = 0.1,
    seed: int = 0,
    max_iter: int = 200,
) -> dict[str, float]:
    """Linear-probe test accuracy with the weight decay chosen on a validation split.

    Features are standardised with the train statistics; each weight decay is fitted on a
    seeded, stratified ``1 - val_fraction`` of the train features and scored on the rest; the
    best (the first on ties) is refitted on all train features and scored on the test set.

    Args:
        train_feats: ``(N, D)`` float; train_labels: ``(N,)`` int64.
        test_feats: ``(M, D)`` float; test_labels: ``(M,)`` int64.
    Returns:
        ``{"accuracy": test %, "val_accuracy": validation % of the chosen value,
        "weight_decay": the chosen value}``.
    """
    check_features("train features", train_feats, train_labels)
    check_features("test features", test_feats, test_labels, dim=train_feats.shape[1])
    if not weight_decays or min(weight_decays) < 0:
        raise ValueError(f"weight_decays must be a non-empty list of values >= 0, got {list(weight_decays)}")
    if min(train_labels.min(), test_labels.min()) < 0:
        raise ValueError("labels must be >= 0")
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    train_x, test_x = standardize(train_feats.float(), test_feats.float())
    fit, val = validation_split(len(train_x), val_fraction, seed, labels=train_labels)
    fit, val = fit.to(train_x.device), val.to(train_x.device)
    val_accuracies = [
        classifier_accuracy(
            fit_linear_classifier(train_x[fit], train_labels[fit], num_classes, wd, max_iter),
            train_x[val],
            train_labels[val],
        )
        for wd in weight_decays
    ]
    best = max(range(len(weight_decays)), key=val_accuracies.__getitem__)
    classifier = fit_linear_classifier(train_x, train_labels, num_classes, weight_decays[best], max_iter)
    return {
        "accuracy": classifier_accuracy(classifier, test_x, test_labels),
        "val_accuracy": val_accuracies[best],
        "weight_decay": float(weight_decays[best]),
    }
