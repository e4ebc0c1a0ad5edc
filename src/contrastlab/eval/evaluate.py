"""One call that evaluates a frozen backbone on a train/test pair, and its terminal table."""

from __future__ import annotations

import warnings

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from contrastlab.data.dataset import Dataset
from contrastlab.data.preprocess import Normalize
from contrastlab.eval.averaging import View, view_batches
from contrastlab.eval.diagnostics import alignment, effective_rank, singular_values, uniformity
from contrastlab.eval.features import Phase, encode, extract_features, frozen, quiet_phase
from contrastlab.eval.knn import knn_accuracy
from contrastlab.eval.linear import WEIGHT_DECAYS, linear_probe
from contrastlab.eval.metric_notes import note_for
from contrastlab.eval.regression import RIDGE_ALPHAS, ridge_regression
from contrastlab.eval.svm import SVM_CS, svm_cv_accuracy

# Features of a split: Dataset -> (N, D) float.
Featurize = Callable[[Dataset], torch.Tensor]

ALIGNMENT_IMAGES = 1024


def seeded_subset(n: int, size: int, seed: int) -> torch.Tensor:
    """``min(n, size)`` distinct indices of ``range(n)``, seeded, sorted: ``(min(n, size),)``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[:size].sort().values


def probe_subset(train: Dataset, max_train: int | None, seed: int) -> Dataset:
    """The seeded subset of at most ``max_train`` samples of ``train`` that the probes fit on
    (all of ``train`` when ``max_train`` is None)."""
    if max_train is None:
        return train
    if max_train < 1:
        raise ValueError(f"max_train must be >= 1 or None, got {max_train}")
    return train.subset(seeded_subset(len(train), max_train, seed))


def view_alignment(
    backbone: nn.Module,
    data: Dataset,
    views: Sequence[View],
    generator: torch.Generator,
    *,
    max_images: int = ALIGNMENT_IMAGES,
    seed: int = 0,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> float:
    """Alignment of the frozen features of two augmented views of (a seeded subset of at most
    ``max_images``) images of ``data``.

    Each view is called with the batches of :func:`view_batches` (on ``device``) and ``generator``.
    """
    if len(views) != 2:
        raise ValueError(f"alignment needs exactly two view pipelines, got {len(views)}")
    index = seeded_subset(len(data), max_images, seed)
    z1, z2 = [], []
    with frozen(backbone):
        for batch in view_batches(data, batch_size, device, index):
            z1.append(encode(backbone, views[0](batch, generator), device, autocast_dtype))
            z2.append(encode(backbone, views[1](batch, generator), device, autocast_dtype))
    return alignment(torch.cat(z1), torch.cat(z2))


def warn_about_knn_k(k: int, train_labels: torch.Tensor) -> None:
    """Warn when the kNN probe's ``k`` exceeds the training samples it votes over (it is capped
    at their number) or the mean number per class (each vote then mixes classes)."""
    n = len(train_labels)
    per_class = n / max(1, len(torch.unique(train_labels)))
    if k > n:
        warnings.warn(f"eval.knn_k={k} is more than the {n} training samples of the kNN probe; using k={n}, "
                      "a vote of every sample", stacklevel=3)
    elif k > per_class:
        warnings.warn(f"eval.knn_k={k} is more than the {per_class:.0f} training samples per class: every vote "
                      f"mixes classes; a k below that (e.g. eval.knn_k={max(1, int(per_class) // 5)}) suits this data",
                      stacklevel=3)


def probe_metrics(
    train_feats: torch.Tensor,
    train: Dataset,
    test_feats: torch.Tensor,
    test: Dataset,
    *,
    knn_k: int = 200,
    knn_temperature: float = 0.1,
    weight_decays: Sequence[float] = WEIGHT_DECAYS,
    ridge_alphas: Sequence[float] = RIDGE_ALPHAS,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> dict:
    """Every probe that ``train``/``test`` support, fitted on ``train_feats``: ``(N, D)`` (the
    features of ``train``'s samples) and scored on ``test_feats``: ``(M, D)``, on their device.

    Returns ``knn`` ``{"accuracy", "k", "temperature"}`` and ``linear`` (see
    :func:`linear_probe`) when both splits have labels, ``regression`` (see
    :func:`ridge_regression`) when both have targets.
    """
    results: dict = {}
    device = train_feats.device
    if train.labels is not None and test.labels is not None:
        train_labels, test_labels = train.labels.to(device), test.labels.to(device)
        warn_about_knn_k(knn_k, train_labels)
        accuracy = knn_accuracy(train_feats, train_labels, test_feats, test_labels, knn_k, knn_temperature)
        results["knn"] = {"accuracy": accuracy, "k": min(knn_k, len(train)), "temperature": knn_temperature}
        results["linear"] = linear_probe(
            train_feats, train_labels, test_feats, test_labels, weight_decays, val_fraction, seed
        )
    if train.targets is not None and test.targets is not None:
        if train.target_names != test.target_names:
            raise ValueError(
                f"train targets {train.target_names} and test targets {test.target_names} differ"
            )
        results["regression"] = ridge_regression(
            train_feats, train.targets.to(device), test_feats, test.targets.to(device),
            test.target_names, ridge_alphas, val_fraction, seed,
        )
    return results


def evaluate(
    backbone: nn.Module,
    train: Dataset,
    test: Dataset,
    normalize: Normalize,
    *,
    featurize: Featurize | None = None,
    views: Sequence[View] | None = None,
    generator: torch.Generator | None = None,
    knn_k: int = 200,
    knn_temperature: float = 0.1,
    weight_decays: Sequence[float] = WEIGHT_DECAYS,
    ridge_alphas: Sequence[float] = RIDGE_ALPHAS,
    val_fraction: float = 0.1,
    max_train: int | None = None,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
    seed: int = 0,
    num_workers: int = 0,
    phase: Phase = quiet_phase,
) -> dict:
    """Evaluate the frozen ``backbone`` with every probe that ``train``/``test`` support.

    Features of the test set and of (a seeded subset of at most ``max_train`` images of) the
    train set are computed once by ``featurize`` (default: :func:`extract_features` of the
    ``normalize``-d images, batch by batch, loaded in ``num_workers`` processes when streamed;
    e.g. :func:`~contrastlab.eval.averaging.averaged_features` for test-time feature
    averaging); the probes run on ``device``. Each step (the features of each split, the probes,
    the diagnostics) runs inside ``phase(its description)``.

    Returns a JSON-serialisable dict:
        ``num_train``, ``num_test``, ``feature_dim``;
        the probes of :func:`probe_metrics` (``knn``, ``linear``, ``regression``);
        ``diagnostics`` of the test features: ``effective_rank``, ``singular_values`` (the
        full spectrum), ``uniformity``, and ``alignment`` when two ``views`` are given.
    """
    train = probe_subset(train, max_train, seed)
    if featurize is None:
        def featurize(data: Dataset) -> torch.Tensor:
            return extract_features(backbone, data, normalize, batch_size, device, autocast_dtype, num_workers)

    with phase(f"features of the probes' training split ({len(train)} samples)"):
        train_feats = featurize(train).to(device)
    with phase(f"features of the test split ({len(test)} samples)"):
        test_feats = featurize(test).to(device)
    results: dict = {"num_train": len(train), "num_test": len(test), "feature_dim": train_feats.shape[1]}
    with phase("probes"):
        results.update(probe_metrics(
            train_feats, train, test_feats, test, knn_k=knn_k, knn_temperature=knn_temperature,
            weight_decays=weight_decays, ridge_alphas=ridge_alphas, val_fraction=val_fraction, seed=seed,
        ))
    with phase("diagnostics"):
        diagnostics: dict = {
            "effective_rank": effective_rank(test_feats),
            "singular_values": singular_values(test_feats).tolist(),
        }
        if len(test) > 1:
            diagnostics["uniformity"] = uniformity(test_feats)
        if views is not None:
            generator = generator if generator is not None else torch.Generator().manual_seed(seed)
            diagnostics["alignment"] = view_alignment(
                backbone, test, views, generator, seed=seed, batch_size=batch_size,
                device=device, autocast_dtype=autocast_dtype,
            )
    results["diagnostics"] = diagnostics
    return results


def cross_validate(
    backbone: nn.Module,
    data: Dataset,
    normalize: Normalize,
    *,
    cs: Sequence[float] = SVM_CS,
    folds: int = 10,
    inner_folds: int = 5,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
    seed: int = 0,
    num_workers: int = 0,
    phase: Phase = quiet_phase,
) -> dict:
    """Evaluate the frozen ``backbone`` as the graph literature does: features of every sample
    of ``data`` (un-augmented), scored by :func:`~contrastlab.eval.svm.svm_cv_accuracy`; the
    features and the cross-validation each run inside ``phase(its description)``.

    Returns ``num_samples``, ``feature_dim``, ``svm`` (accuracy %, its std over the folds, the
    per-fold accuracies and chosen C) and ``diagnostics`` (effective rank, spectrum,
    uniformity) of the features.
    """
    if data.labels is None:
        raise ValueError(f"{data.name}: SVM cross-validation needs labels")
    with phase(f"features ({len(data)} samples)"):
        feats = extract_features(backbone, data, normalize, batch_size, device, autocast_dtype, num_workers)
    with phase(f"SVM {folds}-fold cross-validation"):
        svm = svm_cv_accuracy(feats, data.labels, cs, folds, inner_folds, seed)
    return {
        "num_samples": len(data), "feature_dim": feats.shape[1], "svm": svm,
        "diagnostics": {"effective_rank": effective_rank(feats), "singular_values": singular_values(feats).tolist(),
                        "uniformity": uniformity(feats)},
    }


def format_results_table(columns: dict[str, dict]) -> str:
    """An aligned table, one row per metric and one column per entry of ``columns`` (e.g.
    ``{"trained": results, "random_init": other}``). Nested keys are joined with ``/``
    (``regression/r2/m``); percentages carry a ``%``; lists (the spectrum, per-fold values) are
    left out (they stay in results.json); a metric missing from a column shows ``-``."""
    flat = [dict(_flatten(results)) for results in columns.values()]
    names = list(dict.fromkeys(name for column in flat for name in column))
    width = max([len("metric")] + [len(name) for name in names])
    cell = max([12] + [len(title) for title in columns] + [len(v) for column in flat for v in column.values()])
    lines = ["  ".join([f"{'metric':<{width}}"] + [f"{title:>{cell}}" for title in columns])]
    lines.append("-" * len(lines[0]))
    lines += ["  ".join([f"{name:<{width}}"] + [f"{column.get(name, '-'):>{cell}}" for column in flat])
              for name in names]
    return "\n".join(lines)


def format_legend(columns: dict[str, dict]) -> str:
    """One line per metric of :func:`format_results_table` that has a note
    (:data:`~contrastlab.eval.metric_notes.NOTES`): what it is, its unit, which way is better."""
    names = dict.fromkeys(name for results in columns.values() for name, _ in _flatten(results))
    notes = dict(found for found in map(note_for, names) if found is not None)
    width = max((len(key) for key in notes), default=0)
    return "\n".join(f"{key:<{width}}  {note.text}" for key, note in notes.items())


def _flatten(results: dict, prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(slash/joined/name, formatted value)`` for every leaf of ``results`` but lists."""
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, name + "/")
        elif isinstance(value, (list, tuple)):
            continue
        elif isinstance(value, float):
            note = note_for(name)
            yield name, f"{value:.2f}%" if note is not None and note[1].unit == "%" else f"{value:.4g}"
        else:
            yield name, str(value)
