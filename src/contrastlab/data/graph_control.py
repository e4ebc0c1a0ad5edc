"""Edge perturbations that keep a graph's network-controllability properties (the augmentation
of CGCL, Ahmad et al., ACC 2024), on undirected graphs given as symmetric arcs ``(2, 2E)``.

No code of the paper is public and only its abstract could be read, so the rule here is a
**reconstruction** (spec section 8.2 and additions H), behind the ``criterion`` switch:

- ``dl_vectors``: every node's distance-to-leader vector ``D_v = (d(l_1, v), ..., d(l_m, v))``
  is kept, for leaders drawn at random per view (the quantity behind the distance-based bound
  on strong structural controllability of the authors' group). The test is exact, not a
  sufficient condition: adding the non-edge ``(u, v)`` keeps every ``D`` iff
  ``|d(l, u) - d(l, v)| <= 1`` for every leader ``l`` (both unreachable counts as equal);
  removing the edge ``(u, v)`` keeps every ``D`` iff, for every leader for which one endpoint is
  one step farther, that endpoint has another neighbour one step closer to the leader. An
  accepted operation leaves all distances unchanged, so these tests stay valid as operations
  accumulate (the closer-neighbour counts are updated after each removal).
- ``driver_nodes``: the minimum number of driver nodes of structural controllability
  (Liu, Slotine and Barabasi 2011), ``N_D = max(n - |M*|, 1)`` with ``M*`` a maximum matching
  of the bipartite graph of out-copies and in-copies (an undirected edge gives both arcs), is
  kept; it is recomputed (Hopcroft-Karp) for every candidate operation.
- ``both``: an operation must pass both tests.

Removals come first (``floor(ratio * E)`` requested, candidates in random order), then as many
additions (drawn uniformly from the admissible non-edges of the input graph under
``dl_vectors``/``both``, from random node pairs under ``driver_nodes``); when too few
operations are admissible, fewer are applied, and the counts are returned.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

from contrastlab.data.graphs import arcs_of, random_non_edges, undirected_pairs

Criterion = Literal["dl_vectors", "driver_nodes", "both"]
CRITERIA: tuple[str, ...] = ("dl_vectors", "driver_nodes", "both")
CANDIDATES_PER_OPERATION = 10
"""Under ``driver_nodes``, at most this many candidates are tested per requested operation."""


def _adjacency(pairs: np.ndarray, num_nodes: int):
    from scipy.sparse import csr_matrix

    arcs = np.concatenate([pairs, pairs[:, ::-1]]) if len(pairs) else np.zeros((0, 2), np.int64)
    return csr_matrix((np.ones(len(arcs), dtype=np.int8), (arcs[:, 0], arcs[:, 1])),
                      shape=(num_nodes, num_nodes))


def leader_distances(edge_index: torch.Tensor, num_nodes: int, leaders: np.ndarray) -> np.ndarray:
    """``(n, m)`` int64 hop distances from each of the ``m`` ``leaders`` to every node; a node a
    leader cannot reach gets ``-1``."""
    from scipy.sparse.csgraph import shortest_path

    adjacency = _adjacency(undirected_pairs(edge_index), num_nodes)
    distances = shortest_path(adjacency, directed=False, unweighted=True, indices=np.asarray(leaders))
    distances = np.atleast_2d(distances).T
    return np.where(np.isinf(distances), -1, distances).astype(np.int64)


def driver_node_count(edge_index: torch.Tensor, num_nodes: int) -> int:
    """``N_D = max(n - |M*|, 1)``: the minimum number of driver nodes that make the graph
    structurally controllable (``M*``: a maximum matching of arcs, out-copies x in-copies)."""
    return _driver_nodes(undirected_pairs(edge_index), num_nodes)


def _driver_nodes(pairs: np.ndarray, num_nodes: int) -> int:
    from scipy.sparse.csgraph import maximum_bipartite_matching

    matched = maximum_bipartite_matching(_adjacency(pairs, num_nodes), perm_type="column")
    return max(num_nodes - int((matched >= 0).sum()), 1)


def _distance_keys(distances: np.ndarray, num_nodes: int) -> np.ndarray:
    """Distances with "unreachable" as ``num_nodes + 2``: farther than any real distance by
    more than one, and equal to itself."""
    return np.where(distances < 0, num_nodes + 2, distances)


class _DistanceGuard:
    """The exact add/remove tests of ``dl_vectors`` on ``(n, m)`` leader distances."""

    def __init__(self, distances: np.ndarray, pairs: np.ndarray, num_nodes: int) -> None:
        self.keys = _distance_keys(distances, num_nodes)
        # closer[v, l]: neighbours of v one step closer to leader l than v
        self.closer = np.zeros_like(self.keys)
        for a, b in ((pairs[:, 0], pairs[:, 1]), (pairs[:, 1], pairs[:, 0])):
            np.add.at(self.closer, b, self.keys[a] == self.keys[b] - 1)

    def admissible_additions(self, pairs: np.ndarray, num_nodes: int) -> np.ndarray:
        """``(K, 2)`` every non-edge ``u < v`` (of ``pairs``) whose addition keeps every distance."""
        u, v = np.triu_indices(num_nodes, 1)
        adjacent = np.zeros((num_nodes, num_nodes), dtype=bool)
        adjacent[pairs[:, 0], pairs[:, 1]] = True
        keep = ~adjacent[u, v]
        for column in self.keys.T:
            keep &= np.abs(column[u] - column[v]) <= 1
        return np.stack([u[keep], v[keep]], axis=1).astype(np.int64)

    def admits_removal(self, u: int, v: int) -> bool:
        """Whether removing the edge ``(u, v)`` keeps every distance."""
        return bool((self.closer[v][self._farther(v, u)] >= 2).all() and
                    (self.closer[u][self._farther(u, v)] >= 2).all())

    def book_removal(self, u: int, v: int) -> None:
        self.closer[v] -= self._farther(v, u)
        self.closer[u] -= self._farther(u, v)

    def _farther(self, node: int, neighbour: int) -> np.ndarray:
        """``(m,)`` the leaders from which ``node`` is one step farther than ``neighbour``."""
        return self.keys[neighbour] == self.keys[node] - 1


def control_perturb(edge_index: torch.Tensor, num_nodes: int, *, ratio: float = 0.1,
                    criterion: Criterion = "dl_vectors", leader_fraction: float = 0.1,
                    generator: np.random.Generator, leaders: np.ndarray | None = None,
                    ) -> tuple[torch.Tensor, dict[str, int]]:
    """Remove and add up to ``floor(ratio * E)`` undirected edges each, keeping ``criterion``.

    Args:
        edge_index: ``(2, 2E)`` int64 symmetric arcs of an undirected graph without self-loops.
        num_nodes: ``n``.
        ratio: the budget as a fraction of the ``E`` undirected edges, per operation type.
        criterion: ``dl_vectors``, ``driver_nodes`` or ``both`` (see the module docstring).
        leader_fraction: ``ceil(leader_fraction * n)`` leaders, drawn uniformly (``dl_vectors``
            and ``both``).
        generator: the view's random generator.
        leaders: ``(m,)`` the leader nodes, instead of drawing them.

    Returns:
        ``(2, 2E')`` sorted symmetric arcs, and the counts ``requested_removals``,
        ``applied_removals``, ``requested_additions``, ``applied_additions``, ``leaders``.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    pairs = undirected_pairs(edge_index)
    count = int(ratio * len(pairs))
    stats = {"requested_removals": count, "requested_additions": count, "leaders": 0}
    guard = None
    if criterion != "driver_nodes" and num_nodes:
        if leaders is None:
            leaders = generator.choice(num_nodes, size=max(1, math.ceil(leader_fraction * num_nodes)), replace=False)
        stats["leaders"] = len(leaders)
        guard = _DistanceGuard(leader_distances(edge_index, num_nodes, leaders), pairs, num_nodes)
    check_drivers = criterion != "dl_vectors"
    drivers = _driver_nodes(pairs, num_nodes) if check_drivers and num_nodes else 0

    limit = CANDIDATES_PER_OPERATION * count if check_drivers else None
    kept = np.ones(len(pairs), dtype=bool)
    removed = 0
    for index in generator.permutation(len(pairs))[:limit]:
        if removed == count:
            break
        u, v = (int(node) for node in pairs[index])
        if guard is not None and not guard.admits_removal(u, v):
            continue
        kept[index] = False
        if check_drivers and _driver_nodes(pairs[kept], num_nodes) != drivers:
            kept[index] = True
            continue
        if guard is not None:
            guard.book_removal(u, v)
        removed += 1

    if guard is not None:
        candidates = guard.admissible_additions(pairs, num_nodes)
        candidates = candidates[generator.permutation(len(candidates))]
    else:
        candidates = random_non_edges(pairs, num_nodes, CANDIDATES_PER_OPERATION * count, generator)
    current, added = pairs[kept], 0
    for candidate in candidates[:limit]:
        if added == count:
            break
        trial = np.concatenate([current, candidate[None]])
        if check_drivers and _driver_nodes(trial, num_nodes) != drivers:
            continue
        current, added = trial, added + 1
    stats.update(applied_removals=removed, applied_additions=added)
    return arcs_of(current), stats
