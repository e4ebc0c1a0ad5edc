"""Graph classification datasets in the TU Dortmund raw format, from local files (``tu``).

A folder (``data.root``, or its ``raw/`` subfolder as torch_geometric lays it out) holds, for one
dataset ``NAME``:

- ``NAME_A.txt``: one arc ``row, col`` per line, 1-based node ids over the whole dataset;
- ``NAME_graph_indicator.txt``: line ``i``: the 1-based graph of node ``i`` (sorted, no graph
  skipped);
- ``NAME_graph_labels.txt``: line ``j``: the class of graph ``j`` (any integers: mapped to
  ``0 .. C-1`` in sorted order, the stored values kept as class names);
- optional ``NAME_node_labels.txt`` (one categorical label per node) and
  ``NAME_node_attributes.txt`` (comma-separated reals per node); other files are ignored.

Node features (``data.node_features``): ``labels`` one-hot node labels (torch_geometric's
``TUDataset`` default), ``attributes``, ``both`` (attributes then one-hot labels), ``degree``
(one-hot degree, capped at :data:`MAX_DEGREE`), ``constant`` (a single 1), or ``auto`` (the
default): labels when the files have them, else attributes, else constant. Arcs are made
symmetric and deduplicated, self-loops dropped (some TU datasets list an edge more than twice).
The only split is ``all``: the graph literature evaluates by cross-validation over every graph
(``eval.protocol: svm_cv``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from contrastlab.data.base import DataError
from contrastlab.data.graphs import Graph, GraphData, encode_labels, undirected
from contrastlab.data.registry import DATASETS

SPLITS = ("all",)
NODE_FEATURES = ("auto", "labels", "attributes", "both", "degree", "constant")
MAX_DEGREE = 32  # degree features: one-hot of min(degree, MAX_DEGREE)


def find_dataset(root: Path) -> tuple[Path, str]:
    """The folder holding ``NAME_A.txt`` (``root`` or ``root/raw``) and ``NAME``."""
    for folder in (root, root / "raw"):
        found = sorted(folder.glob("*_A.txt")) if folder.is_dir() else []
        if len(found) > 1:
            raise DataError(f"{folder}: holds several TU datasets ({', '.join(p.name for p in found)}); "
                            "point data.root at a folder with one")
        if found:
            return folder, found[0].name[: -len("_A.txt")]
    raise DataError(f"{root}: no TU dataset here (expected NAME_A.txt, NAME_graph_indicator.txt and "
                    "NAME_graph_labels.txt in it or in its raw/ subfolder)")


def read_numbers(path: Path, dtype: type, columns: int | None = None) -> np.ndarray:
    """The numbers of a text file, one row per non-empty line, comma or space separated ->
    ``(rows,)`` or, with ``columns``, ``(rows, columns)``."""
    if not path.is_file():
        raise DataError(f"{path}: missing (a TU dataset needs this file)")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    try:
        values = np.array(" ".join(lines).replace(",", " ").split(), dtype=dtype)
    except ValueError:
        for number, line in enumerate(lines, 1):
            try:
                np.array(line.replace(",", " ").split(), dtype=dtype)
            except ValueError:
                kind = "integers" if dtype is np.int64 else "numbers"
                raise DataError(f"{path}, line {number}: expected {kind}, got {line.strip()!r}") from None
        raise
    width = columns if columns is not None else 1
    if values.size != len(lines) * width:
        raise DataError(f"{path}: expected {width} value(s) on every line, got {values.size} values on "
                        f"{len(lines)} lines")
    return values.reshape(len(lines), width) if columns is not None else values


def attribute_columns(path: Path) -> int:
    first = next((line for line in path.read_text().splitlines() if line.strip()), "")
    return len(first.replace(",", " ").split())


def one_hot(values: np.ndarray) -> torch.Tensor:
    """``(n,)`` categorical values -> ``(n, K)`` float32 one-hot over their ``K`` sorted distinct values."""
    _, codes = np.unique(values, return_inverse=True)
    return torch.nn.functional.one_hot(torch.from_numpy(codes.reshape(-1)), int(codes.max()) + 1).float()


def check_indicator(indicator: np.ndarray, path: Path) -> int:
    """The number of graphs; :class:`DataError` unless ids run 1, 1, ..., 2, ... with none skipped."""
    if indicator.size == 0:
        raise DataError(f"{path}: no nodes")
    steps = np.diff(indicator)
    if indicator[0] != 1 or (steps < 0).any() or (steps > 1).any():
        bad = 0 if indicator[0] != 1 else int(np.flatnonzero((steps < 0) | (steps > 1))[0]) + 1
        raise DataError(f"{path}, line {bad + 1}: graph ids must start at 1, be sorted and skip no graph; "
                        f"got {int(indicator[bad])} after {int(indicator[bad - 1]) if bad else 'the start'}")
    return int(indicator[-1])


def node_features(folder: Path, name: str, num_nodes: int, mode: str, arcs: np.ndarray) -> torch.Tensor:
    """``(num_nodes, F)`` float32 node features for ``data.node_features = mode``."""
    labels_path, attributes_path = folder / f"{name}_node_labels.txt", folder / f"{name}_node_attributes.txt"
    if mode == "auto":
        mode = "labels" if labels_path.is_file() else "attributes" if attributes_path.is_file() else "constant"
    parts: list[tuple[torch.Tensor, Path]] = []
    if mode in ("attributes", "both"):
        attributes = read_numbers(attributes_path, np.float64, attribute_columns(attributes_path))
        parts.append((torch.from_numpy(attributes).float(), attributes_path))
    if mode in ("labels", "both"):
        parts.append((one_hot(read_numbers(labels_path, np.int64)), labels_path))
    for part, path in parts:
        if part.shape[0] != num_nodes:
            raise DataError(f"{path}: {part.shape[0]} rows but the graph indicator has {num_nodes} nodes")
    if mode == "degree":
        unique = undirected(torch.from_numpy(arcs)).numpy() if arcs.size else arcs
        degree = np.bincount(unique[0], minlength=num_nodes) if unique.size else np.zeros(num_nodes, np.int64)
        return torch.nn.functional.one_hot(torch.from_numpy(np.minimum(degree, MAX_DEGREE)), MAX_DEGREE + 1).float()
    if mode == "constant":
        return torch.ones(num_nodes, 1)
    return torch.cat([part for part, _ in parts], dim=1)


def read_tu(root: str | Path, node_feature_mode: str = "auto") -> GraphData:
    """Every graph of the TU dataset in ``root`` (see the module docstring)."""
    if node_feature_mode not in NODE_FEATURES:
        raise DataError(f"data.node_features: {node_feature_mode!r} is not one of {', '.join(NODE_FEATURES)}")
    folder, name = find_dataset(Path(root))
    indicator_path = folder / f"{name}_graph_indicator.txt"
    indicator = read_numbers(indicator_path, np.int64)
    num_graphs, num_nodes = check_indicator(indicator, indicator_path), indicator.size
    arcs_path = folder / f"{name}_A.txt"
    arcs = read_numbers(arcs_path, np.int64, 2).T - 1
    if arcs.size and (arcs.min() < 0 or arcs.max() >= num_nodes):
        raise DataError(f"{arcs_path}: node ids must be in 1..{num_nodes} (the lines of {indicator_path.name}), "
                        f"got {int(arcs.min()) + 1}..{int(arcs.max()) + 1}")
    crossing = np.flatnonzero(indicator[arcs[0]] != indicator[arcs[1]]) if arcs.size else []
    if len(crossing):
        line = int(crossing[0])
        u, v = arcs[:, line] + 1
        raise DataError(f"{arcs_path}, line {line + 1}: the arc {u}, {v} joins graph {indicator[u - 1]} and graph "
                        f"{indicator[v - 1]}; every arc must stay inside one graph")
    labels_path = folder / f"{name}_graph_labels.txt"
    raw_labels = read_numbers(labels_path, np.int64)
    if raw_labels.size != num_graphs:
        raise DataError(f"{labels_path}: {raw_labels.size} labels but {indicator_path.name} has {num_graphs} graphs")
    x = node_features(folder, name, num_nodes, node_feature_mode, arcs)
    labels, classes = encode_labels(raw_labels.tolist(), str(labels_path))
    return GraphData(name, split_graphs(x, torch.from_numpy(arcs), torch.from_numpy(indicator - 1), num_graphs),
                     labels, classes)


def split_graphs(x: torch.Tensor, arcs: torch.Tensor, graph_of: torch.Tensor, num_graphs: int) -> list[Graph]:
    """The dataset-wide features ``(N, F)`` and arcs ``(2, A)`` cut into ``num_graphs`` graphs
    (``graph_of``: ``(N,)`` sorted 0-based graph ids), arcs renumbered from 0 in each."""
    counts = torch.bincount(graph_of, minlength=num_graphs)
    starts = torch.cumsum(counts, 0) - counts
    arc_graph = graph_of[arcs[0]] if arcs.numel() else torch.zeros(0, dtype=torch.int64)
    order = torch.argsort(arc_graph, stable=True)
    arcs, arc_counts = arcs[:, order], torch.bincount(arc_graph, minlength=num_graphs)
    graphs, first_arc = [], 0
    for g in range(num_graphs):
        start, size, count = int(starts[g]), int(counts[g]), int(arc_counts[g])
        local = arcs[:, first_arc:first_arc + count] - start
        first_arc += count
        graphs.append(Graph(x[start:start + size], undirected(local) if count else local))
    return graphs


@DATASETS.register("tu", "graph classification datasets in the TU raw format (MUTAG, PROTEINS, NCI1, ...), local files")
def load(split: str, root: str | None = None, size: int | None = None, seed: int = 0, *,
         node_features: str = "auto") -> GraphData:
    """Split ``all`` of the TU dataset in ``root`` (a seeded subset of ``size`` graphs when set)."""
    if split not in SPLITS:
        raise DataError(f"tu: unknown split {split!r}; TU datasets have one split, 'all' (set data.train_split=all "
                        "and data.test_split=all; evaluation cross-validates)")
    if root is None:
        raise DataError("tu: data.root must name the folder of a TU dataset (NAME_A.txt, NAME_graph_indicator.txt, "
                        "NAME_graph_labels.txt, ...)")
    data = read_tu(root, node_features)
    if size is not None and size < len(data):
        data = data.subset(torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:size].sort().values)
    return data
