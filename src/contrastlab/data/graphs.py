"""Graphs as a data kind: one graph, a batch of graphs, and a dataset of graphs.

A graph is ``x: (n, F)`` float32 node features and ``edge_index: (2, A)`` int64 arcs (each
undirected edge listed in both directions, no self-loops); a batch concatenates the graphs'
nodes, offsets their arcs and records each node's graph in ``batch: (N,)``, the layout of
torch_geometric's ``Batch`` (``x``, ``edge_index``, ``batch``), so that PyG layers such as
``GINConv`` take it as it is. This module needs only torch: the graph augmentations run on it in
DataLoader workers, and PyG datasets come in through :func:`from_pyg` by duck typing (any
objects with ``x``, ``edge_index``, ``y`` and ``num_nodes``).

:class:`GraphData` implements the dataset protocol (:mod:`contrastlab.data.dataset`). Its
training views are made in the loader workers (:meth:`GraphData.with_view_augments`): a
training sample is one augmented graph per view, each drawn with a generator seeded by the
sample's key, and ``batch["inputs"]`` is then a list of per-view :class:`GraphBatch`;
evaluation gets one :class:`GraphBatch` of the graphs as stored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from contrastlab.data.base import DataError
from contrastlab.data.dataset import Batch, SampleKey

GRAPH_KIND = "graph"
"""The data kind of every graph dataset (its views: :mod:`contrastlab.data.graph_augment`)."""


class Graph(NamedTuple):
    """One graph: ``x: (n, F)`` float32 node features, ``edge_index: (2, A)`` int64 arcs."""

    x: torch.Tensor
    edge_index: torch.Tensor

    @property
    def num_nodes(self) -> int:
        return self.x.shape[0]


def undirected_pairs(edge_index: torch.Tensor) -> np.ndarray:
    """``(E, 2)`` the undirected edges ``u < v`` of symmetric arcs ``(2, 2E)``, sorted."""
    u, v = edge_index.numpy()
    return np.stack([u[u < v], v[u < v]], axis=1)


def arcs_of(pairs: np.ndarray) -> torch.Tensor:
    """``(E, 2)`` undirected edges -> ``(2, 2E)`` symmetric int64 arcs, sorted."""
    both = np.concatenate([pairs, pairs[:, ::-1]]) if len(pairs) else np.zeros((0, 2), np.int64)
    both = both[np.lexsort((both[:, 1], both[:, 0]))]
    return torch.from_numpy(np.ascontiguousarray(both.T, dtype=np.int64))


def random_non_edges(pairs: np.ndarray, num_nodes: int, draws: int, generator: np.random.Generator,
                     limit: int | None = None) -> np.ndarray:
    """``(K, 2)`` distinct node pairs ``u < v`` not in the undirected edges ``pairs``, from
    ``draws`` uniform draws of node pairs, at most ``limit`` of them (a dense graph has few)."""
    seen = set(map(tuple, pairs.tolist()))
    found: list[tuple[int, int]] = []
    if num_nodes < 2:
        return np.zeros((0, 2), np.int64)
    for u, v in generator.integers(0, num_nodes, size=(draws, 2)).tolist():
        if len(found) == limit:
            break
        edge = (min(u, v), max(u, v))
        if u != v and edge not in seen:
            seen.add(edge)
            found.append(edge)
    return np.array(found, dtype=np.int64).reshape(-1, 2)


Augment = Callable[[Graph, np.random.Generator], "tuple[Graph, int, int]"]
"""A graph augmentation: ``(graph, rng) -> (augmented graph, operations requested, operations
applied)`` (the counts say how much of its budget an augmentation could spend)."""


@dataclass
class GraphBatch:
    """Graphs concatenated as one disjoint graph (torch_geometric's batch layout).

    Attributes:
        x: ``(N, F)`` float32 node features of all graphs.
        edge_index: ``(2, A)`` int64 arcs, in the batch's node numbering.
        batch: ``(N,)`` int64, the graph (0 .. num_graphs - 1) of every node.
        num_graphs: the number of graphs ``B``.
    """

    x: torch.Tensor
    edge_index: torch.Tensor
    batch: torch.Tensor
    num_graphs: int

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "GraphBatch":
        return GraphBatch(self.x.to(device, non_blocking=non_blocking),
                          self.edge_index.to(device, non_blocking=non_blocking),
                          self.batch.to(device, non_blocking=non_blocking), self.num_graphs)

    def pin_memory(self) -> "GraphBatch":
        return GraphBatch(self.x.pin_memory(), self.edge_index.pin_memory(), self.batch.pin_memory(),
                          self.num_graphs)

    def __len__(self) -> int:
        return self.num_graphs


def collate_graphs(graphs: Sequence[Graph]) -> GraphBatch:
    """One :class:`GraphBatch` of ``graphs``, in order."""
    sizes = torch.tensor([g.num_nodes for g in graphs], dtype=torch.int64)
    offsets = torch.cumsum(sizes, 0) - sizes
    edge_index = torch.cat([g.edge_index + offset for g, offset in zip(graphs, offsets.tolist())], dim=1)
    batch = torch.repeat_interleave(torch.arange(len(graphs)), sizes)
    return GraphBatch(torch.cat([g.x for g in graphs]), edge_index, batch, len(graphs))


def check_graph(graph: Graph, where: str) -> None:
    """Raise :class:`DataError` naming ``where`` unless ``graph`` is valid: float ``(n, F)``
    features with ``n >= 1``, ``(2, A)`` int64 arcs inside ``0 .. n-1``, no self-loop, every
    arc's reverse present."""
    x, edge_index = graph
    if not torch.is_tensor(x) or x.dim() != 2 or x.shape[0] < 1 or not x.is_floating_point():
        raise DataError(f"{where}: node features must be a float tensor (n, F) with n >= 1, got "
                        f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
    if not torch.is_tensor(edge_index) or edge_index.dim() != 2 or edge_index.shape[0] != 2 \
            or edge_index.dtype != torch.int64:
        raise DataError(f"{where}: edge_index must be an int64 tensor (2, A), got "
                        f"{getattr(edge_index, 'dtype', type(edge_index).__name__)} "
                        f"{tuple(getattr(edge_index, 'shape', ()))}")
    if edge_index.numel() == 0:
        return
    n = x.shape[0]
    if int(edge_index.min()) < 0 or int(edge_index.max()) >= n:
        raise DataError(f"{where}: edge_index holds node {int(edge_index.max())} (or a negative one) but the graph "
                        f"has {n} nodes")
    if bool((edge_index[0] == edge_index[1]).any()):
        raise DataError(f"{where}: edge_index holds a self-loop; expected none")
    forward = set(zip(*edge_index.tolist()))
    if any((v, u) not in forward for u, v in forward):
        raise DataError(f"{where}: edge_index is not symmetric; list every undirected edge in both directions")


def undirected(edge_index: torch.Tensor) -> torch.Tensor:
    """``(2, A)`` arcs -> the sorted, deduplicated symmetric arcs of the same undirected edges,
    self-loops dropped."""
    u, v = edge_index
    keep = u != v
    pairs = torch.stack([torch.minimum(u, v)[keep], torch.maximum(u, v)[keep]])
    pairs = torch.unique(pairs, dim=1)
    both = torch.cat([pairs, pairs.flip(0)], dim=1)
    order = torch.argsort(both[0] * (int(both.max()) + 1 if both.numel() else 1) + both[1])
    return both[:, order]


def view_seed(seed: int, slot: int) -> int:
    """The seed of view ``slot`` of a training sample whose key has seed ``seed``."""
    return (seed * 1_000_003 + slot * 7_919 + 1) % (2**63 - 1)


@dataclass
class GraphData:
    """A graph dataset held in memory; implements the dataset protocol.

    Attributes:
        name: dataset name, for messages.
        graphs: the graphs, all with the same number of node features ``F``.
        labels: ``(N,)`` int64 graph classes ``0 .. C-1``, or ``None``.
        classes: class names (the labels as stored in the files), indexable by label.
        view_augments: one augmentation per training view, applied in the loader workers
            (empty: samples are the stored graphs).
    """

    name: str
    graphs: list[Graph]
    labels: torch.Tensor | None = None
    classes: tuple[str, ...] = ()
    view_augments: tuple[Augment, ...] = ()
    kind: str = GRAPH_KIND
    targets: None = None
    target_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.graphs:
            raise DataError(f"{self.name}: the dataset holds no graphs")
        widths = {g.x.shape[1] for g in self.graphs}
        if len(widths) != 1:
            raise DataError(f"{self.name}: graphs have node features of different widths {sorted(widths)}")
        if self.labels is not None and self.labels.shape != (len(self.graphs),):
            raise DataError(f"{self.name}: {len(self.graphs)} graphs but labels of shape {tuple(self.labels.shape)}")

    @property
    def shape(self) -> tuple[int]:
        """``(F,)``: the node-feature width (what a graph encoder is built for)."""
        return (self.graphs[0].x.shape[1],)

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, key: int | SampleKey) -> dict[str, Any]:
        index = key.index if isinstance(key, SampleKey) else int(key)
        graph = self.graphs[index]
        sample: dict[str, Any] = {"index": index}
        if self.labels is not None:
            sample["labels"] = int(self.labels[index])
        if isinstance(key, SampleKey) and self.view_augments:
            made = [augment(graph, np.random.default_rng(view_seed(key.seed, slot)))
                    for slot, augment in enumerate(self.view_augments)]
            sample["inputs"] = [view for view, _, _ in made]
            sample["view_ops"] = [(requested, applied) for _, requested, applied in made]
        else:
            sample["inputs"] = graph
        return sample

    def collate(self, samples: list[dict[str, Any]]) -> Batch:
        """``inputs``: a :class:`GraphBatch`, or one per view for augmented samples;
        ``view_ops``: ``(B, V, 2)`` float32 operations requested and applied per view."""
        batch: Batch = {"index": torch.tensor([s["index"] for s in samples], dtype=torch.int64)}
        if self.labels is not None:
            batch["labels"] = torch.tensor([s["labels"] for s in samples], dtype=torch.int64)
        if isinstance(samples[0]["inputs"], list):
            views = len(samples[0]["inputs"])
            batch["inputs"] = [collate_graphs([s["inputs"][k] for s in samples]) for k in range(views)]
            batch["view_ops"] = torch.tensor([s["view_ops"] for s in samples], dtype=torch.float32)
        else:
            batch["inputs"] = collate_graphs([s["inputs"] for s in samples])
        return batch

    def subset(self, index: torch.Tensor) -> "GraphData":
        positions = index.tolist()
        return dataclasses.replace(
            self, graphs=[self.graphs[i] for i in positions],
            labels=None if self.labels is None else self.labels[index],
        )

    def with_view_augments(self, augments: Sequence[Augment]) -> "GraphData":
        """This dataset with training samples made of one augmented graph per view."""
        return dataclasses.replace(self, view_augments=tuple(augments))


def encode_labels(raw: Sequence[Any], where: str) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Class values as stored (``-1``/``1``, ``1``/``2``, strings) -> ``(N,)`` int64 labels
    ``0 .. C-1`` in sorted order of the values, and the values as class names."""
    values = sorted(set(raw), key=lambda v: (isinstance(v, str), v))
    if len(values) < 1:
        raise DataError(f"{where}: no graph labels")
    position = {v: i for i, v in enumerate(values)}
    return torch.tensor([position[v] for v in raw], dtype=torch.int64), tuple(str(v) for v in values)


def from_pyg(dataset: Iterable[Any], name: str = "pyg") -> GraphData:
    """A :class:`GraphData` of a torch_geometric dataset (or any sequence of objects with
    ``edge_index``, optional ``x`` and ``y``, and ``num_nodes``): graphs without node features
    get a constant feature 1, labels are mapped to ``0 .. C-1``, arcs made symmetric."""
    graphs, raw_labels = [], []
    for i, data in enumerate(dataset):
        where = f"{name}[{i}]"
        n = int(data.num_nodes)
        x = data.x if getattr(data, "x", None) is not None else torch.ones(n, 1)
        graph = Graph(x.float(), undirected(data.edge_index.long()) if data.edge_index.numel() else
                      torch.zeros(2, 0, dtype=torch.int64))
        check_graph(graph, where)
        graphs.append(graph)
        y = getattr(data, "y", None)
        raw_labels.append(None if y is None else int(y.view(-1)[0]))
    if any(label is None for label in raw_labels):
        if not all(label is None for label in raw_labels):
            raise DataError(f"{name}: some graphs have a label y and some do not")
        return GraphData(name, graphs)
    labels, classes = encode_labels(raw_labels, name)
    return GraphData(name, graphs, labels, classes)
