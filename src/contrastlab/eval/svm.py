"""The graph literature's evaluation of frozen embeddings: an RBF SVM, its C chosen by an inner
grid search, scored by an outer stratified k-fold cross-validation (GraphCL's
``evaluate_embedding.py``, spec additions A13/G.3), with scikit-learn."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.svm import SVC

from contrastlab.eval.features import check_features

SVM_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def svm_cv_accuracy(
    features: torch.Tensor,
    labels: torch.Tensor,
    cs: Sequence[float] = SVM_CS,
    folds: int = 10,
    inner_folds: int = 5,
    seed: int = 0,
    jobs: int | None = None,
) -> dict:
    """Accuracy (%) of an RBF ``SVC`` (scikit-learn defaults otherwise) on ``features``: ``(N, D)``
    with ``labels``: ``(N,)``, by ``folds``-fold stratified cross-validation (shuffled with
    ``seed``); in each fold C is chosen from ``cs`` by a ``inner_folds``-fold grid search on the
    training folds. The features are used as they are (GraphCL's protocol standardises nothing).

    Returns ``{"accuracy": mean over folds, "fold_std": std over folds, "fold_accuracies": [...],
    "chosen_c": [C of each fold]}``.
    """
    check_features("SVM features", features, labels)
    x, y = features.double().cpu().numpy(), labels.cpu().numpy()
    counts = np.bincount(y)
    smallest = int(counts[counts > 0].min())
    if smallest < folds:
        raise ValueError(f"SVM cross-validation: the smallest class has {smallest} samples, fewer than "
                         f"{folds} folds (lower eval.svm_folds)")
    if not cs or any(c <= 0 for c in cs):
        raise ValueError(f"SVM cross-validation: C values must be > 0, got {list(cs)}")
    outer = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    accuracies, chosen = [], []
    for train_index, test_index in outer.split(x, y):
        search = GridSearchCV(SVC(), {"C": list(cs)}, cv=StratifiedKFold(inner_folds), n_jobs=jobs)
        search.fit(x[train_index], y[train_index])
        accuracies.append(100.0 * float(search.score(x[test_index], y[test_index])))
        chosen.append(float(search.best_params_["C"]))
    return {"accuracy": float(np.mean(accuracies)), "fold_std": float(np.std(accuracies)),
            "fold_accuracies": accuracies, "chosen_c": chosen}
