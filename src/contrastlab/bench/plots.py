"""The report's PNG plots: accuracy vs speed, accuracy vs batch size and vs training length
(when the suite's grid varies them), and loss curves; one panel per dataset."""

from __future__ import annotations

from pathlib import Path

from matplotlib import cm
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from contrastlab.bench.report import METRICS, headline
from contrastlab.bench.suite import UNTRAINED

TITLES = {key: title for key, title, _ in METRICS}
AXES = {"train.batch_size": ("batch_size", "batch size", "accuracy_vs_batch_size.png"),
        "train.epochs": ("epochs", "epochs", "accuracy_vs_epochs.png")}


def write_plots(out: Path, rows: list[dict], entries: list[dict], grid: dict) -> list[Path]:
    """Every plot that fits the suite into ``out``; returns their paths."""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    paths = [_accuracy_vs_speed(out / "accuracy_vs_speed.png", rows, datasets)]
    for axis, (key, label, name) in AXES.items():
        if axis in grid and len(grid[axis]) > 1:
            paths.append(_accuracy_vs(out / name, rows, datasets, key, label))
    paths.append(_loss_curves(out / "loss_curves.png", entries, datasets))
    return paths


def _figure(panels: int) -> tuple[Figure, list]:
    figure = Figure(figsize=(5.5 * panels, 4.2), dpi=110)
    FigureCanvasAgg(figure)
    return figure, [figure.add_subplot(1, panels, i + 1) for i in range(panels)]


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path)
    return path


def _accuracy_vs_speed(path: Path, rows: list[dict], datasets: list[str]) -> Path:
    figure, panels = _figure(len(datasets))
    for axes, dataset in zip(panels, datasets):
        mine = [r for r in rows if r["dataset"] == dataset]
        key = headline(mine[0])
        for row in mine:
            if row["arm"] == UNTRAINED:
                axes.axhline(row[key], color="grey", linestyle="--", label="untrained")
            elif row.get("images_per_s"):
                axes.scatter(row["images_per_s"], row[key])
                axes.annotate(row["arm"], (row["images_per_s"], row[key]), fontsize=7,
                              xytext=(3, 3), textcoords="offset points")
        axes.set(xscale="log", xlabel="training images/s (log)", ylabel=TITLES[key], title=dataset)
        axes.grid(alpha=0.3)
    return _save(figure, path)


def _accuracy_vs(path: Path, rows: list[dict], datasets: list[str], field: str, label: str) -> Path:
    """The headline metric (and the linear probe's, where there is one) against ``field``, a
    line per arm, the untrained backbone dashed."""
    panels_of = [(d, key) for d in datasets
                 for key in dict.fromkeys([headline(next(r for r in rows if r["dataset"] == d)), "linear"])
                 if any(r["dataset"] == d and r.get(key) is not None for r in rows)]
    figure, panels = _figure(len(panels_of))
    for axes, (dataset, key) in zip(panels, panels_of):
        mine = [r for r in rows if r["dataset"] == dataset]
        axes.set_prop_cycle(color=cm.tab20.colors)
        for arm in dict.fromkeys(r["arm"] for r in mine):
            points = sorted((r[field], r[key]) for r in mine if r["arm"] == arm)
            if arm == UNTRAINED:
                axes.axhline(points[0][1], color="black", linestyle="--", label=UNTRAINED)
            else:
                axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=arm)
        axes.set(xscale="log", xlabel=f"{label} (log)", ylabel=TITLES[key], title=dataset)
        axes.grid(alpha=0.3)
    panels[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return _save(figure, path)


def _loss_curves(path: Path, entries: list[dict], datasets: list[str]) -> Path:
    """Each arm's training loss (its first seed and grid point), scaled to [0, 1] per arm since
    the methods' losses have different ranges."""
    figure, panels = _figure(len(datasets))
    for axes, dataset in zip(panels, datasets):
        shown = set()
        axes.set_prop_cycle(color=cm.tab20.colors)
        for entry in entries:
            if entry["dataset"] != dataset or entry["arm"] in shown or len(entry["loss_curve"]) < 2:
                continue
            shown.add(entry["arm"])
            epochs, losses = zip(*entry["loss_curve"])
            low, high = min(losses), max(losses)
            axes.plot(epochs, [(v - low) / ((high - low) or 1.0) for v in losses], label=entry["arm"])
        axes.set(xlabel="epoch", ylabel="training loss (min-max scaled per arm)", title=dataset)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=6)
    return _save(figure, path)
