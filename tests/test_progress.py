"""What a run shows while it runs: the run folder first, plain lines without a terminal (a line
per logged step, a summary per epoch, a line per evaluation phase), one bar on a terminal, and
nothing of it with train.progress=false."""

import io
import os
import subprocess
import sys

import pytest

from contrastlab.cli import main
from contrastlab.engine.progress import PhaseLog, TrainingProgress, format_duration
from test_trainer import TINY

RUN = [*TINY, "train.epochs=2", "train.max_steps_per_epoch=3", "eval.plots=false", "eval.compare_random_init=false"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_a_terminal_the_run_folder_comes_first_then_plain_lines(tmp_path):
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "contrastlab", "train", "--run-dir", str(run), *RUN,
                           "train.progress=true"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    assert lines[0] == f"run folder: {run}"
    assert "\r" not in done.stdout
    summaries = [line for line in lines if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in summaries] == ["epoch 1/2", "epoch 2/2"]
    assert "loss " in summaries[0] and "online acc " in summaries[0] and "img/s" in summaries[0]
    assert "ETA " in summaries[0] and "training took " in summaries[1]
    steps = [line.split(" (")[0].strip() for line in lines if line.startswith("  step ")]
    assert steps == ["step 1/6", "step 2/6", "step 4/6", "step 5/6"]  # log_every=1; epoch ends are summaries
    assert any(line.startswith("trained: features of the test split (128 samples) done in ") for line in lines)
    assert any(line.startswith("trained: probes done in ") for line in lines)
    assert lines.index(summaries[-1]) < lines.index(next(line for line in lines if line.startswith("metric ")))


def test_progress_false_prints_no_progress_lines(tmp_path, capsys):
    assert main(["train", "--run-dir", str(tmp_path / "run"), *RUN, "train.epochs=1", "train.progress=false"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.startswith(f"run folder: {tmp_path / 'run'}\nsimclr on digits, 1 epoch (convnet)\n")
    assert "step " not in captured.out and "done in" not in captured.out and "ETA" not in captured.out


def test_plain_lines_leave_the_epoch_end_to_its_summary():
    stream = io.StringIO()
    progress = TrainingProgress(epochs=2, steps_per_epoch=2, start_step=2, stream=stream)  # resumed at epoch 1
    progress.begin_epoch(1)
    for _ in range(2):
        progress.advance(images=64)
        progress.logged({"loss": 1.5, "images_per_s": 640.0})
    progress.end_epoch(loss=1.25, online_acc=None)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("  step 3/4 (epoch 2/2): loss 1.5000, 640 img/s; ETA ")
    assert lines[1].startswith("epoch 2/2: loss 1.2500, ") and "online acc" not in lines[1]
    assert "; training took " in lines[1] and len(lines) == 2


def test_on_a_terminal_one_bar_runs_over_the_whole_run():
    stream = Terminal()
    progress = TrainingProgress(epochs=2, steps_per_epoch=3, stream=stream)
    for epoch in range(2):
        progress.begin_epoch(epoch)
        for _ in range(3):
            progress.advance(images=32)
            progress.logged({"loss": 2.0, "images_per_s": 100.0})
        progress.end_epoch(loss=2.0, online_acc=50.0)
    progress.close()
    out = stream.getvalue()
    assert "\r" in out and "/6 [" in out and "epoch 2/2" in out and "loss 2.0000, 100 img/s" in out
    assert "  step " not in out  # the bar replaces the plain step lines
    assert "epoch 1/2: loss 2.0000, online acc 50.00%" in out


def test_disabled_progress_writes_nothing():
    for stream in (io.StringIO(), Terminal()):
        progress = TrainingProgress(epochs=1, steps_per_epoch=2, enabled=False, stream=stream)
        progress.begin_epoch(0)
        progress.advance(images=8)
        progress.logged({"loss": 1.0, "images_per_s": 1.0})
        progress.end_epoch(loss=1.0)
        progress.close()
        with PhaseLog(enabled=False, stream=stream).phase("probes"):
            pass
        assert stream.getvalue() == ""


def test_a_phase_is_one_whole_line_with_its_time():
    stream = io.StringIO()
    with PhaseLog(stream=stream).phase("trained: probes"):
        print("a warning in between", file=stream)
    assert stream.getvalue().splitlines()[0] == "a warning in between"
    assert stream.getvalue().splitlines()[1].startswith("trained: probes done in ")


@pytest.mark.parametrize("seconds, text", [(3.21, "3.2 s"), (65, "1 min 05 s"), (7322, "2 h 02 min")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
