"""A tiny trained run and its export, shared by the tests of exports and of the README."""

from __future__ import annotations

from pathlib import Path

from contrastlab.cli import main

TINY_RUN = ["data.name=digits", "train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=32",
            "eval.at_end=false", "train.progress=false", "train.device=cpu"]


def train_and_export(folder: Path) -> tuple[Path, Path]:
    """Train ``TINY_RUN`` into ``folder/run`` and export its backbone to
    ``folder/backbone.safetensors``; returns both paths."""
    run, out = folder / "run", folder / "backbone.safetensors"
    assert main(["train", "--run-dir", str(run), *TINY_RUN]) == 0
    assert main(["export", str(run), "--out", str(out)]) == 0
    return run, out
