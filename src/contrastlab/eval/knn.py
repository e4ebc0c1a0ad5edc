"""Weighted k-nearest-neighbour classification of frozen features (cosine similarity)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from contrastlab.eval.features import check_features


def knn_accuracy(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> float:
    """Test accuracy in percent of the temperature-weighted kNN classifier.

    Both sides are L2-normalised; each query takes its ``k`` most cosine-similar train
    samples (``k`` clipped to the train size) and class ``c`` scores
    ``sum_{neighbours j with label c} exp(s_j / temperature)``; the highest score wins.
    Queries are processed ``chunk_size`` at a time.

    Args:
        train_feats: ``(N, D)`` float; train_labels: ``(N,)`` int64.
        test_feats: ``(M, D)`` float; test_labels: ``(M,)`` int64.
        num_classes: defaults to the largest label seen plus one.
    """
    check_features("train features", train_feats, train_labels)
    check_features("test features", test_feats, test_labels, dim=train_feats.shape[1])
    if k < 1 or temperature <= 0 or chunk_size < 1:
        raise ValueError(
            f"need k >= 1, temperature > 0 and chunk_size >= 1, got {k}, {temperature}, {chunk_size}"
        )
    largest = int(max(train_labels.max(), test_labels.max()))
    num_classes = largest + 1 if num_classes is None else num_classes
    if min(train_labels.min(), test_labels.min()) < 0 or largest >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), found values up to {largest}")
    train = F.normalize(train_feats.float(), dim=1)
    test = F.normalize(test_feats.float(), dim=1)
    train_labels = train_labels.to(train.device)
    k = min(k, len(train))
    correct = 0
    for queries, labels in zip(test.split(chunk_size), test_labels.to(train.device).split(chunk_size)):
        similarity, neighbour = (queries @ train.T).topk(k, dim=1)            # (Q, k)
        # subtracting each query's best similarity changes no ranking and avoids overflow
        weights = ((similarity - similarity[:, :1]) / temperature).exp()
        scores = torch.zeros(len(queries), num_classes, device=train.device)
        scores.scatter_add_(1, train_labels[neighbour], weights)
        correct += int((scores.argmax(dim=1) == labels).sum())
    return 100.0 * correct / len(test)
