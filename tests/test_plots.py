"""Run plots: PNGs from a fake run folder, skipped when their inputs are missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure

from contrastlab.engine.checkpoint import load_checkpoint
from contrastlab.engine.distributed import init_distributed
from contrastlab.engine.evaluation import evaluate_run
from contrastlab.engine.setup import load_data, make_backbone
from contrastlab.engine.trainer import Trainer
from contrastlab.eval.diagnostics import pca_projection, singular_values
from contrastlab.eval.features import extract_features
from contrastlab.report import plot_run, read_metrics
from test_trainer import tiny_config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


def write_metrics(run_dir, with_online_acc: bool) -> None:
    records = []
    for step in range(1, 11):
        record = {"step": step * 10, "epoch": step / 5, "loss": 5.0 / step, "lr": 0.1}
        if with_online_acc:
            record["online_acc"] = 10.0 * step
        records.append(record)
    records.append({"step": 100, "epoch": 2, "epoch_loss": 0.6})  # epoch summary: no "loss"
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_all_plots_from_a_run_folder(tmp_path):
    write_metrics(tmp_path, with_online_acc=True)
    g = torch.Generator().manual_seed(0)
    embeddings = torch.randn(60, 8, generator=g)
    labels = torch.arange(60) % 3
    results = {"diagnostics": {"singular_values": [5.0, 2.0, 1.0, 0.5, 0.1]}}
    written = plot_run(tmp_path, results, embeddings, labels)
    names = sorted(path.name for path in written)
    assert names == ["embedding.png", "loss.png", "online_acc.png", "spectrum.png"]
    for path in written:
        assert path.parent == tmp_path
        assert_png(path)


def test_continuous_colours_and_spectrum_from_embeddings(tmp_path):
    write_metrics(tmp_path, with_online_acc=False)
    embeddings = torch.randn(40, 5, generator=torch.Generator().manual_seed(1))
    written = plot_run(tmp_path, None, embeddings, colour_by=torch.rand(40), colour_name="m")
    assert sorted(path.name for path in written) == ["embedding.png", "loss.png", "spectrum.png"]
    for path in written:
        assert_png(path)
    with pytest.raises(ValueError, match="colour_by"):
        plot_run(tmp_path, None, embeddings, colour_by=torch.rand(7))


def test_missing_or_empty_metrics_are_skipped(tmp_path):
    assert plot_run(tmp_path) == []
    (tmp_path / "metrics.jsonl").write_text("")
    assert plot_run(tmp_path) == []
    assert not (tmp_path / "loss.png").exists()


def test_malformed_metrics_line_names_the_file_and_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2"):
        read_metrics(tmp_path / "metrics.jsonl")


def test_metamask_diagnostics_are_plotted(tmp_path):
    records = [{"step": s, "loss": 1.0 / s, "effective_rank": 5.0 + s, "bt_off_diagonal": 0.1 / s,
                "mask_values": [0.5 + 0.01 * s * d for d in range(6)]} for s in range(1, 6)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    written = plot_run(tmp_path)
    assert sorted(p.name for p in written) == ["bt_off_diagonal.png", "effective_rank.png", "loss.png", "mask.png"]
    for path in written:
        assert_png(path)
    records.append({"step": 6, "mask_values": [0.5] * 5})  # a different dimension count
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ValueError, match="mask_values records have different lengths"):
        plot_run(tmp_path)


def test_metaug_hardness_and_generator_gradient_are_plotted(tmp_path):
    records = [{"step": s, "loss": 1.0 / s, "gen_grad_norm": 0.1 * s, "positive_score_original": 0.9,
                "positive_score_generated": 0.5, "hardest_negative_original": 0.3 + 0.01 * s,
                "hardest_negative_generated": 0.6} for s in range(1, 6)]
    records.append({"step": 6, "loss": 0.1})  # a step without a meta update logs no generator numbers
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    written = plot_run(tmp_path)
    assert sorted(p.name for p in written) == ["gen_grad_norm.png", "hardness.png", "loss.png"]
    for path in written:
        assert_png(path)


@pytest.fixture
def saved_figures(monkeypatch):
    """File name -> the figure ``plot_run`` saved under it."""
    figures, save = {}, Figure.savefig

    def recording_save(figure, path, **kwargs):
        figures[Path(path).name] = figure
        return save(figure, path, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording_save)
    return figures


def projection_panels(figure):
    """The axes of ``figure`` that show a projection (not its colorbar)."""
    return [axes for axes in figure.axes if axes.get_xlabel() == "PC 1"]


def test_the_random_init_baseline_is_drawn_beside_the_trained_backbone(tmp_path, saved_figures):
    g = torch.Generator().manual_seed(2)
    trained, baseline = torch.randn(50, 8, generator=g), torch.randn(50, 6, generator=g) * 3
    labels = torch.arange(50) % 4
    results = {"diagnostics": {"singular_values": [5.0, 2.0, 1.0]}}
    baseline_results = {"diagnostics": {"singular_values": [3.0, 2.5, 2.0, 1.5]}}
    written = plot_run(tmp_path, results, trained, labels, baseline_results=baseline_results,
                       baseline_embeddings=baseline)
    assert sorted(path.name for path in written) == ["embedding.png", "spectrum.png"]
    for path in written:
        assert_png(path)
    lines = saved_figures["spectrum.png"].axes[0].lines
    assert [line.get_label() for line in lines] == ["trained", "random init"]
    assert [list(line.get_ydata()) for line in lines] == [[5.0, 2.0, 1.0], [3.0, 2.5, 2.0, 1.5]]
    panels = projection_panels(saved_figures["embedding.png"])
    assert [axes.get_title() for axes in panels] == ["trained: PCA of the features, coloured by label",
                                                     "random init: PCA of the features, coloured by label"]
    for axes, features in zip(panels, (trained, baseline)):
        assert torch.allclose(torch.tensor(axes.collections[0].get_offsets().data).float(), pca_projection(features))

    plot_run(tmp_path, results, trained, labels, baseline_embeddings=baseline)  # svm_cv columns: no spectrum
    assert list(saved_figures["spectrum.png"].axes[0].lines[1].get_ydata()) == singular_values(baseline).tolist()
    with pytest.raises(ValueError, match="same samples"):
        plot_run(tmp_path, None, trained, labels, baseline_embeddings=baseline[:40])


def test_without_a_baseline_one_spectrum_and_one_panel(tmp_path, saved_figures):
    embeddings = torch.randn(30, 4, generator=torch.Generator().manual_seed(3))
    plot_run(tmp_path, None, embeddings, colour_by=torch.rand(30), colour_name="m")
    assert len(saved_figures["spectrum.png"].axes[0].lines) == 1
    assert [axes.get_title() for axes in projection_panels(saved_figures["embedding.png"])] == \
        ["PCA of the features, coloured by m"]


def test_a_run_evaluated_with_the_baseline_plots_it(tmp_path, saved_figures):
    cfg = tiny_config("train.epochs=1", "train.max_steps_per_epoch=2", "eval.at_end=false", "eval.plots=true")
    Trainer(cfg, tmp_path, init_distributed("cpu")).fit()
    results = evaluate_run(tmp_path, cfg, echo=False)
    lines = saved_figures["spectrum.png"].axes[0].lines
    assert [list(line.get_ydata()) for line in lines] == [
        results[column]["diagnostics"]["singular_values"] for column in ("trained", "random_init")]
    data = load_data(cfg)
    torch.manual_seed(cfg.train.seed)  # the random-init backbone, as evaluation builds it
    baseline = make_backbone(cfg, tuple(load_checkpoint(tmp_path)["input_shape"]))
    features = extract_features(baseline, data.test, data.normalize)  # 128 test images: all of them plotted
    panels = projection_panels(saved_figures["embedding.png"])
    assert [axes.get_title().split(":")[0] for axes in panels] == ["trained", "random init"]
    torch.testing.assert_close(torch.tensor(panels[1].collections[0].get_offsets().data).float(),
                               pca_projection(features), atol=1e-4, rtol=1e-4)
