"""Graphs as a data kind: the TU loader, the batch layout, GraphCL's augmentations, GIN, the
one-direction loss, the SVM protocol and a GraphCL run through the trainer."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from contrastlab.data.base import DataError
from contrastlab.data.graph_augment import GRAPH_TRANSFORMS, AttrMask, EdgePerturb, NodeDrop, Subgraph
from contrastlab.data.graphs import Graph, check_graph, collate_graphs, undirected
from contrastlab.data.tu import load, read_tu
from contrastlab.eval.svm import svm_cv_accuracy
from contrastlab.losses import cross_view_pairs, decoupled_info_nce

TU = Path(__file__).resolve().parents[2] / "shared" / "data" / "tu"
needs_tu = pytest.mark.skipif(not (TU / "MUTAG").is_dir(), reason="../shared/data/tu not present")


def write_tu(folder: Path, name: str = "TOY", arcs=None, indicator=None, labels=None, node_labels=None) -> Path:
    """Two graphs: a triangle (nodes 1-3, class 5) and an edge (nodes 4-5, class -1)."""
    folder.mkdir(parents=True, exist_ok=True)
    arcs = arcs if arcs is not None else [(1, 2), (2, 1), (2, 3), (3, 2), (1, 3), (3, 1), (4, 5), (5, 4), (4, 5)]
    indicator = indicator if indicator is not None else [1, 1, 1, 2, 2]
    labels = labels if labels is not None else [5, -1]
    (folder / f"{name}_A.txt").write_text("\n".join(f"{u}, {v}" for u, v in arcs) + "\n")
    (folder / f"{name}_graph_indicator.txt").write_text("\n".join(map(str, indicator)) + "\n")
    (folder / f"{name}_graph_labels.txt").write_text("\n".join(map(str, labels)) + "\n")
    if node_labels is not None:
        (folder / f"{name}_node_labels.txt").write_text("\n".join(map(str, node_labels)) + "\n")
    return folder


# ------------------------------------------------------------------------------ TU loader
def test_tu_loader_reads_graphs_labels_and_features(tmp_path):
    data = read_tu(write_tu(tmp_path / "raw", node_labels=[0, 3, 0, 3, 7]).parent)  # found in raw/
    assert len(data) == 2 and data.classes == ("-1", "5")
    assert data.labels.tolist() == [1, 0]  # sorted stored values -> 0..C-1
    triangle, edge = data.graphs
    assert triangle.x.tolist() == [[1, 0, 0], [0, 1, 0], [1, 0, 0]]  # one-hot over {0, 3, 7}
    assert edge.edge_index.tolist() == [[0, 1], [1, 0]]  # the duplicated arc removed, renumbered
    assert sorted(zip(*triangle.edge_index.tolist())) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    assert read_tu(tmp_path / "raw", "constant").graphs[0].x.tolist() == [[1.0]] * 3
    assert read_tu(tmp_path / "raw", "degree").graphs[1].x.argmax(1).tolist() == [1, 1]
    assert read_tu(tmp_path / "raw").graphs[0].x.shape == (3, 3)  # auto: node labels when present


@pytest.mark.parametrize("change, message", [
    ({"indicator": [1, 2, 1, 2, 2]}, "sorted"),
    ({"indicator": [1, 1, 1, 3, 3]}, "skip no graph"),
    ({"arcs": [(1, 2), (2, 1), (3, 4), (4, 3)]}, "joins graph 1 and graph 2"),
    ({"labels": [1, 2, 3]}, "3 labels but"),
    ({"arcs": [(1, 9), (9, 1)]}, "node ids must be in 1..5"),
])
def test_tu_loader_refuses_bad_files_naming_them(tmp_path, change, message):
    write_tu(tmp_path, **change)
    with pytest.raises(DataError, match=message):
        read_tu(tmp_path)


def test_tu_loader_names_missing_and_malformed_files(tmp_path):
    write_tu(tmp_path)
    (tmp_path / "TOY_graph_labels.txt").unlink()
    with pytest.raises(DataError, match="TOY_graph_labels.txt: missing"):
        read_tu(tmp_path)
    write_tu(tmp_path)
    (tmp_path / "TOY_A.txt").write_text("1, 2\n2, x\n")
    with pytest.raises(DataError, match="TOY_A.txt, line 2: expected integers"):
        read_tu(tmp_path)
    with pytest.raises(DataError, match="no TU dataset"):
        read_tu(tmp_path / "nowhere")
    with pytest.raises(DataError, match="one split, 'all'"):
        load("train", root=str(tmp_path))


@needs_tu
def test_tu_loader_matches_torch_geometric(tmp_path):
    from torch_geometric.datasets import TUDataset

    shutil.copytree(TU / "MUTAG", tmp_path / "MUTAG" / "raw")
    reference = TUDataset(str(tmp_path), "MUTAG")
    ours = read_tu(TU / "MUTAG")
    assert len(ours) == len(reference) == 188
    for i in (0, 17, 187):
        ref = reference[i]
        assert torch.equal(ours.graphs[i].x, ref.x)
        assert sorted(zip(*ours.graphs[i].edge_index.tolist())) == sorted(zip(*ref.edge_index.tolist()))
    assert ours.labels.tolist() == reference.y.tolist()


# ------------------------------------------------------------------------- batches, GIN
def test_collate_offsets_arcs_and_records_graph_of_each_node():
    a = Graph(torch.ones(2, 1), torch.tensor([[0, 1], [1, 0]]))
    b = Graph(torch.zeros(3, 1), torch.tensor([[1, 2], [2, 1]]))
    batch = collate_graphs([a, b])
    assert batch.num_graphs == 2 and batch.batch.tolist() == [0, 0, 1, 1, 1]
    assert batch.edge_index.tolist() == [[0, 1, 3, 4], [1, 0, 4, 3]]


def test_gin_equals_a_hand_written_sum_aggregation():
    from contrastlab.models import build_backbone

    torch.manual_seed(0)
    gin = build_backbone("gin", (4,), hidden=8, layers=2).eval()
    graphs = [random_graph(np.random.default_rng(s), 6, 4) for s in range(3)]
    batch = collate_graphs(graphs)
    h, readouts = batch.x, []
    for conv, norm in zip(gin.convs, gin.norms):
        summed = h.clone().index_add_(0, batch.edge_index[1], h[batch.edge_index[0]])  # (1 + eps) h + sum of neighbours
        h = norm(torch.relu(conv.nn(summed)))
        readouts.append(torch.stack([h[batch.batch == g].sum(0) for g in range(3)]))
    assert torch.allclose(gin(batch), torch.cat(readouts, 1), atol=1e-5)
    assert gin(batch).shape == (3, 16)


def test_image_core_does_not_import_torch_geometric():
    code = ("import sys, contrastlab.cli, contrastlab.engine.trainer, contrastlab.data, contrastlab.models;"
            "print('torch_geometric' in sys.modules, 'networkx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# ---------------------------------------------------------------------- augmentations
def random_graph(rng: np.random.Generator, n: int, width: int = 3, p: float = 0.3) -> Graph:
    pairs = np.array([(u, v) for u in range(n) for v in range(u + 1, n) if rng.random() < p], dtype=np.int64)
    arcs = torch.from_numpy(pairs.T.copy()) if len(pairs) else torch.zeros(2, 0, dtype=torch.int64)
    return Graph(torch.from_numpy(rng.normal(size=(n, width))).float(),
                 undirected(arcs) if arcs.numel() else arcs)


PAPER_FORMS = [name for name in GRAPH_TRANSFORMS if name != "control_edges"]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 30), name=st.sampled_from(PAPER_FORMS))
def test_every_graphcl_augmentation_keeps_the_graph_valid(seed, n, name):
    graph = random_graph(np.random.default_rng(seed), n)
    view, requested, applied = GRAPH_TRANSFORMS[name]()(graph, np.random.default_rng(seed + 1))
    check_graph(view, name)  # features (n', F), arcs in range, no self-loop, symmetric
    assert view.x.shape[1] == graph.x.shape[1] and 0 <= applied <= max(requested, applied)
    again, _, _ = GRAPH_TRANSFORMS[name]()(graph, np.random.default_rng(seed + 1))
    assert torch.equal(again.x, view.x) and torch.equal(again.edge_index, view.edge_index)  # seeded


def edges(graph: Graph) -> set[tuple[int, int]]:
    return {(u, v) for u, v in graph.edge_index.t().tolist() if u < v}


def test_node_drop_and_attr_mask_budgets():
    graph = random_graph(np.random.default_rng(0), 20)
    view, requested, applied = NodeDrop(0.1)(graph, np.random.default_rng(1))
    assert view.num_nodes == 18 and requested == applied == 2
    masked, _, count = AttrMask(0.25)(graph, np.random.default_rng(2))
    changed = (masked.x != graph.x).any(1)
    assert count == 5 and int(changed.sum()) == 5 and torch.equal(masked.edge_index, graph.edge_index)


def test_edge_perturb_removes_and_adds_in_the_paper_form_and_drops_arcs_in_the_legacy_form():
    graph = random_graph(np.random.default_rng(3), 25, p=0.2)
    e = len(edges(graph))
    view, requested, applied = EdgePerturb(0.2)(graph, np.random.default_rng(4))
    removed, added = edges(graph) - edges(view), edges(view) - edges(graph)
    assert len(removed) == len(added) == int(0.2 * e) and requested == applied == 2 * int(0.2 * e)
    legacy, _, dropped = EdgePerturb(0.2, legacy=True)(graph, np.random.default_rng(4))
    arcs = graph.edge_index.shape[1]
    assert legacy.edge_index.shape[1] == arcs - int(0.2 * arcs) == arcs - dropped
    assert set(map(tuple, legacy.edge_index.t().tolist())) <= set(map(tuple, graph.edge_index.t().tolist()))


def test_subgraph_grows_a_connected_subgraph_and_the_legacy_form_stays_by_the_seed():
    path = Graph(torch.arange(10.0)[:, None], undirected(torch.tensor([list(range(9)), list(range(1, 10))])))
    view, target, kept = Subgraph(0.5)(path, np.random.default_rng(0))
    assert target == kept == 5
    values = sorted(view.x[:, 0].long().tolist())
    assert values == list(range(values[0], values[0] + 5))  # consecutive on the path: connected
    legacy, _, kept = Subgraph(0.5, legacy=True)(path, np.random.default_rng(0))
    assert kept <= 3  # the seed and its (at most two) neighbours


# ------------------------------------------------------------------ loss and evaluation
def test_cross_view_loss_equals_a_loop_reference():
    torch.manual_seed(0)
    u, v, t = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64), 0.2
    un, vn = torch.nn.functional.normalize(u, dim=1), torch.nn.functional.normalize(v, dim=1)
    terms = []
    for i in range(6):
        others = sum(torch.exp(un[i] @ vn[j] / t) for j in range(6) if j != i)
        terms.append(-(un[i] @ vn[i]) / t + torch.log(others))
    assert torch.allclose(decoupled_info_nce(*cross_view_pairs(u, v), t), torch.stack(terms).mean())


def test_svm_protocol_separates_blobs_and_is_at_chance_on_random_labels():
    rng = np.random.default_rng(0)
    labels = torch.tensor([0] * 40 + [1] * 40)
    blobs = torch.from_numpy(rng.normal(size=(80, 4))) + 6.0 * labels[:, None]
    assert svm_cv_accuracy(blobs, labels, seed=0)["accuracy"] == 100.0
    noise = svm_cv_accuracy(torch.from_numpy(rng.normal(size=(80, 4))), labels[torch.randperm(80)], seed=0)
    assert 25.0 < noise["accuracy"] < 75.0 and len(noise["fold_accuracies"]) == 10
    with pytest.raises(ValueError, match="fewer than 10 folds"):
        svm_cv_accuracy(blobs[:45], labels[:45])


# ------------------------------------------------------------------------- end to end
@needs_tu
@pytest.mark.slow
def test_graphcl_trains_on_mutag_through_the_trainer_and_is_cross_validated(tmp_path):
    from contrastlab.engine.distributed import init_distributed
    from contrastlab.engine.evaluation import evaluate_run
    from contrastlab.engine.trainer import Trainer
    from contrastlab.recipes import load_config

    recipe = Path(__file__).resolve().parents[1] / "configs" / "graphcl-mutag-gin.yaml"
    cfg = load_config(recipe, [f"data.root={TU / 'MUTAG'}", "train.epochs=2", "train.progress=false",
                               "eval.svm_folds=3", "eval.svm_inner_folds=2", "eval.plots=false"])
    trainer = Trainer(cfg, tmp_path, init_distributed("cpu"))
    assert trainer.steps_per_epoch == 2  # drop_last=false: 128 + 60 graphs
    trainer.fit()
    results = evaluate_run(tmp_path, cfg, echo=False)
    assert 50.0 < results["trained"]["svm"]["accuracy"] <= 100.0
    assert results["trained"]["feature_dim"] == 96
    assert "view1_applied" in (tmp_path / "metrics.jsonl").read_text()
