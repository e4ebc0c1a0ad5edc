"""Where and how the benchmark scripts record their results."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def environment(command: str) -> dict:
    """The machine facts every result file carries, with the command that produced it."""
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "command": command}


def write_results(name: str, rows: list[dict], markdown: list[str], command: str) -> None:
    """``results/<name>.json`` (environment + rows) and ``results/<name>.md`` (the lines)."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"env": environment(command), "rows": rows}, indent=2))
    (RESULTS / f"{name}.md").write_text("\n".join(markdown) + "\n")
