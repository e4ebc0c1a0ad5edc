"""Evaluates a run folder: frozen features -> probes and diagnostics -> results.json, table, plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from contrastlab.core.config import Config, ConfigError
from contrastlab.data.dataset import Dataset
from contrastlab.data.graphs import GRAPH_KIND
from contrastlab.data.perturbation import check_strengths
from contrastlab.engine.checkpoint import backbone_state, load_checkpoint
from contrastlab.engine.metrics import standard_json
from contrastlab.engine.setup import autocast_dtype, load_data, make_backbone, make_views, resolve_device
from contrastlab.eval.averaging import averaged_features
from contrastlab.eval.evaluate import cross_validate, evaluate, format_results_table
from contrastlab.eval.features import extract_features
from contrastlab.eval.robustness import format_robustness, perturbation_for, robustness_curve
from contrastlab.methods.registry import encoder_prefix
from contrastlab.report.plots import plot_run

EMBEDDING_PLOT_POINTS = 2000


def evaluate_run(run_dir: Path, cfg: Config, echo: bool = True) -> dict[str, Any]:
    """Evaluate the backbone in ``run_dir/checkpoint.pt`` (the student's, or the teacher's with
    ``eval.encoder: teacher``; and, when
    ``eval.compare_random_init``, the same backbone at initialisation) on ``cfg.data``.

    With ``eval.feature_averaging = M`` the trained backbone is also evaluated on features
    averaged over M draws of the first training view (column ``trained_fa``); with
    ``eval.robustness`` each backbone's results get a ``robustness`` curve over those
    test-time nuisance strengths (see :func:`robustness_curve`).

    Writes ``results.json`` and the plots into ``run_dir``; returns the results.
    """
    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir)
    device = resolve_device(cfg.train.device)
    amp = autocast_dtype(cfg.train.precision, device)
    data = load_data(cfg)
    views = make_views(cfg, data)
    input_shape = tuple(state["input_shape"])
    e = cfg.eval
    perturb = None
    if e.robustness is not None:
        perturb = perturbation_for(views[0], data.normalize)
        try:
            check_strengths(e.robustness, perturb)
        except ValueError as err:
            raise ConfigError(f"eval.robustness: {err}") from None

    protocol = e.protocol if e.protocol != "auto" else "svm_cv" if data.train.kind == GRAPH_KIND else "probes"
    if protocol == "svm_cv" and (e.robustness is not None or e.feature_averaging is not None):
        raise ConfigError("eval.robustness and eval.feature_averaging need eval.protocol=probes (a train/test split), "
                          "not svm_cv; set them to null")
    probes = dict(knn_k=e.knn_k, knn_temperature=e.knn_temperature, weight_decays=e.weight_decays,
                  ridge_alphas=e.ridge_alphas, val_fraction=e.val_fraction)
    common = dict(max_train=e.max_train, batch_size=e.batch_size, device=device, autocast_dtype=amp,
                  seed=cfg.data.seed)
    workers = cfg.data.num_workers

    def evaluate_backbone(backbone: torch.nn.Module) -> dict[str, Any]:
        backbone.to(device)
        if protocol == "svm_cv":
            return cross_validate(backbone, data.probe_train, data.normalize, cs=e.svm_cs, folds=e.svm_folds,
                                  inner_folds=e.svm_inner_folds, batch_size=e.batch_size, device=device,
                                  autocast_dtype=amp, seed=cfg.data.seed, num_workers=workers)
        column = evaluate(backbone, data.probe_train, data.test, data.normalize, views=views[:2],
                          generator=torch.Generator().manual_seed(cfg.data.seed), num_workers=workers,
                          **probes, **common)
        if perturb is not None:
            column["robustness"] = robustness_curve(backbone, data.probe_train, data.test, data.normalize,
                                                    perturb, e.robustness, **probes, **common)
        return column

    trained = make_backbone(cfg, input_shape)
    trained.load_state_dict(backbone_state(state, encoder_prefix(cfg.method.name, e.encoder)))
    columns = {"trained": evaluate_backbone(trained)}
    if e.feature_averaging is not None:
        generator = torch.Generator().manual_seed(cfg.data.seed)

        def averaged(split: Dataset) -> torch.Tensor:
            return averaged_features(trained, split, views[0], e.feature_averaging, generator,
                                     e.batch_size, device, amp)

        columns["trained_fa"] = evaluate(trained, data.probe_train, data.test, data.normalize,
                                         featurize=averaged, **probes, **common)
    if e.compare_random_init:
        torch.manual_seed(cfg.train.seed)  # the trainer seeds the same way before building
        columns["random_init"] = evaluate_backbone(make_backbone(cfg, input_shape))
    results: dict[str, Any] = {
        "run": str(run_dir),
        "dataset": cfg.data.name,
        "method": cfg.method.name,
        "backbone": cfg.backbone.name,
        "encoder": e.encoder,
        "epochs": int(state["epoch"]),
        "steps": int(state["step"]),
        **columns,
    }
    (run_dir / "results.json").write_text(standard_json(results, indent=2))
    if e.plots:
        _plots(run_dir, results, trained, data, device, amp, e.batch_size)
    if echo:
        print(f"{cfg.method.name} on {cfg.data.name}, {results['epochs']} epochs ({cfg.backbone.name})")
        print(format_results_table(columns))
        for name, column in columns.items():
            if "robustness" in column:
                print(f"robustness of {name} to test-time nuisance of strength s:")
                print(format_robustness(column["robustness"]))
        print(f"results: {run_dir / 'results.json'}")
    return results


def _plots(run_dir, results, backbone, data, device, amp, batch_size) -> None:  # noqa: ANN001
    test = data.test.subset(torch.arange(min(len(data.test), EMBEDDING_PLOT_POINTS)))
    embeddings = extract_features(backbone, test, data.normalize, batch_size=batch_size,
                                  device=device, autocast_dtype=amp)
    if test.labels is not None:
        colour, colour_name = test.labels, "label"
    elif test.targets is not None:
        colour, colour_name = test.targets[:, 0], test.target_names[0]
    else:
        colour, colour_name = None, "label"
    plot_run(run_dir, results["trained"], embeddings, colour, colour_name)
