"""Peak memory of ``contrastlab train`` on streamed image folders of different sizes.

    python benchmarks/streaming_rss.py /tmp/stream5k /tmp/stream20k --out streaming \\
        --overrides train.max_steps_per_epoch=20 eval.compare_random_init=false

runs ``contrastlab train RECIPE data.root=FOLDER OVERRIDES`` once per folder (one after the
other) and samples the process tree (the trainer and its DataLoader workers) every
``--interval`` seconds from ``/proc``: the peak of the summed RSS, of the summed PSS
(proportional set size: pages shared between the trainer and its forked workers counted
once), and of the trainer's own RSS. The goal of a streamed dataset: the peaks do not grow
with the number of images. ``--timeline DIR`` also writes ``DIR/<run number>-<folder name>.jsonl``: every
sample's per-process RSS, PSS and USS (private pages, MiB) and the trainer's output lines,
each with its time in seconds since the start.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from report import write_results

RECIPE = "configs/simclr-folder-convnet.yaml"


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from ``/proc/<pid>/task/*/children``)."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    stack += [int(child) for child in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def field_kib(path: str, name: str) -> int:
    """The ``name:`` value (kiB) of a ``/proc`` status-like file, 0 when the process is gone."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def process_mib(pid: int) -> dict:
    """``pid``'s RSS, PSS and USS (private clean + dirty) in MiB, from ``smaps_rollup``."""
    fields = {name: field_kib(f"/proc/{pid}/smaps_rollup", name) / 1024
              for name in ("Rss", "Pss", "Private_Clean", "Private_Dirty")}
    return {"rss": fields["Rss"], "pss": fields["Pss"], "uss": fields["Private_Clean"] + fields["Private_Dirty"]}


def echo_lines(stream, start: float, timeline) -> None:  # noqa: ANN001 - text streams
    """Copy ``stream`` to stdout, each line also to ``timeline`` with its time since ``start``."""
    for line in stream:
        sys.stdout.write(line)
        timeline.write(json.dumps({"t": round(time.perf_counter() - start, 2), "line": line.rstrip()}) + "\n")


def measure(command: list[str], interval: float, timeline_path: Path | None = None) -> dict:
    """Run ``command``; its exit code, wall time and peak memory (MiB) of its process tree.
    With ``timeline_path``, every sample (and output line) is also written there as JSON lines."""
    start = time.perf_counter()
    timeline = open(timeline_path, "w") if timeline_path else None
    process = subprocess.Popen(command, **({"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
                                           if timeline else {}))
    reader = None
    if timeline:
        reader = threading.Thread(target=echo_lines, args=(process.stdout, start, timeline))
        reader.start()
    peak = {"tree_rss_mib": 0.0, "tree_pss_mib": 0.0, "main_rss_mib": 0.0, "main_pss_mib": 0.0,
            "worker_pss_mib": 0.0, "processes": 0}
    while process.poll() is None:
        pids = descendants(process.pid)
        pss = {p: field_kib(f"/proc/{p}/smaps_rollup", "Pss") / 1024 for p in pids}
        workers = [v for p, v in pss.items() if p != process.pid]
        sample = {"tree_rss_mib": sum(field_kib(f"/proc/{p}/status", "VmRSS") for p in pids) / 1024,
                  "tree_pss_mib": sum(pss.values()), "main_rss_mib": field_kib(f"/proc/{process.pid}/status", "VmRSS") / 1024,
                  "main_pss_mib": pss.get(process.pid, 0.0), "worker_pss_mib": max(workers, default=0.0),
                  "processes": len(pids)}
        for key, value in sample.items():
            peak[key] = max(peak[key], value)
        if timeline:
            timeline.write(json.dumps({"t": round(time.perf_counter() - start, 2),
                                       "procs": {p: process_mib(p) for p in pids}}) + "\n")
        time.sleep(interval)
    if timeline:
        reader.join()
        timeline.close()
    return {"returncode": process.returncode, "wall_s": time.perf_counter() - start, **peak}


def count_images(folder: Path) -> int:
    return sum(1 for p in (folder / "train").rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="image folders with train/ and test/ splits")
    parser.add_argument("--recipe", default=RECIPE)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--out", help="write benchmarks/results/<out>.{json,md}")
    parser.add_argument("--overrides", nargs="*", default=[], help="section.key=value overrides for every run")
    parser.add_argument("--timeline", type=Path, help="write per-process samples to DIR/<run number>-<folder name>.jsonl")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, folder in enumerate(args.folders):  # a folder may be given again (pairs in one invocation)
            run_dir = Path(tmp) / f"{i}-{folder.name}"
            command = [sys.executable, "-m", "contrastlab", "train", args.recipe, f"data.root={folder}",
                       "train.progress=false", *args.overrides, "--run-dir", str(run_dir)]
            timeline = None
            if args.timeline:
                args.timeline.mkdir(parents=True, exist_ok=True)
                timeline = args.timeline / f"{i}-{folder.name}.jsonl"
            row = {"folder": str(folder), "train_images": count_images(folder),
                   **measure(command, args.interval, timeline)}
            results = run_dir / "results.json"
            if row["returncode"] == 0 and results.is_file():
                trained = json.loads(results.read_text()).get("trained", {})
                row["knn_accuracy"] = trained.get("knn", {}).get("accuracy")
                row["linear_accuracy"] = trained.get("linear", {}).get("accuracy")
            rows.append(row)
            print(json.dumps(row), flush=True)
    command = (f"python benchmarks/streaming_rss.py {' '.join(map(str, args.folders))} --recipe {args.recipe}"
               + (f" --out {args.out}" if args.out else "") + (" --overrides " + " ".join(args.overrides) if args.overrides else ""))
    base = rows[0]
    lines = [
        "# Peak memory of streamed training vs the number of images", "",
        f"`{command}`", "",
        f"Each run: `contrastlab train {args.recipe} data.root=FOLDER` (plus the overrides above), trainer and "
        f"DataLoader workers sampled every {args.interval} s from /proc; {len(os.sched_getaffinity(0))} CPUs, "
        f"shared with other jobs while measuring (wall times are noisy).", "",
        "| folder | train images | peak RSS, process tree (MiB) | vs first | peak PSS, process tree (MiB) | vs first "
        "| peak RSS, trainer (MiB) | vs first | peak PSS, trainer / largest worker (MiB) | processes | wall (s) "
        "| kNN acc. | linear acc. | exit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['folder']} | {r['train_images']} | {r['tree_rss_mib']:.0f} | {r['tree_rss_mib'] / base['tree_rss_mib']:.3f} "
              f"| {r['tree_pss_mib']:.0f} | {r['tree_pss_mib'] / base['tree_pss_mib']:.3f} | {r['main_rss_mib']:.0f} "
              f"| {r['main_rss_mib'] / base['main_rss_mib']:.3f} | {r['main_pss_mib']:.0f} / {r['worker_pss_mib']:.0f} "
              f"| {r['processes']} | {r['wall_s']:.0f} | {r.get('knn_accuracy', float('nan')):.1f} "
              f"| {r.get('linear_accuracy', float('nan')):.1f} "
              f"| {r['returncode']} |" for r in rows]
    print("\n".join(lines))
    if args.out:
        write_results(args.out, rows, lines, command)


if __name__ == "__main__":
    main()
