"""Controllability-preserving edge perturbation (CGCL's augmentation, reconstructed): every
accepted operation keeps the distance-to-leader vectors and/or the driver-node count, checked
against networkx (BFS distances, Hopcroft-Karp) on many random graphs, and an operation that
would change them is refused."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from contrastlab.data.augment import TransformArgumentError
from contrastlab.data.graph_augment import ControlEdges
from contrastlab.data.graph_control import _DistanceGuard, control_perturb, driver_node_count, leader_distances
from contrastlab.data.graphs import Graph, arcs_of, check_graph, undirected_pairs


def as_networkx(pairs, n: int) -> nx.Graph:
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(map(tuple, np.asarray(pairs).tolist()))
    return graph


def reference_distances(graph: nx.Graph, leaders) -> np.ndarray:
    """``(n, m)`` BFS hop distances, -1 when unreachable."""
    out = np.full((graph.number_of_nodes(), len(leaders)), -1)
    for column, leader in enumerate(leaders):
        for node, distance in nx.single_source_shortest_path_length(graph, int(leader)).items():
            out[node, column] = distance
    return out


def reference_driver_nodes(graph: nx.Graph) -> int:
    """``max(n - |M*|, 1)`` with ``M*`` a Hopcroft-Karp matching of out-copies x in-copies."""
    bipartite = nx.Graph()
    outs = [("out", v) for v in graph.nodes]
    bipartite.add_nodes_from(outs)
    bipartite.add_nodes_from(("in", v) for v in graph.nodes)
    bipartite.add_edges_from((("out", u), ("in", v)) for a, b in graph.edges for u, v in ((a, b), (b, a)))
    matching = nx.algorithms.bipartite.hopcroft_karp_matching(bipartite, top_nodes=outs)
    return max(graph.number_of_nodes() - len(matching) // 2, 1)


@st.composite
def random_graphs(draw):
    n = draw(st.integers(2, 14))
    density = draw(st.floats(0.05, 0.9))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    u, v = np.triu_indices(n, 1)
    keep = rng.random(len(u)) < density
    pairs = np.stack([u[keep], v[keep]], axis=1).astype(np.int64)
    leaders = rng.choice(n, size=int(rng.integers(1, n + 1)), replace=False)
    return n, pairs, leaders, seed


@settings(max_examples=150, deadline=None)
@given(random_graphs(), st.sampled_from(["dl_vectors", "driver_nodes", "both"]), st.sampled_from([0.1, 0.3, 1.0]))
def test_every_accepted_perturbation_keeps_the_criterion(case, criterion, ratio):
    n, pairs, leaders, seed = case
    before = as_networkx(pairs, n)
    edge_index, stats = control_perturb(arcs_of(pairs), n, ratio=ratio, criterion=criterion,
                                        generator=np.random.default_rng(seed), leaders=leaders)
    check_graph(Graph(torch.zeros(n, 1), edge_index), "perturbed")
    after = as_networkx(undirected_pairs(edge_index), n)
    assert stats["applied_removals"] <= stats["requested_removals"] == int(ratio * len(pairs))
    assert stats["applied_additions"] <= stats["requested_additions"]
    assert len(set(before.edges) - set(after.edges)) == stats["applied_removals"]
    assert len(set(after.edges) - set(before.edges)) == stats["applied_additions"]
    if criterion != "driver_nodes":
        np.testing.assert_array_equal(reference_distances(after, leaders), reference_distances(before, leaders))
    if criterion != "dl_vectors":
        assert reference_driver_nodes(after) == reference_driver_nodes(before)


@settings(max_examples=120, deadline=None)
@given(random_graphs())
def test_the_distance_tests_accept_exactly_the_operations_that_keep_every_distance(case):
    """Brute force over every single addition and removal: refused iff some DL vector changes."""
    n, pairs, leaders, _ = case
    graph = as_networkx(pairs, n)
    distances = reference_distances(graph, leaders)
    np.testing.assert_array_equal(leader_distances(arcs_of(pairs), n, leaders), distances)
    guard = _DistanceGuard(distances, pairs, n)
    admitted = set(map(tuple, guard.admissible_additions(pairs, n).tolist()))
    for u in range(n):
        for v in range(u + 1, n):
            if graph.has_edge(u, v):
                graph.remove_edge(u, v)
                keeps = np.array_equal(reference_distances(graph, leaders), distances)
                graph.add_edge(u, v)
                assert guard.admits_removal(u, v) == keeps, (u, v)
            else:
                graph.add_edge(u, v)
                keeps = np.array_equal(reference_distances(graph, leaders), distances)
                graph.remove_edge(u, v)
                assert ((u, v) in admitted) == keeps, (u, v)


@settings(max_examples=80, deadline=None)
@given(random_graphs())
def test_driver_node_count_matches_networkx(case):
    n, pairs, _, _ = case
    assert driver_node_count(arcs_of(pairs), n) == reference_driver_nodes(as_networkx(pairs, n))


def test_a_perturbation_that_would_break_the_criterion_is_refused():
    path = arcs_of(np.array([[0, 1], [1, 2]]))  # 0 - 1 - 2: removing either edge cuts a node off
    _, from_end = control_perturb(path, 3, ratio=1.0, criterion="dl_vectors", generator=np.random.default_rng(0),
                                  leaders=np.array([0]))
    # distances (0, 1, 2) from node 0: the one non-edge (0, 2) would shorten d(0, 2)
    assert from_end["requested_removals"] == 2 and from_end["applied_removals"] == 0
    assert from_end["applied_additions"] == 0
    edge_index, from_middle = control_perturb(path, 3, ratio=1.0, criterion="dl_vectors",
                                              generator=np.random.default_rng(0), leaders=np.array([1]))
    # distances (1, 0, 1) from node 1: (0, 2) joins two nodes at equal distance
    assert from_middle["applied_removals"] == 0 and from_middle["applied_additions"] == 1
    assert undirected_pairs(edge_index).tolist() == [[0, 1], [0, 2], [1, 2]]


def test_driver_node_guard_refuses_removals_that_change_the_matching():
    one_edge = arcs_of(np.array([[0, 1]]))  # N_D = 1; without the edge N_D = 2
    edge_index, stats = control_perturb(one_edge, 2, ratio=1.0, criterion="driver_nodes",
                                        generator=np.random.default_rng(0))
    assert stats["applied_removals"] == 0 and torch.equal(edge_index, one_edge)


def test_control_edges_augment_reports_its_operations_and_checks_its_arguments():
    rng = np.random.default_rng(3)
    pairs = np.array([[i, j] for i in range(8) for j in range(i + 1, 8) if (i + j) % 3])
    graph = Graph(torch.randn(8, 2), arcs_of(pairs))
    view, requested, applied = ControlEdges(ratio=0.2, criterion="both")(graph, rng)
    assert requested == 2 * int(0.2 * len(pairs)) and 0 <= applied <= requested
    assert torch.equal(view.x, graph.x)
    with pytest.raises(TransformArgumentError, match="criterion"):
        ControlEdges(criterion="rank")
    with pytest.raises(TransformArgumentError, match="leader_fraction"):
        ControlEdges(leader_fraction=0.0)
