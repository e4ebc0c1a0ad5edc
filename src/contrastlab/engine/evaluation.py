"""Evaluates a run folder: frozen features -> probes and diagnostics -> results.json, table, plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from contrastlab.core.config import Config, ConfigError
from contrastlab.data.dataset import Dataset
from contrastlab.data.perturbation import check_strengths
from contrastlab.engine.checkpoint import load_checkpoint
from contrastlab.engine.metrics import standard_json
from contrastlab.engine.progress import PhaseLog
from contrastlab.engine.setup import (
    RunData,
    autocast_dtype,
    check_held_out,
    eval_protocol,
    load_data,
    initial_backbone,
    make_views,
    resolve_device,
    trained_backbone,
)
from contrastlab.eval.averaging import averaged_features
from contrastlab.eval.evaluate import cross_validate, evaluate, format_legend, format_results_table
from contrastlab.eval.features import Phase, extract_features
from contrastlab.eval.robustness import format_robustness, perturbation_for, robustness_curve
from contrastlab.report.plots import plot_run

EMBEDDING_PLOT_POINTS = 2000


def evaluate_run(run_dir: Path, cfg: Config, echo: bool = True, data: RunData | None = None) -> dict[str, Any]:
    """Evaluate the backbone in ``run_dir/checkpoint.pt`` (the student's, or the teacher's with
    ``eval.encoder: teacher``; and, when
    ``eval.compare_random_init``, the same backbone at initialisation) on ``cfg.data``.

    With ``eval.feature_averaging = M`` the trained backbone is also evaluated on features
    averaged over M draws of the first training view (column ``trained_fa``); with
    ``eval.robustness`` each backbone's results get a ``robustness`` curve over those
    test-time nuisance strengths (see :func:`robustness_curve`).

    ``data`` replaces the splits of ``cfg.data`` (:func:`load_data` with a user's datasets).
    Writes ``results.json`` and the plots into ``run_dir``; returns the results.
    """
    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir)
    device = resolve_device(cfg.train.device)
    amp = autocast_dtype(cfg.train.precision, device)
    data = data if data is not None else load_data(cfg)
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

    protocol = eval_protocol(cfg, data)
    check_held_out(cfg, data)
    if protocol == "svm_cv" and (e.robustness is not None or e.feature_averaging is not None):
        raise ConfigError("eval.robustness and eval.feature_averaging need eval.protocol=probes (a train/test split), "
                          "not svm_cv; set them to null")
    probes = dict(knn_k=e.knn_k, knn_temperature=e.knn_temperature, weight_decays=e.weight_decays,
                  ridge_alphas=e.ridge_alphas, val_fraction=e.val_fraction)
    common = dict(max_train=e.max_train, batch_size=e.batch_size, device=device, autocast_dtype=amp,
                  seed=cfg.data.seed)
    workers = cfg.data.num_workers
    log = PhaseLog(enabled=echo and cfg.train.progress)

    def phases_of(column: str) -> Phase:
        return lambda what: log.phase(f"{column}: {what}")

    def evaluate_backbone(column: str, backbone: torch.nn.Module) -> dict[str, Any]:
        backbone.to(device)
        if protocol == "svm_cv":
            return cross_validate(backbone, data.probe_train, data.normalize, cs=e.svm_cs, folds=e.svm_folds,
                                  inner_folds=e.svm_inner_folds, batch_size=e.batch_size, device=device,
                                  autocast_dtype=amp, seed=cfg.data.seed, num_workers=workers,
                                  phase=phases_of(column))
        results = evaluate(backbone, data.probe_train, data.test, data.normalize, views=views[:2],
                           generator=torch.Generator().manual_seed(cfg.data.seed), num_workers=workers,
                           phase=phases_of(column), **probes, **common)
        if perturb is not None:
            with log.phase(f"{column}: robustness at {len(e.robustness)} strengths"):
                results["robustness"] = robustness_curve(backbone, data.probe_train, data.test, data.normalize,
                                                         perturb, e.robustness, **probes, **common)
        return results

    trained = trained_backbone(state, cfg, e.encoder)
    columns = {"trained": evaluate_backbone("trained", trained)}
    if e.feature_averaging is not None:
        generator = torch.Generator().manual_seed(cfg.data.seed)

        def averaged(split: Dataset) -> torch.Tensor:
            return averaged_features(trained, split, views[0], e.feature_averaging, generator,
                                     e.batch_size, device, amp)

        columns["trained_fa"] = evaluate(trained, data.probe_train, data.test, data.normalize,
                                         featurize=averaged, phase=phases_of("trained_fa"), **probes, **common)
    if e.compare_random_init:
        columns["random_init"] = evaluate_backbone("random_init", initial_backbone(cfg, input_shape))
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
        with log.phase("plots"):
            _plots(run_dir, results, trained, data, device, amp, cfg, input_shape)
    if echo:
        epochs = f"{results['epochs']} epoch{'' if results['epochs'] == 1 else 's'}"
        print(f"{cfg.method.name} on {cfg.data.name}, {epochs} ({cfg.backbone.name})")
        print(format_results_table(columns))
        print(f"\n{format_legend(columns)}")
        for name, column in columns.items():
            if "robustness" in column:
                print(f"robustness of {name} to test-time nuisance of strength s:")
                print(format_robustness(column["robustness"]))
        print(f"results: {run_dir / 'results.json'}")
    return results


def _plots(run_dir, results, backbone, data, device, amp, cfg, input_shape) -> None:  # noqa: ANN001
    """:func:`plot_run` with the embeddings of the first ``EMBEDDING_PLOT_POINTS`` test samples
    by the trained ``backbone`` and, when ``results`` has a ``random_init`` column, by the same
    backbone at initialisation (rebuilt as :func:`evaluate_run` builds it)."""
    test = data.test.subset(torch.arange(min(len(data.test), EMBEDDING_PLOT_POINTS)))

    def embed(encoder: torch.nn.Module) -> torch.Tensor:
        return extract_features(encoder.to(device), test, data.normalize, batch_size=cfg.eval.batch_size,
                                device=device, autocast_dtype=amp)

    embeddings, baseline = embed(backbone), None
    if "random_init" in results:
        baseline = embed(initial_backbone(cfg, input_shape))
    if test.labels is not None:
        colour, colour_name = test.labels, "label"
    elif test.targets is not None:
        colour, colour_name = test.targets[:, 0], test.target_names[0]
    else:
        colour, colour_name = None, "label"
    plot_run(run_dir, results["trained"], embeddings, colour, colour_name,
             baseline_results=results.get("random_init"), baseline_embeddings=baseline)
