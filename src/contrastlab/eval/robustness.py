"""Robustness to test-time nuisance (InvCLR): probes fitted on clean training features, scored on
test features of perturbed test images, one perturbation strength at a time."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from contrastlab.data.augment import ColorJitter, ViewPipeline
from contrastlab.data.dataset import Dataset
from contrastlab.data.perturbation import Perturbation, check_strengths, registered_perturbation
from contrastlab.data.preprocess import Normalize
from contrastlab.eval.averaging import View, averaged_features
from contrastlab.eval.evaluate import format_results_table, probe_metrics, probe_subset
from contrastlab.eval.features import extract_features

HEADLINE_METRICS = (("knn", "accuracy"), ("linear", "accuracy"), ("regression", "r2_mean"),
                    ("regression", "mse_mean"))


class JitterShift:
    """Images: colour jitter of strength ``s`` (:meth:`ColorJitter.from_strength`, applied to
    every image, no crop), then normalisation. ``s = 0`` is exactly the clean image (no
    transform: a zero hue rotation is the identity only up to rounding)."""

    name = "colour jitter"
    max_strength = math.inf

    def __init__(self, normalize: Normalize) -> None:
        self.normalize = normalize

    def __call__(self, strength: float) -> ViewPipeline:
        check_strengths([strength], self)
        jitter = [ColorJitter.from_strength(strength, prob=1.0)] if strength > 0 else []
        return ViewPipeline(jitter, self.normalize)


def perturbation_for(view: View, normalize: Normalize) -> Perturbation:
    """The perturbation matching a run's training view: the one its dataset registers for the
    view's pipeline class (:func:`~contrastlab.data.perturbation.register_perturbation`, e.g.
    Spirograph's background shift), :class:`JitterShift` for every other view."""
    return (registered_perturbation(view) or JitterShift)(normalize)


def robustness_curve(
    backbone: nn.Module,
    train: Dataset,
    test: Dataset,
    normalize: Normalize,
    perturb: Perturbation,
    strengths: Sequence[float],
    *,
    max_train: int | None = None,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
    seed: int = 0,
    **probe_options,
) -> list[dict]:
    """Downstream metrics of the frozen ``backbone`` as the test images are perturbed.

    The probes see the clean features of (a seeded subset of at most ``max_train`` images of)
    ``train``; the test features come from ``perturb(s)`` applied to ``test`` with a generator
    seeded by ``seed`` afresh for every strength (so a strength's point does not depend on the
    others, and the strengths share their random draws). Every strength is checked before any
    feature is computed. The probes are deterministic, so refitting them for each strength
    gives the same fitted probe each time.

    ``probe_options``: ``knn_k``, ``knn_temperature``, ``weight_decays``, ``ridge_alphas``,
    ``val_fraction`` of :func:`~contrastlab.eval.evaluate.probe_metrics`.

    Returns:
        one dict per strength, in order: ``{"strength": s, **probe_metrics}`` (``knn``,
        ``linear``, ``regression`` as the splits allow).
    """
    check_strengths(strengths, perturb)
    views = [perturb(strength) for strength in strengths]
    train = probe_subset(train, max_train, seed)
    train_feats = extract_features(backbone, train, normalize, batch_size, device, autocast_dtype)
    train_feats = train_feats.to(device)
    curve = []
    for strength, view in zip(strengths, views):
        generator = torch.Generator().manual_seed(seed)
        test_feats = averaged_features(backbone, test, view, 1, generator, batch_size, device, autocast_dtype)
        metrics = probe_metrics(train_feats, train, test_feats.to(device), test, seed=seed, **probe_options)
        curve.append({"strength": float(strength), **metrics})
    return curve


def format_robustness(curve: list[dict]) -> str:
    """A table of the headline metrics (kNN and linear accuracy, ridge R^2 and MSE means), one
    column per strength of ``curve`` (as returned by :func:`robustness_curve`)."""
    columns = {}
    for point in curve:
        column: dict[str, dict] = {}
        for group, key in HEADLINE_METRICS:
            if group in point:
                column.setdefault(group, {})[key] = point[group][key]
        columns[f"s={point['strength']:g}"] = column
    return format_results_table(columns)
