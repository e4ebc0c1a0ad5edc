"""What each entry of a results table is: its unit and a line that explains it, for the legend
under the table."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricNote:
    text: str
    unit: str = ""  # "%": the value is a percentage, shown with two decimals and a % sign


# Keyed by the table's slash-joined names; a part in angle brackets matches any one part.
NOTES: dict[str, MetricNote] = {
    "num_train": MetricNote("samples the probes are fitted on (at most eval.max_train)"),
    "num_test": MetricNote("samples of the test split the probes are scored on"),
    "num_samples": MetricNote("samples of the cross-validation"),
    "feature_dim": MetricNote("features per sample (the backbone's output)"),
    "knn/accuracy": MetricNote("kNN top-1 accuracy on the test split, % (higher is better)", "%"),
    "knn/k": MetricNote("neighbours in the kNN vote (eval.knn_k; setting)"),
    "knn/temperature": MetricNote("temperature of the kNN vote's weights (eval.knn_temperature; setting)"),
    "linear/accuracy": MetricNote("linear-probe top-1 accuracy on the test split, % (higher is better)", "%"),
    "linear/val_accuracy": MetricNote("validation accuracy of the linear probe at the chosen weight decay, % "
                                      "(higher is better)", "%"),
    "linear/weight_decay": MetricNote("the linear probe's weight decay from eval.weight_decays, chosen by "
                                      "validation (hyper-parameter, not a score)"),
    "regression/r2/<target>": MetricNote("ridge-regression R² of the target on the test split, unitless, "
                                         "1 = exact (higher is better)"),
    "regression/mse/<target>": MetricNote("ridge-regression mean squared error of the target on the test "
                                          "split, in the target's units squared (lower is better)"),
    "regression/r2_mean": MetricNote("R² averaged over the targets, unitless (higher is better)"),
    "regression/mse_mean": MetricNote("mean squared error averaged over the targets (lower is better)"),
    "regression/alpha": MetricNote("ridge's regularisation strength from eval.ridge_alphas, chosen by "
                                   "validation (hyper-parameter, not a score)"),
    "svm/accuracy": MetricNote("RBF-SVM accuracy, mean over the eval.svm_folds outer folds, % (higher is "
                               "better); C chosen by an inner grid search", "%"),
    "svm/fold_std": MetricNote("standard deviation of the SVM accuracy over the folds, in percentage points",
                               "%"),
    "diagnostics/effective_rank": MetricNote("effective rank of the test features, 1 to feature_dim "
                                             "(low: collapsed features)"),
    "diagnostics/uniformity": MetricNote("log mean exp(-2 |z_i - z_j|²) over pairs of normalised test "
                                         "features (lower: spread more evenly)"),
    "diagnostics/alignment": MetricNote("mean squared distance between the normalised features of two views "
                                        "of an image, 0 to 4 (lower: more invariant)"),
}


def note_for(name: str) -> tuple[str, MetricNote] | None:
    """``(its key in NOTES, its note)`` for the table entry ``name``, or None when unknown."""
    parts = name.split("/")
    for key, note in NOTES.items():
        pattern = key.split("/")
        if len(pattern) == len(parts) and all(p == q or p.startswith("<") for p, q in zip(pattern, parts)):
            return key, note
    return None
