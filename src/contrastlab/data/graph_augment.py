"""Graph augmentations (GraphCL's four families and their mixtures, controllability-preserving
edge perturbation) and the ``graph`` view kind that applies them in the loader workers.

Each augmentation is a callable ``(graph, rng) -> (graph, requested, applied)`` on one
:class:`~contrastlab.data.graphs.Graph` (``rng``: a ``numpy.random.Generator`` seeded per
sample and view), with its arguments checked by its constructor; ``augment.views[i].transforms``
lists them by name (:data:`GRAPH_TRANSFORMS`), applied in order (none: the graph as stored).

GraphCL (You et al., NeurIPS 2020) in the paper's form by default; ``legacy: true`` reproduces
what the official ``unsupervised_TU`` code does instead (spec additions A12, G.1):

- ``node_drop``: drop ``floor(ratio * n)`` uniformly chosen nodes and their arcs. Legacy: the
  training loop then also removes every node left without an arc (originally isolated ones too).
- ``edge_perturb``: remove ``floor(ratio * E)`` undirected edges and add as many random
  non-edges (symmetric). Legacy: keep a random ``A - floor(ratio * A)`` of the arcs, nothing
  added (pure arc dropping, which can leave one direction of an edge).
- ``attr_mask``: the feature rows of ``floor(ratio * n)`` random nodes replaced by
  ``N(0.5, 0.5^2)`` noise (both forms).
- ``subgraph``: a connected subgraph of ``ceil(ratio * n)`` nodes grown from a random seed node
  by repeatedly adding a random neighbour of the nodes chosen so far (a random-walk/BFS growth).
  Legacy: the code's frontier update is discarded, so only the seed's own neighbours are added.
- ``random2`` / ``random3`` / ``random4``: one of {node_drop, subgraph} (+ edge_perturb, +
  attr_mask) drawn uniformly per graph, each at its default ratio.

``control_edges`` adds and removes edges only where the network-controllability criterion is
kept (a reconstruction of Ahmad et al., ACC 2024: :mod:`contrastlab.data.graph_control`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from contrastlab.data.augment import TransformArgumentError, ViewPreset, register_preset, register_view_kind
from contrastlab.data.graphs import GRAPH_KIND, Graph, arcs_of, random_non_edges, undirected_pairs


def _check_ratio(name: str, ratio: float, upper: float = 1.0) -> None:
    if not 0.0 <= ratio <= upper:
        raise TransformArgumentError("ratio", f"{name}: ratio must be in [0, {upper:g}], got {ratio!r}")


def induced_subgraph(graph: Graph, keep: np.ndarray) -> Graph:
    """The subgraph on the sorted node positions ``keep`` (``(k,)`` int64), renumbered 0..k-1."""
    new_id = np.full(graph.num_nodes, -1, dtype=np.int64)
    new_id[keep] = np.arange(len(keep))
    arcs = new_id[graph.edge_index.numpy()]
    arcs = arcs[:, (arcs >= 0).all(axis=0)]
    return Graph(graph.x[torch.from_numpy(keep)], torch.from_numpy(np.ascontiguousarray(arcs)))


class Identity:
    """The graph as stored (the "original" view of GraphCL's TU code)."""

    name: ClassVar[str] = "identity"
    set_by_view: ClassVar[tuple[str, ...]] = ()

    def __call__(self, graph: Graph, rng: np.random.Generator) -> tuple[Graph, int, int]:
        return graph, 0, 0


class NodeDrop:
    name: ClassVar[str] = "node_drop"
    set_by_view: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ratio: float = 0.1, legacy: bool = False) -> None:
        _check_ratio(self.name, ratio, upper=0.99)
        self.ratio, self.legacy = ratio, legacy

    def __call__(self, graph: Graph, rng: np.random.Generator) -> tuple[Graph, int, int]:
        n = graph.num_nodes
        count = min(int(self.ratio * n), n - 1)
        keep = np.sort(rng.permutation(n)[count:])
        view = induced_subgraph(graph, keep)
        if self.legacy and view.edge_index.numel():
            view = induced_subgraph(view, np.unique(view.edge_index.numpy()))
        return view, count, count


class EdgePerturb:
    name: ClassVar[str] = "edge_perturb"
    set_by_view: ClassVar[tuple[str, ...]] = ()
    ADD_TRIES: ClassVar[int] = 10  # random node pairs drawn per edge to add before giving up

    def __init__(self, ratio: float = 0.1, legacy: bool = False) -> None:
        _check_ratio(self.name, ratio)
        self.ratio, self.legacy = ratio, legacy

    def __call__(self, graph: Graph, rng: np.random.Generator) -> tuple[Graph, int, int]:
        if self.legacy:
            arcs = graph.edge_index.shape[1]
            dropped = int(arcs * self.ratio)
            keep = np.sort(rng.permutation(arcs)[dropped:])
            return Graph(graph.x, graph.edge_index[:, torch.from_numpy(keep)]), dropped, dropped
        pairs = undirected_pairs(graph.edge_index)
        count = int(len(pairs) * self.ratio)
        kept = pairs[np.sort(rng.permutation(len(pairs))[count:])]
        added = random_non_edges(pairs, graph.num_nodes, self.ADD_TRIES * count, rng, limit=count)
        return Graph(graph.x, arcs_of(np.concatenate([kept, added]))), 2 * count, count + len(added)


class AttrMask:
    name: ClassVar[str] = "attr_mask"
    set_by_view: ClassVar[tuple[str, ...]] = ()
    NOISE_MEAN: ClassVar[float] = 0.5
    NOISE_STD: ClassVar[float] = 0.5

    def __init__(self, ratio: float = 0.1) -> None:
        _check_ratio(self.name, ratio)
        self.ratio = ratio

    def __call__(self, graph: Graph, rng: np.random.Generator) -> tuple[Graph, int, int]:
        n, width = graph.x.shape
        count = int(self.ratio * n)
        nodes = torch.from_numpy(rng.permutation(n)[:count])
        x = graph.x.clone()
        x[nodes] = torch.from_numpy(rng.normal(self.NOISE_MEAN, self.NOISE_STD, (count, width))).float()
        return Graph(x, graph.edge_index), count, count


class Subgraph:
    name: ClassVar[str] = "subgraph"
    set_by_view: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ratio: float = 0.2, legacy: bool = False) -> None:
        _check_ratio(self.name, ratio)
        if ratio == 0:
            raise TransformArgumentError("ratio", f"{self.name}: ratio is the fraction of nodes kept, > 0; got 0")
        self.ratio, self.legacy = ratio, legacy

    def __call__(self, graph: Graph, rng: np.random.Generator) -> tuple[Graph, int, int]:
        n = graph.num_nodes
        target = max(1, math.ceil(self.ratio * n))
        neighbours: list[list[int]] = [[] for _ in range(n)]
        for u, v in graph.edge_index.t().tolist():
            neighbours[u].append(v)
        seed = int(rng.integers(n))
        chosen, frontier = {seed}, set(neighbours[seed])
        while len(chosen) < target and frontier:
            node = sorted(frontier)[int(rng.integers(len(frontier)))]
            chosen.add(node)
            frontier.discard(node)
            if not self.legacy:  # the official code's update of the frontier is lost
                frontier |= set(neighbours[node]) - chosen
        return induced_subgraph(graph, np.array(sorted(chosen), dtype=np.int64)), target, len(chosen)


class RandomFamily:
    """One of ``families`` (augmentations at their default ratios) drawn uniformly per graph."""

    set_by_view: ClassVar[tuple[str, ...]] = ()
    families: ClassVar[tuple[type, ...]] = ()

    def __init__(self, legacy: bool = False) -> None:
        self.choices = [cls(legacy=legacy) if "legacy" in inspect.signature(cls).parameters else cls()
                        for cls in self.families]

    def __call__(self, graph: Graph, rng: np.random.Generator) -> tuple[Graph, int, int]:
        return self.choices[int(rng.integers(len(self.choices)))](graph, rng)


class Random2(RandomFamily):
    name: ClassVar[str] = "random2"
    families = (NodeDrop, Subgraph)


class Random3(RandomFamily):
    name: ClassVar[str] = "random3"
    families = (NodeDrop, Subgraph, EdgePerturb)


class Random4(RandomFamily):
    name: ClassVar[str] = "random4"
    families = (NodeDrop, Subgraph, EdgePerturb, AttrMask)


class ControlEdges:
    """Edge removals and additions that keep a network-controllability criterion
    (:func:`contrastlab.data.graph_control.control_perturb`): ``ratio`` of the edges removed and
    as many added where admissible (fewer when too few are), ``leader_fraction`` of the nodes
    drawn as leaders per view, ``criterion``: ``dl_vectors`` (every distance-to-leader vector
    kept), ``driver_nodes`` (the number of driver nodes of a maximum matching kept) or ``both``."""

    name: ClassVar[str] = "control_edges"
    set_by_view: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ratio: float = 0.1, criterion: Literal["dl_vectors", "driver_nodes", "both"] = "dl_vectors",
                 leader_fraction: float = 0.1) -> None:
        _check_ratio(self.name, ratio)
        if criterion not in ("dl_vectors", "driver_nodes", "both"):
            raise TransformArgumentError("criterion", f"{self.name}: criterion must be dl_vectors, driver_nodes or "
                                                      f"both, got {criterion!r}")
        if not 0.0 < leader_fraction <= 1.0:
            raise TransformArgumentError("leader_fraction", f"{self.name}: leader_fraction must be in (0, 1], got "
                                                            f"{leader_fraction!r}")
        self.ratio, self.criterion, self.leader_fraction = ratio, criterion, leader_fraction

    def __call__(self, graph: Graph, rng: np.random.Generator) -> tuple[Graph, int, int]:
        from contrastlab.data.graph_control import control_perturb  # scipy: the graph extra

        edge_index, stats = control_perturb(graph.edge_index, graph.num_nodes, ratio=self.ratio,
                                            criterion=self.criterion, leader_fraction=self.leader_fraction,
                                            generator=rng)
        requested = stats["requested_additions"] + stats["requested_removals"]
        applied = stats["applied_additions"] + stats["applied_removals"]
        return Graph(graph.x, edge_index), requested, applied


GRAPH_TRANSFORMS: dict[str, type] = {
    cls.name: cls for cls in (Identity, NodeDrop, EdgePerturb, AttrMask, Subgraph, Random2, Random3, Random4,
                              ControlEdges)
}
"""``augment.views[i].transforms[j].name`` of a ``graph`` view -> its class (the other keys of
the entry are the constructor's arguments)."""


class Compose:
    """Augmentations in order; the operation counts add up."""

    def __init__(self, augments: Sequence[Any]) -> None:
        self.augments = list(augments)

    def __call__(self, graph: Graph, rng: np.random.Generator) -> tuple[Graph, int, int]:
        requested = applied = 0
        for augment in self.augments:
            graph, r, a = augment(graph, rng)
            requested, applied = requested + r, applied + a
        return graph, requested, applied


class GraphView:
    """A ``graph`` view on the device: the batch of this view's augmented graphs, which the
    dataset made in its loader workers with :attr:`augment` (see
    :meth:`~contrastlab.data.graphs.GraphData.with_view_augments`).

    Attributes:
        augment: the augmentation the dataset applies to every graph of this view.
        slot: the index of this view's graphs in ``batch["inputs"]`` (set by :meth:`at_slot`).
    """

    continuous_parameters: tuple[str, ...] = ()

    def __init__(self, augment: Compose, slot: int | None = None) -> None:
        self.augment, self.slot = augment, slot

    def at_slot(self, slot: int) -> "GraphView":
        return GraphView(self.augment, slot)

    def sample(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
        """No parameters: the graphs were augmented when loaded."""
        return {}

    def apply(self, batch: dict[str, Any], params: dict[str, Any]) -> Any:
        """This view's :class:`~contrastlab.data.graphs.GraphBatch`."""
        inputs = batch["inputs"]
        if self.slot is None or not isinstance(inputs, (list, tuple)) or not 0 <= self.slot < len(inputs):
            raise ValueError("graph views are made in the loader workers: the training split must be a graph "
                             "dataset given the views' augmentations (engine.setup.training_views), got "
                             f"slot {self.slot} and inputs of type {type(inputs).__name__}")
        return inputs[self.slot]


def graph_view(transforms: Sequence[dict[str, Any]], size: int | None, input_shape: tuple[int, ...],
               normalize: Any) -> GraphView:
    """The ``graph`` view kind (a :data:`~contrastlab.data.augment.ViewFactory`): the
    ``transforms`` of :data:`GRAPH_TRANSFORMS` in order, for graph datasets (``input_shape``
    ``(F,)``); ``size`` must be unset."""
    if len(input_shape) != 1:
        raise ValueError(f"graph views need a graph dataset, got inputs of shape {tuple(input_shape)}")
    if size is not None:
        raise ValueError(f"graph views take no size, got size={size}")
    return GraphView(Compose([GRAPH_TRANSFORMS[t["name"]](**{k: v for k, v in t.items() if k != "name"})
                              for t in transforms]))


register_view_kind(GRAPH_KIND, graph_view, transforms=GRAPH_TRANSFORMS)
register_preset(GRAPH_KIND, ViewPreset(
    "graphs: GraphCL's TU form, the graph as stored and a random4 view (one of node_drop, subgraph, "
    "edge_perturb, attr_mask per graph)",
    kind=GRAPH_KIND,
    views=({"count": 1, "size": None, "kind": GRAPH_KIND, "transforms": ()},
           {"count": 1, "size": None, "kind": GRAPH_KIND, "transforms": ({"name": "random4"},)}),
))
