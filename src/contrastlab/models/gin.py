"""GIN (Xu et al., ICLR 2019), the graph encoder of GraphCL's TU setting, on torch_geometric's
``GINConv`` (the ``graph`` extra: ``pip install 'contrastlab[graph]'``).

Layer ``l``: ``h <- BN(ReLU(GINConv_l(h)))`` with the convolution's MLP ``Linear -> ReLU ->
Linear`` and ``eps = 0`` fixed; the graph embedding concatenates the sum over each graph's nodes
of every layer's output: ``layers * hidden`` features (96 with GraphCL's 3 x 32).
"""

from __future__ import annotations

import torch
from torch import nn

from contrastlab.models.registry import BACKBONES, INPUT_KINDS


def gin_conv(in_features: int, out_features: int) -> nn.Module:
    try:
        from torch_geometric.nn import GINConv
    except ImportError as err:
        raise ImportError("the 'gin' backbone needs torch_geometric: pip install 'contrastlab[graph]' "
                          f"({err})") from None
    mlp = nn.Sequential(nn.Linear(in_features, out_features), nn.ReLU(), nn.Linear(out_features, out_features))
    return GINConv(mlp, eps=0.0, train_eps=False)


class GIN(nn.Module):
    """``GraphBatch`` (``x: (N, F)``, ``edge_index: (2, A)``, ``batch: (N,)``, ``num_graphs``
    ``B``) -> ``(B, layers * hidden)`` graph embeddings."""

    def __init__(self, in_features: int, hidden: int = 32, layers: int = 3) -> None:
        super().__init__()
        widths = [in_features] + [hidden] * layers
        self.convs = nn.ModuleList(gin_conv(a, b) for a, b in zip(widths, widths[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm1d(hidden) for _ in range(layers))
        self.out_dim = hidden * layers

    def forward(self, graphs) -> torch.Tensor:  # noqa: ANN001 (a GraphBatch or a torch_geometric Batch)
        h, readouts = graphs.x.float(), []
        for conv, norm in zip(self.convs, self.norms):
            h = norm(torch.relu(conv(h, graphs.edge_index)))
            pooled = h.new_zeros(graphs.num_graphs, h.shape[1]).index_add_(0, graphs.batch, h)
            readouts.append(pooled)
        return torch.cat(readouts, dim=1)


@BACKBONES.register("gin", "GIN graph encoder (3 layers x 32, BN, sum pooling of every layer), for graph data")
def gin(input_shape: tuple[int], hidden: int = 32, layers: int = 3) -> GIN:
    """``input_shape``: ``(F,)`` node features; ``hidden``: the width of each layer; ``layers``."""
    for name, value in (("hidden", hidden), ("layers", layers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"backbone 'gin': {name} must be an integer >= 1, got {value!r}")
    return GIN(input_shape[0], hidden, layers)


INPUT_KINDS["gin"] = "graphs"
