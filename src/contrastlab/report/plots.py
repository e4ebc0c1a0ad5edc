"""PNG plots of a run: training curves, the feature spectrum and a 2-D embedding.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no display, and no change
to the process-wide matplotlib backend).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from contrastlab.eval.diagnostics import pca_projection, singular_values

MAX_LEGEND_CLASSES = 20
TRAINED, RANDOM_INIT = "trained", "random init"  # the labels of a run's backbone and its baseline
# Scalar metrics drawn against the step when a run logged them: (key in metrics.jsonl, label).
CURVES = (
    ("loss", "training loss"),
    ("online_acc", "online probe accuracy (%)"),
    ("effective_rank", "effective rank of the batch representation"),
    ("bt_off_diagonal", "mean squared off-diagonal cross-correlation"),
    ("gen_grad_norm", "norm of the generators' meta-gradient"),
    ("mask_grad_norm", "norm of the mask's meta-gradient"),
)
# several logged series on one figure: (file stem, title, {key: legend label})
PANELS = (
    ("hardness", "hardness of generated vs original pairs (cosine)", {
        "positive_score_original": "positive, original",
        "positive_score_generated": "positive, generated",
        "hardest_negative_original": "hardest negative, original",
        "hardest_negative_generated": "hardest negative, generated",
    }),
)


def read_metrics(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file (one JSON object per line); ``[]`` when the
    file is missing or empty."""
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: expected one JSON object per line ({error})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def plot_run(
    run_dir: Path,
    results: dict | None = None,
    embeddings: torch.Tensor | None = None,
    colour_by: torch.Tensor | None = None,
    colour_name: str = "label",
    baseline_results: dict | None = None,
    baseline_embeddings: torch.Tensor | None = None,
) -> list[Path]:
    """Write the plots the inputs allow into ``run_dir`` and return their paths.

    - ``loss.png`` (and ``online_acc.png``, ``effective_rank.png``, ``bt_off_diagonal.png``,
      ``gen_grad_norm.png``, ``mask_grad_norm.png``) against ``step`` from
      ``run_dir/metrics.jsonl``, skipped when the file is missing or has no such records;
    - ``hardness.png``: MetAug's positive scores and hardest negatives, original vs generated;
    - ``mask.png``: the per-dimension ``mask_values`` records (MetaMask) as a heat map of
      dimension x step;
    - ``spectrum.png``: ``results["diagnostics"]["singular_values"]``, else the spectrum of
      ``embeddings``; on the same axes the random-init baseline's, from ``baseline_results``
      (its column of ``results.json``) or ``baseline_embeddings``, when given;
    - ``embedding.png``: ``embeddings``: ``(N, D)`` projected on their top two principal axes,
      coloured by ``colour_by``: ``(N,)`` (integer = categories, float = colormap + colorbar);
      with ``baseline_embeddings``: ``(N, D')`` (the random-init backbone's features of the same
      samples), its own projection in a second panel on the right.
    """
    run_dir = Path(run_dir)
    written = []
    records = read_metrics(run_dir / "metrics.jsonl")
    for key, label in CURVES:
        points = _series(records, key)
        if points:
            written.append(_save_curves(run_dir / f"{key}.png", {label: points}, label))
    for stem, title, keys in PANELS:
        series = {label: _series(records, key) for key, label in keys.items()}
        if any(series.values()):
            written.append(_save_curves(run_dir / f"{stem}.png", series, title))
    masks = [(r["step"], r["mask_values"]) for r in records if "step" in r and isinstance(r.get("mask_values"), list)]
    if masks:
        written.append(_save_mask(run_dir / "mask.png", masks))
    spectra = {label: _spectrum(column, features) for label, column, features in (
        (TRAINED, results, embeddings), (RANDOM_INIT, baseline_results, baseline_embeddings))}
    if spectra[TRAINED]:
        written.append(_save_spectrum(run_dir / "spectrum.png", {k: v for k, v in spectra.items() if v}))
    if embeddings is not None:
        panels = {TRAINED: embeddings}
        if baseline_embeddings is not None:
            panels[RANDOM_INIT] = baseline_embeddings
        written.append(_save_embedding(run_dir / "embedding.png", panels, colour_by, colour_name))
    return written


def _spectrum(results: dict | None, embeddings: torch.Tensor | None) -> list[float] | None:
    """``results["diagnostics"]["singular_values"]``, else the spectrum of ``embeddings``, else ``None``."""
    spectrum = (results or {}).get("diagnostics", {}).get("singular_values")
    if spectrum is None and embeddings is not None:
        spectrum = singular_values(embeddings).tolist()
    return spectrum


def _new_figure(width: float = 6) -> Figure:
    figure = Figure(figsize=(width, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _series(records: list[dict], key: str) -> list[tuple[float, float]]:
    """``(step, value)`` of the records that log ``key`` as a number."""
    return [(r["step"], r[key]) for r in records if "step" in r and isinstance(r.get(key), (int, float))]


def _save_curves(path: Path, series: dict[str, list[tuple[float, float]]], title: str) -> Path:
    """One line per non-empty series against ``step``; a legend when there are several."""
    figure = _new_figure()
    axes = figure.add_subplot()
    drawn = {label: points for label, points in series.items() if points}
    for label, points in drawn.items():
        steps, values = zip(*points)
        axes.plot(steps, values, label=label)
    axes.set(xlabel="step", ylabel=title if len(drawn) == 1 else "value", title=title)
    if len(drawn) > 1:
        axes.legend()
    axes.grid(alpha=0.3)
    figure.savefig(path, dpi=120)
    return path


def _save_mask(path: Path, masks: list[tuple[float, list[float]]]) -> Path:
    """Heat map of the mask values: one column per logged step, one row per dimension."""
    steps, values = zip(*masks)
    if len({len(v) for v in values}) != 1:
        raise ValueError(f"{path.name}: mask_values records have different lengths {sorted({len(v) for v in values})}")
    figure = _new_figure()
    axes = figure.add_subplot()
    image = axes.imshow(torch.tensor(values).T.numpy(), aspect="auto", interpolation="nearest", cmap="viridis",
                        extent=(steps[0], steps[-1], len(values[0]) - 0.5, -0.5))
    figure.colorbar(image, ax=axes, label="mask value")
    axes.set(xlabel="step", ylabel="dimension", title="dimensional mask over training")
    figure.savefig(path, dpi=120)
    return path


def _save_spectrum(path: Path, spectra: dict[str, list[float]]) -> Path:
    """One line per backbone (label -> its singular values, largest first); a legend when there are several."""
    figure = _new_figure()
    axes = figure.add_subplot()
    for label, spectrum in spectra.items():
        axes.plot(range(1, len(spectrum) + 1), spectrum, marker=".", markersize=3, label=label)
    axes.set_yscale("log")
    axes.set(xlabel="index", ylabel="singular value", title="singular values of the centred test features")
    if len(spectra) > 1:
        axes.legend()
    axes.grid(alpha=0.3, which="both")
    figure.savefig(path, dpi=120)
    return path


def _save_embedding(
    path: Path, panels: dict[str, torch.Tensor], colour_by: torch.Tensor | None, colour_name: str
) -> Path:
    """One panel per backbone (label -> ``(N, D)`` features of the same N samples), side by
    side, each projected on its own top two principal axes, all coloured by ``colour_by``."""
    rows = {label: len(embeddings) for label, embeddings in panels.items()}
    if len(set(rows.values())) != 1:
        raise ValueError(f"the panels' embeddings must be of the same samples, got rows {rows}")
    n = next(iter(rows.values()))
    if colour_by is not None and colour_by.shape != (n,):
        raise ValueError(f"colour_by must have shape ({n},) like the embeddings, got {tuple(colour_by.shape)}")
    figure = _new_figure(width=6 + 4.5 * (len(panels) - 1))
    all_axes = figure.subplots(1, len(panels), squeeze=False)[0]
    categorical = colour_by is not None and not colour_by.is_floating_point()
    cmap = "viridis" if not categorical else "tab10" if len(colour_by.unique()) <= 10 else "tab20"
    for axes, (label, embeddings) in zip(all_axes, panels.items()):
        xy = pca_projection(embeddings).numpy()
        title = "PCA of the features" if len(panels) == 1 else f"{label}: PCA of the features"
        axes.set(xlabel="PC 1", ylabel="PC 2", title=f"{title}, coloured by {colour_name}")
        colours = None if colour_by is None else colour_by.numpy()
        points = axes.scatter(xy[:, 0], xy[:, 1], s=4, c=colours, cmap=None if colour_by is None else cmap)
    if categorical and len(colour_by.unique()) <= MAX_LEGEND_CLASSES:
        handles, labels = points.legend_elements()
        all_axes[-1].legend(handles, labels, title=colour_name, fontsize="small", markerscale=0.8)
    elif colour_by is not None:
        figure.colorbar(points, ax=list(all_axes), label=colour_name)
    figure.savefig(path, dpi=120)
    return path
