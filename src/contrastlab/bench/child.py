"""One bench cell in its own process: ``python -m contrastlab.bench.child RECORD RECIPE RUN_DIR
[OVERRIDE...]`` trains and evaluates through :func:`contrastlab.api.train` (the command line's
code path), then writes the process's peak memory to ``RECORD`` (JSON)."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import torch

from contrastlab.api import train


def main(argv: list[str]) -> int:
    record, recipe, run_dir, *overrides = argv
    train(recipe, overrides, run_dir=run_dir)
    peaks = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        peaks["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    Path(record).write_text(json.dumps(peaks))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
