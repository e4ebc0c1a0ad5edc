"""Metrics files of a run folder: JSON lines (always), CSV, and the optional sinks of ``train.loggers``."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from contrastlab.engine.external_loggers import Sink


def standard_json(value: Any, **kwargs: Any) -> str:
    """``value`` as standard JSON: NaN and infinities (which ``json.dumps`` writes as the
    non-standard tokens ``NaN``/``Infinity``) become ``null``."""
    return json.dumps(_finite(value), allow_nan=False, **kwargs)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


class MetricsLogger:
    """Appends one JSON object per record to ``metrics.jsonl``; mirrors it to ``metrics.csv``
    (with ``write_csv``) and to each of ``sinks`` (TensorBoard, W&B: see
    :func:`~contrastlab.engine.external_loggers.open_sinks`). On resume, records after the
    checkpoint's step are dropped first, so the files read as one uninterrupted run."""

    def __init__(self, run_dir: Path, resume_step: int | None = None, enabled: bool = True,
                 write_csv: bool = True, sinks: Sequence[Sink] = ()) -> None:
        self.enabled, self.write_csv, self.sinks = enabled, write_csv, list(sinks)
        self.jsonl = run_dir / "metrics.jsonl"
        self.csv = run_dir / "metrics.csv"
        self.records: list[dict[str, Any]] = []
        self.closed = False
        if not enabled:
            return
        if resume_step is not None and self.jsonl.exists():
            lines = self.jsonl.read_text().splitlines()
            self.records = [r for r in map(json.loads, lines) if r.get("step", 0) <= resume_step]
            self.jsonl.write_text("".join(standard_json(r) + "\n" for r in self.records))
        else:
            self.jsonl.write_text("")

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        with self.jsonl.open("a") as f:
            f.write(standard_json(record) + "\n")
        for sink in self.sinks:
            sink.log(record)

    def flush(self) -> None:
        """Rewrite ``metrics.csv`` (when written) with the union of all scalar keys seen (cheap:
        one row per log; list values, per-dimension diagnostics, stay in ``metrics.jsonl`` only),
        and flush the sinks."""
        if not self.enabled or not self.records:
            return
        if self.write_csv:
            keys = list(dict.fromkeys(k for r in self.records for k, v in r.items() if not isinstance(v, list)))
            with self.csv.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(self.records)
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        self.closed = True
        self.flush()
        for sink in self.sinks:
            sink.close()
