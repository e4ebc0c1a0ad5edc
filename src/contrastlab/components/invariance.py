"""How much a representation moves when the transformation parameters move (InvCLR's penalty).

A view is ``v = t(x, alpha)`` with per-sample continuous parameters ``alpha`` (colour-jitter
factors, Spirograph's nuisance). For a direction ``delta`` (a fresh draw minus the current
parameters) the directional derivative of the L2-normalised representation,
``d/ds h^(t(x, alpha + s delta))`` at ``s = 0``, is computed exactly with forward-mode
autodiff: one forward pass carrying tangents, instead of the reverse-mode gradient with
``create_graph`` of the reference code. Reverse-mode gradients of the result w.r.t. the
network's weights (the penalty's backward) flow through the tangent computation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

Projection = Literal["rademacher", "none"]


def rademacher(shape: torch.Size, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Random signs (+1/-1) of ``shape``, drawn on the CPU with ``generator``, as ``like``'s dtype/device."""
    return torch.randint(0, 2, shape, generator=generator).to(like) * 2 - 1


def lookup(params: Mapping[str, Any], path: str) -> torch.Tensor:
    """``params["jitter"]["hue"]`` for the path ``"jitter.hue"``; ``KeyError`` names the path."""
    value: Any = params
    for key in path.split("."):
        if not isinstance(value, Mapping) or key not in value:
            raise KeyError(path)
        value = value[key]
    if not torch.is_tensor(value):
        raise KeyError(path)
    return value


def replace(params: Mapping[str, Any], values: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """A copy of the nested ``params`` with the tensors at the dotted ``values`` paths swapped
    in (the other entries are shared, not copied)."""
    out = dict(params)
    nested: dict[str, dict[str, torch.Tensor]] = {}
    for path, value in values.items():
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            out[head] = value
    for head, inner in nested.items():
        out[head] = replace(params[head], inner)
    return out


def first_rows(tree: Any, n: int) -> Any:
    """Every tensor of a nested dict cut to its first ``n`` rows."""
    if isinstance(tree, Mapping):
        return {key: first_rows(value, n) for key, value in tree.items()}
    return tree[:n]


def directional_sensitivity(
    encode: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    alpha: Mapping[str, torch.Tensor],
    delta: Mapping[str, torch.Tensor],
    *,
    normalize: bool = True,
    projection: Projection = "rademacher",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Squared directional derivative of each sample's representation along ``delta``.

    Args:
        encode: maps ``{path: (B, ...) parameters}`` to representations ``(B, D)``.
        alpha: the parameters, ``{path: (B, ...)}``; delta: the direction, same shapes.
        normalize: differentiate ``h / ||h||`` (InvCLR's default) rather than ``h``.
        projection: ``"rademacher"``: ``(eps_i . J_i delta_i)^2`` with a fresh random sign
            vector ``eps_i`` per sample (drawn on the CPU with ``generator``): the quantity the
            paper's estimator squares. ``"none"``: ``||J_i delta_i||^2``, its expectation over
            ``eps`` (lower variance).
    Returns:
        ``(B,)``, differentiable w.r.t. whatever ``encode`` closes over (the weights).
    """
    with fwAD.dual_level():
        duals = {path: fwAD.make_dual(alpha[path], delta[path].to(alpha[path])) for path in alpha}
        h = encode(duals)
        if normalize:
            h = F.normalize(h, dim=1)
        primal, tangent = fwAD.unpack_dual(h)
    if tangent is None:  # the representation does not depend on these parameters at all
        return primal.new_zeros(primal.shape[0])
    if projection == "rademacher":
        return (rademacher(tangent.shape, generator, tangent) * tangent).sum(dim=1).square()
    if projection == "none":
        return tangent.square().sum(dim=1)
    raise ValueError(f"projection must be 'rademacher' or 'none', got {projection!r}")


def projected_sensitivity_reverse(
    encode: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    alpha: Mapping[str, torch.Tensor],
    deltas: Sequence[Mapping[str, torch.Tensor]],
    *,
    normalize: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The reference code's estimator: ``G_i = d(eps_i . h^_i)/d alpha_i`` by reverse mode (one
    gradient with ``create_graph``, so the result is differentiable w.r.t. the weights), then
    ``mean_k (G_i . delta_ik)^2`` over all the directions ``deltas`` at once.

    Equals :func:`directional_sensitivity` with ``projection="rademacher"`` for one direction
    when the samples do not interact (with BatchNorm in training mode, ``G_i`` also collects the
    other samples' dependence on ``alpha_i``, as in the reference). Returns ``(B,)``.
    """
    leaves = {path: value.detach().clone().requires_grad_(True) for path, value in alpha.items()}
    h = encode(leaves)
    if normalize:
        h = F.normalize(h, dim=1)
    projected = (rademacher(h.shape, generator, h) * h).sum()
    grads = torch.autograd.grad(projected, list(leaves.values()), create_graph=True, allow_unused=True)
    scores = []
    for delta in deltas:
        score = h.new_zeros(h.shape[0])
        for (path, value), grad in zip(leaves.items(), grads):
            if grad is not None:
                score = score + (grad * delta[path].to(grad)).reshape(len(score), -1).sum(dim=1)
        scores.append(score.square())
    return torch.stack(scores).mean(dim=0)
