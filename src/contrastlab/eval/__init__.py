"""Evaluation of frozen representations: kNN, linear probe, ridge regression, diagnostics."""

from contrastlab.eval.diagnostics import (
    alignment,
    effective_rank,
    pca_projection,
    singular_values,
    uniformity,
)
from contrastlab.eval.evaluate import evaluate, format_results_table, view_alignment
from contrastlab.eval.features import extract_features
from contrastlab.eval.knn import knn_accuracy
from contrastlab.eval.linear import fit_linear_classifier, linear_probe
from contrastlab.eval.regression import fit_ridge, ridge_regression

__all__ = [
    "alignment",
    "effective_rank",
    "evaluate",
    "extract_features",
    "fit_linear_classifier",
    "fit_ridge",
    "format_results_table",
    "knn_accuracy",
    "linear_probe",
    "pca_projection",
    "ridge_regression",
    "singular_values",
    "uniformity",
    "view_alignment",
]
