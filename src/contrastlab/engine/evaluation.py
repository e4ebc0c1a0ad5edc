"""Evaluates a run folder: frozen features -> probes and diagnostics -> results.json, table, plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from contrastlab.config import Config
from contrastlab.engine.checkpoint import backbone_state, load_checkpoint
from contrastlab.engine.setup import autocast_dtype, load_data, make_backbone, make_views, resolve_device
from contrastlab.eval.evaluate import evaluate, format_results_table
from contrastlab.eval.features import extract_features
from contrastlab.report.plots import plot_run

EMBEDDING_PLOT_POINTS = 2000


def evaluate_run(run_dir: Path, cfg: Config, echo: bool = True) -> dict[str, Any]:
    """Evaluate the backbone in ``run_dir/checkpoint.pt`` (and, when
    ``eval.compare_random_init``, the same backbone at initialisation) on ``cfg.data``.

    Writes ``results.json`` and the plots into ``run_dir``; returns the results.
    """
    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir)
    device = resolve_device(cfg.train.device)
    amp = autocast_dtype(cfg.train.precision, device)
    data = load_data(cfg)
    views = make_views(cfg, data)
    input_shape = tuple(state["input_shape"])

    trained = make_backbone(cfg, input_shape)
    trained.load_state_dict(backbone_state(state))
    backbones = {"trained": trained}
    if cfg.eval.compare_random_init:
        torch.manual_seed(cfg.train.seed)  # the trainer seeds the same way before building
        backbones["random_init"] = make_backbone(cfg, input_shape)

    e = cfg.eval
    results: dict[str, Any] = {
        "run": str(run_dir),
        "dataset": cfg.data.name,
        "method": cfg.method.name,
        "backbone": cfg.backbone.name,
        "epochs": int(state["epoch"]),
        "steps": int(state["step"]),
    }
    for name, backbone in backbones.items():
        results[name] = evaluate(
            backbone.to(device),
            data.probe_train,
            data.test,
            data.normalize,
            views=views,
            generator=torch.Generator().manual_seed(cfg.data.seed),
            knn_k=e.knn_k,
            knn_temperature=e.knn_temperature,
            weight_decays=e.weight_decays,
            ridge_alphas=e.ridge_alphas,
            val_fraction=e.val_fraction,
            max_train=e.max_train,
            batch_size=e.batch_size,
            device=device,
            autocast_dtype=amp,
            seed=cfg.data.seed,
        )
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    if e.plots:
        _plots(run_dir, results, trained, data, device, amp, e.batch_size)
    if echo:
        print(f"{cfg.method.name} on {cfg.data.name}, {results['epochs']} epochs ({cfg.backbone.name})")
        print(format_results_table({name: results[name] for name in backbones}))
        print(f"results: {run_dir / 'results.json'}")
    return results


def _plots(run_dir, results, backbone, data, device, amp, batch_size) -> None:  # noqa: ANN001
    test = data.test.subset(torch.arange(min(len(data.test), EMBEDDING_PLOT_POINTS)))
    embeddings = extract_features(backbone, test.images, data.normalize, batch_size=batch_size,
                                  device=device, autocast_dtype=amp)
    if test.labels is not None:
        colour, colour_name = test.labels, "label"
    elif test.targets is not None:
        colour, colour_name = test.targets[:, 0], test.target_names[0]
    else:
        colour, colour_name = None, "label"
    plot_run(run_dir, results["trained"], embeddings, colour, colour_name)
