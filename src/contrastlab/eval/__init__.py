"""Evaluation of frozen representations: kNN, linear probe, ridge regression, diagnostics,
test-time feature averaging and robustness to test-time nuisance."""

from contrastlab.eval.averaging import averaged_features, view_batches
from contrastlab.eval.diagnostics import (
    alignment,
    effective_rank,
    pca_projection,
    singular_values,
    uniformity,
)
from contrastlab.eval.evaluate import evaluate, format_results_table, probe_metrics, view_alignment
from contrastlab.eval.features import extract_features
from contrastlab.eval.knn import knn_accuracy
from contrastlab.eval.linear import fit_linear_classifier, linear_probe
from contrastlab.eval.regression import fit_ridge, ridge_regression
from contrastlab.eval.robustness import (
    JitterShift,
    format_robustness,
    perturbation_for,
    robustness_curve,
)

__all__ = [
    "JitterShift",
    "alignment",
    "averaged_features",
    "effective_rank",
    "evaluate",
    "extract_features",
    "fit_linear_classifier",
    "fit_ridge",
    "format_results_table",
    "format_robustness",
    "knn_accuracy",
    "linear_probe",
    "pca_projection",
    "perturbation_for",
    "probe_metrics",
    "ridge_regression",
    "robustness_curve",
    "singular_values",
    "uniformity",
    "view_alignment",
    "view_batches",
]
