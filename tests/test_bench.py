"""``contrastlab bench``: the quick suite end to end (as CI runs it), resuming, the suite's
checks, the report's arithmetic and the FLOP count."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from contrastlab.bench import cells as cells_module
from contrastlab.bench import runner
from contrastlab.bench.cells import RECORD, run_cell
from contrastlab.bench.efficiency import conv_peak, matmul_peak, mfu, step_flops
from contrastlab.bench.report import group_rows
from contrastlab.bench.suite import Cell, load_suite
from contrastlab.core.config import ConfigError
from contrastlab.engine.setup import load_data, make_backbone, make_views, view_shape
from contrastlab.recipes import load_config

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "benchmarks" / "suites" / "quick.yaml"


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "contrastlab", "bench", *args], cwd=ROOT,
                          capture_output=True, text=True)


def test_quick_suite_writes_the_report_and_resumes(tmp_path):
    out = tmp_path / "quick"
    done = bench(str(QUICK), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    suite = load_suite(QUICK)
    assert done.stdout.count("] ") == len(suite.cells)  # a progress line per cell

    report = json.loads((out / "report.json").read_text())
    rows = {(r["dataset"], r["arm"]): r for r in report["rows"]}
    assert set(rows) == {("digits", "untrained"), ("digits", "simclr"), ("digits", "byol"),
                         ("spirograph", "untrained"), ("spirograph", "simclr"),
                         ("mutag", "untrained"), ("mutag", "graphcl")}
    assert 0 <= rows["digits", "simclr"]["knn"] <= 100 and "r2_mean" in rows["spirograph", "simclr"]
    assert "svm" in rows["mutag", "graphcl"]
    trained = [r for r in report["rows"] if r["arm"] != "untrained"]
    for row in trained:
        assert row["images_per_s"] > 0 and row["peak_rss_mb"] > 50 and row["flops_per_step"] > 0
        assert 0 < row["mfu"] < 1, row
    assert rows["digits", "simclr"]["step_time_vs_reference"] == pytest.approx(1.0)
    assert rows["digits", "byol"]["step_time_vs_reference"] == pytest.approx(
        rows["digits", "simclr"]["images_per_s"] / rows["digits", "byol"]["images_per_s"])
    peaks = report["environment"]["peak_flops"]
    assert set(peaks) == {"fp32", "bf16"} and all(p["peak"] == max(p["matmul"], p["conv"]) for p in peaks.values())
    markdown = (out / "report.md").read_text()
    assert "## digits" in markdown and "| untrained |" in markdown and "MFU" in markdown
    for plot in ("accuracy_vs_speed.png", "loss_curves.png"):
        assert (out / plot).stat().st_size > 1000

    results = out / "runs" / "digits" / "simclr" / "s0" / "results.json"
    written = results.stat().st_mtime_ns
    again = bench(str(QUICK), "--out", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("(read)") == len(suite.cells)
    assert results.stat().st_mtime_ns == written  # finished cells are read, not re-run


def write_suite(tmp_path: Path, **changes) -> Path:
    raw = {"name": "t", "seeds": [0], "datasets": {"digits": {"kind": "gray-small-convnet",
                                                              "overrides": ["data.name=digits"]}},
           "methods": {"simclr": {}}}
    raw.update(changes)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.parametrize("changes, message", [
    ({"method": {}}, "unknown key 'method'"),
    ({"methods": {"byol2": {}}}, "recipe configs/byol2-gray-small-convnet.yaml does not exist"),
    ({"methods": {"simclr": {"overrides": ["train.epochs"]}}}, "section.key=value"),
    ({"methods": {"simclr": {"overrides": ["train.epocs=2"]}}}, "epocs"),
    ({"methods": {"untrained": {"recipe": "configs/simclr-{kind}.yaml"}}}, "untrained"),
    ({"seeds": [0, 0]}, "distinct integers"),
    ({"reference": "moco"}, "reference 'moco'"),
    ({"grid": {"train.batch_size": []}}, "non-empty list"),
])
def test_suite_errors_name_the_entry(tmp_path, monkeypatch, changes, message):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ConfigError, match=message) as err:
        load_suite(write_suite(tmp_path, **changes))
    assert str(tmp_path / "suite.yaml") in str(err.value)


def test_dataset_methods_must_be_arms(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    datasets = {"digits": {"kind": "gray-small-convnet", "methods": ["simclr", "mocco"]}}
    with pytest.raises(ConfigError, match="datasets.digits.methods: 'mocco'"):
        load_suite(write_suite(tmp_path, datasets=datasets))


def test_grid_and_seeds_make_the_cells(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    suite = load_suite(write_suite(tmp_path, seeds=[3, 4], grid={"train.batch_size": [32, 64]},
                                   methods={"simclr": {}, "byol": {}}))
    assert len(suite.cells) == 2 * 2 * 2
    assert [c.seed for c in suite.cells[:4]] == [3, 3, 3, 3]  # seed-major
    first = suite.cells[0]
    assert first.key == "digits/simclr/train.batch_size=32/s3"
    assert first.overrides[-4:] == ("train.seed=3", "train.progress=false", "eval.plots=false",
                                    "eval.compare_random_init=true")
    assert all(c.overrides[-1].endswith("false") for c in suite.cells if c.arm == "byol")  # untrained: first arm only
    assert load_config(first.recipe, first.overrides).train.batch_size == 32


def test_only_runs_the_named_datasets_and_writes_no_report(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    datasets = {"digits": {"kind": "gray-small-convnet", "overrides": ["data.name=digits"]},
                "spirograph": {"kind": "spirograph-convnet"}}
    path = write_suite(tmp_path, datasets=datasets, seeds=[0, 1])
    ran = []
    monkeypatch.setattr(runner, "run_cell", lambda cell, runs, resume: ran.append(cell.key) or ({}, False))
    monkeypatch.setattr(runner, "read_cell", lambda cell, runs, record: [
        {"key": cell.key, "wall_s": 1.0}])
    assert runner.run_suite(path, tmp_path / "out", only=["spirograph"]) == 0
    assert ran == ["spirograph/simclr/s0", "spirograph/simclr/s1"]
    assert not (tmp_path / "out" / "report.json").exists()
    with pytest.raises(ConfigError, match="--only mnist: the suite has no such dataset; it has digits, spirograph"):
        runner.run_suite(path, tmp_path / "out", only=["mnist"])


def test_a_finished_cell_is_read_and_a_changed_one_rerun(tmp_path, monkeypatch):
    cell = Cell("d", "a", (), 0, Path("configs/simclr-gray-small-convnet.yaml"), ("train.epochs=1",))
    run_dir = tmp_path / cell.key
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text("{}")
    record = {"recipe": str(cell.recipe), "overrides": list(cell.overrides), "wall_s": 1.0, "peak_rss_mb": 2.0}
    (run_dir / RECORD).write_text(json.dumps(record))
    assert run_cell(cell, tmp_path) == (record, True)

    calls = []
    monkeypatch.setattr(cells_module.subprocess, "run", lambda argv, **_: calls.append(argv) or
                        subprocess.CompletedProcess(argv, 3))
    changed = Cell("d", "a", (), 0, cell.recipe, ("train.epochs=2",))
    with pytest.raises(cells_module.CellFailed, match="exit code 3"):
        run_cell(changed, tmp_path)
    assert calls and calls[0][-1] == "train.epochs=2"
    assert not (run_dir / "results.json").exists()  # the stale run was removed before re-running


def entry(arm: str, seed: int, knn: float, speed: float | None) -> dict:
    return {"dataset": "d", "arm": arm, "point": {}, "seed": seed, "knn": knn, "linear": knn, "images_per_s": speed,
            "batch_size": 100, "epochs": 1, "wall_s": 1.0, "peak_rss_mb": 10.0}


def test_rows_average_seeds_and_compare_with_the_reference():
    entries = [entry("simclr", 0, 80.0, 1000.0), entry("simclr", 1, 82.0, 1200.0),
               entry("byol", 0, 70.0, 500.0), entry("byol", 1, 74.0, 600.0)]
    efficiency = {"d/simclr": {"flops_per_step": 2e9, "compute_dtype": "fp32", "peak_flops": 1e11}}
    rows = {r["arm"]: r for r in group_rows(entries, "simclr", efficiency)}
    assert rows["simclr"]["knn"] == 81.0 and rows["simclr"]["knn_std"] == pytest.approx(2 ** 0.5)
    assert rows["byol"]["step_time_vs_reference"] == pytest.approx(1100.0 / 550.0)
    assert rows["simclr"]["mfu"] == pytest.approx(2e9 * 1100.0 / 100 / 1e11)  # FLOPs x steps/s / peak
    assert "mfu" not in rows["byol"]  # no FLOP count for it


def test_mfu_and_matmul_peak():
    assert mfu(1e9, 200.0, 100, 1e10) == pytest.approx(0.2)
    for peak in (matmul_peak(torch.float32, torch.device("cpu"), size=256, repeats=2),
                 conv_peak(torch.float32, torch.device("cpu"), repeats=1)):
        assert 1e8 < peak < 1e14


def test_step_flops_count_forward_and_backward_and_scale_with_the_batch(monkeypatch):
    monkeypatch.chdir(ROOT)
    base = ["data.name=digits", "train.precision=fp32", "train.online_probe=false"]
    small = step_flops(load_config("configs/simclr-gray-small-convnet.yaml", [*base, "train.batch_size=32"]))
    large = step_flops(load_config("configs/simclr-gray-small-convnet.yaml", [*base, "train.batch_size=64"]))
    assert large == pytest.approx(2 * small, rel=0.02)  # linear in the batch (the loss's matmul is tiny)

    cfg = load_config("configs/simclr-gray-small-convnet.yaml", [*base, "train.batch_size=32"])
    data = load_data(cfg)
    shape = view_shape(data, make_views(cfg, data))
    with FlopCounterMode(display=False) as counter:
        make_backbone(cfg, shape)(torch.zeros(64, *shape))  # the two views' forward through the backbone
    forward = counter.get_total_flops()
    # backward ~2x forward (less the first layer's input gradient); the projector and the loss add some
    assert 2.5 * forward < small < 4.5 * forward
