"""Meta-learning core shared by MetAug and MetaMask: a differentiable virtual SGD step of an
encoder and the gradient, w.r.t. "outer" parameters (augmentation generators, a dimensional
mask), of an outer objective evaluated at the virtual weights.

With encoder weights ``theta``, outer parameters ``m``, an inner loss ``L_in(theta; m)`` and an
outer loss ``L_out(theta; m)``, one virtual step is

    g = dL_in/dtheta (theta; m),    theta+ = theta - lr * (g + wd * theta + momentum * buf)

(``buf``: the real optimiser's momentum buffer, so the step mimics its next update), and the
meta-gradient is ``dF/dm`` for the unrolled objective ``F(m) = L_out(theta+(m); m)``:

    dF/dm = d_m - lr * (d^2 L_in / dm dtheta)(theta; m) . v,
    d_m = dL_out/dm (theta+; m),    v = dL_out/dtheta (theta+; m).

Only ``g`` depends on ``m`` in the step (weight decay and buffer terms do not), so the formula
holds with momentum and weight decay. ``meta_gradient`` offers three orders: ``"second"``
(exact), ``"first"`` (``d_m`` only) and ``"finite_difference"`` (DARTS: the mixed term by central
differences of ``dL_in/dm`` at ``theta +- r v``, ``r = fd_radius / ||v||``). As in DARTS the
mixed derivative is that of the inner loss; MetaMask's reference uses its contrastive loss as
both inner and outer loss, which is the special case ``inner_loss = outer_loss``.

The exact mixed term is computed one of two ways (``second_order``):

* ``"jvp"`` (default): by symmetry of mixed partials it is ``d/dm <g(m), v> =
  d/dm [d/de L_in(theta + e v; m)]``: one forward-mode pass (``torch.autograd.forward_ad``) with
  tangent ``v`` on the weights gives the directional derivative, whose reverse-mode gradient
  w.r.t. ``m`` is the term. The weights enter as constants, so nothing upstream of ``m`` is
  differentiated in reverse mode: where ``m`` acts after an encoder (a mask on its output,
  generators on its projections) the encoder costs one forward with tangents and no backward,
  and the real step's gradient ``g`` needs no ``create_graph``.
* ``"unrolled"``: autograd through the virtual step (MAML): ``g`` with ``create_graph=True`` and a
  double backward through the whole encoder. Same value; the reference implementation.

Parameter dictionaries map names (as in ``module.named_parameters()``) to tensors; evaluate a
module at such a dictionary with :func:`functional_forward`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, get_args

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn

from contrastlab.core.optim import LARS, lars_trust_ratio
from contrastlab.models.batchnorm import batch_statistics_only

MetaOrder = Literal["second", "first", "finite_difference"]
SecondOrder = Literal["jvp", "unrolled"]
Params = Mapping[str, Tensor]
Grads = Mapping[str, Tensor | None]
LossOf = Callable[[dict[str, Tensor]], Tensor]


def functional_forward(module: nn.Module, params: Params, *args: Any, **kwargs: Any) -> Any:
    """``module(*args, **kwargs)`` with the tensors of ``params`` (names as in
    ``module.named_parameters()`` / ``named_buffers()``) in place of the module's own; the
    tensors not in ``params`` are the module's own. BatchNorm layers in training mode
    normalise with batch statistics and leave their running statistics untouched, so a
    virtual forward never counts as a training batch. Autograd flows into ``params``. When
    the parameters or inputs carry forward-mode tangents and some of them require grad (the
    tangent may be back-propagated), BatchNorm is computed from elementary ops, as
    :func:`batch_statistics_only` explains; a pure forward-mode pass keeps the native kernel.
    """
    known = {name for name, _ in module.named_parameters()} | {name for name, _ in module.named_buffers()}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"params has names that {type(module).__name__} does not have: {unknown}")
    tensors = [t for t in (*params.values(), *args, *kwargs.values()) if isinstance(t, Tensor)]
    dual = any(fwAD.unpack_dual(t).tangent is not None for t in tensors)
    reverse_through_tangent = dual and any(t.requires_grad for t in tensors)
    with batch_statistics_only(module, composite=reverse_through_tangent):
        return torch.func.functional_call(module, dict(params), args, kwargs)


def forward_at(module: nn.Module, prefix: str, params: Params | None, *args: Any) -> Any:
    """``module(*args)`` at the tensors of ``params`` named ``prefix + name`` (names as in the
    owning module's ``named_parameters()``, e.g. ``"backbone."``), by :func:`functional_forward`;
    a plain ``module(*args)`` when ``params`` is None (a real forward)."""
    if params is None:
        return module(*args)
    return functional_forward(module, {n[len(prefix):]: t for n, t in params.items() if n.startswith(prefix)}, *args)


def _per_parameter(setting: str, value: float | Mapping[str, float], name: str) -> float:
    if not isinstance(value, Mapping):
        return value
    if name not in value:
        raise ValueError(f"{setting} has no value for parameter {name!r}")
    return value[name]


@dataclass(frozen=True, eq=False)
class SGDStep:
    """One heavy-ball step (no dampening/Nesterov), the update rule of ``torch.optim.SGD`` and,
    with ``scale``, of :class:`~contrastlab.core.optim.LARS`:

        d = scale * (g + weight_decay * theta);  buf = momentum * buf_prev + d;  theta+ = theta - lr * buf

    ``momentum``, ``weight_decay`` and ``scale`` are one value or one per parameter name
    (``scale`` defaults to 1: LARS' trust ratios, held fixed); ``momentum_buffers`` maps names to
    ``buf_prev`` (same shape as the parameter); a name without a buffer steps with ``buf = d``,
    as the optimiser's first step does. Build it from a real optimiser with :meth:`like`.
    """

    lr: float
    momentum: float | Mapping[str, float] = 0.0
    weight_decay: float | Mapping[str, float] = 0.0
    momentum_buffers: Mapping[str, Tensor] = field(default_factory=dict)
    scale: Mapping[str, Tensor | float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"SGDStep.lr must be > 0, got {self.lr}")
        for setting in ("momentum", "weight_decay"):
            value = getattr(self, setting)
            values = value.values() if isinstance(value, Mapping) else [value]
            if any(not v >= 0 for v in values):
                raise ValueError(f"SGDStep.{setting} must be >= 0, got {value}")

    @classmethod
    def like(cls, optimizer: torch.optim.Optimizer, params: Params, grads: Grads | None = None) -> SGDStep:
        """The step that ``optimizer`` would take next on ``params``: its current lr, each
        parameter's group momentum and weight decay, and its momentum buffers (the optimiser's
        own tensors, not copies: use the result before the optimiser steps again; its state is
        not modified). ``torch.optim.SGD``: exact. ``LARS``: exact for the gradient ``grads``
        (required) the trust ratios are computed from; the virtual step holds those ratios fixed,
        so its derivative w.r.t. the gradient is that of a step with per-tensor learning rates.
        """
        if not isinstance(optimizer, (torch.optim.SGD, LARS)):
            raise ValueError(f"SGDStep.like needs a torch.optim.SGD or LARS, got {type(optimizer).__name__}")
        if isinstance(optimizer, LARS) and grads is None:
            raise ValueError("SGDStep.like(LARS) needs the gradient its trust ratios are computed from")
        group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
        lrs: dict[str, float] = {}
        momentum: dict[str, float] = {}
        weight_decay: dict[str, float] = {}
        buffers: dict[str, Tensor] = {}
        scale: dict[str, Tensor] = {}
        for name, param in params.items():
            group = group_of.get(id(param))
            if group is None:
                raise ValueError(f"parameter {name!r} is not in the optimizer's param_groups")
            for unsupported in ("nesterov", "maximize", "dampening"):
                if group.get(unsupported):
                    raise ValueError(f"the virtual SGD step does not support {unsupported}="
                                     f"{group[unsupported]} (param group of {name!r})")
            lrs[name] = float(group["lr"])
            momentum[name] = group["momentum"]
            weight_decay[name] = group["weight_decay"]
            buffer = optimizer.state.get(param, {}).get("momentum_buffer")
            if buffer is not None:
                buffers[name] = buffer
            grad = None if grads is None else grads.get(name)
            if isinstance(optimizer, LARS) and grad is not None:
                if group["lars_adapt"]:
                    scale[name] = lars_trust_ratio(param.detach(), grad.detach(), group)
                else:  # a plain momentum step on g: no adaptation, no decay
                    weight_decay[name] = 0.0
        if not lrs:
            raise ValueError("params is empty")
        if len(set(lrs.values())) > 1:
            raise ValueError(f"the param groups of these parameters have different learning rates {lrs}; "
                             "the virtual step takes one lr")
        return cls(next(iter(lrs.values())), momentum, weight_decay, buffers, scale)

    def virtual_step(self, params: Params, grads: Grads) -> dict[str, Tensor]:
        """``theta+`` for every name of ``params`` (a new dict, tensors of the same shapes). A
        parameter whose gradient is missing or ``None`` is passed through unchanged. No
        in-place operation: differentiable w.r.t. ``params`` and ``grads``, and neither the
        inputs nor the momentum buffers are modified.
        """
        unknown = sorted(set(grads) - set(params))
        if unknown:
            raise ValueError(f"grads has names that are not in params: {unknown}")
        stepped = {}
        for name, theta in params.items():
            grad = grads.get(name)
            if grad is None:
                stepped[name] = theta
                continue
            direction = grad
            weight_decay = _per_parameter("weight_decay", self.weight_decay, name)
            if weight_decay:
                direction = direction + weight_decay * theta
            if name in self.scale:
                direction = direction * self.scale[name]
            buffer = self.momentum_buffers.get(name)
            momentum = _per_parameter("momentum", self.momentum, name)
            if buffer is not None and momentum:
                direction = direction + momentum * buffer
            stepped[name] = theta - self.lr * direction
        return stepped


def inner_gradients(loss: Tensor, params: Params, *, create_graph: bool) -> dict[str, Tensor | None]:
    """``d loss / d params`` by name (``None`` where ``loss`` does not depend on a parameter).
    With ``create_graph=True`` the gradients stay differentiable (w.r.t. the outer parameters
    too), as :func:`meta_gradient` with ``order="second"`` needs; ``.detach()`` them for a real
    optimiser step. No ``.grad`` attribute is written.
    """
    if loss.numel() != 1:
        raise ValueError(f"inner_loss must return a scalar, got shape {tuple(loss.shape)}")
    frozen = [name for name, p in params.items() if not p.requires_grad]
    if frozen:
        raise ValueError(f"inner params {frozen} do not require grad; cannot differentiate the inner loss")
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph, allow_unused=True)
    return dict(zip(params, grads))


class MetaGradient(NamedTuple):
    """Result of :func:`meta_gradient`."""

    outer_grads: list[Tensor]  # dF/dm, one per outer parameter, same shapes, detached
    inner_grads: dict[str, Tensor | None]  # g = dL_in/dtheta at theta, detached (None: unused)
    outer_loss: Tensor  # L_out(theta+; m), detached scalar


def _grads_or_zeros(value: Tensor, inputs: Sequence[Tensor]) -> list[Tensor]:
    """``d value / d inputs``, zeros where ``value`` does not depend on an input."""
    if not value.requires_grad:
        return [torch.zeros_like(x) for x in inputs]
    return list(torch.autograd.grad(value, list(inputs), allow_unused=True, materialize_grads=True))


def _check_scalar(value: Tensor, what: str) -> Tensor:
    if value.numel() != 1:
        raise ValueError(f"{what} must return a scalar, got shape {tuple(value.shape)}")
    return value


def meta_gradient(
    outer_params: Sequence[Tensor],
    inner_params: Params,
    inner_loss: LossOf,
    outer_loss: LossOf,
    step: SGDStep | float,
    *,
    order: MetaOrder = "second",
    second_order: SecondOrder = "jvp",
    inner_grads: Grads | None = None,
    fd_radius: float = 0.01,
) -> MetaGradient:
    """The gradient w.r.t. ``outer_params`` of ``F = outer_loss(theta+)`` after one virtual
    step ``theta+ = step.virtual_step(theta, g)``, ``g = d inner_loss(theta) / d theta``.

    outer_params: tensors ``m`` that require grad (generator weights, a mask vector), used
        inside the two losses (via closures).
    inner_params: ``theta`` by name, e.g. ``dict(encoder.named_parameters())``.
    inner_loss, outer_loss: map a parameter dict to a scalar; evaluate the encoder with
        :func:`functional_forward` so BatchNorm uses batch statistics and keeps its running
        statistics. ``inner_loss`` is called at ``theta`` (unless ``inner_grads`` is given), for
        ``"finite_difference"`` at ``theta +- r v`` and for ``"second"``/``"jvp"`` once at
        ``theta`` with forward-mode tangents ``v`` on the weights; ``outer_loss`` once at
        ``theta+``.
    step: an :class:`SGDStep` (momentum, weight decay, e.g. ``SGDStep.like(optimizer, theta)``)
        or a learning rate for a plain gradient step.
    order: ``"second"`` exact; ``"first"`` the direct term ``dL_out/dm`` at ``theta+`` only;
        ``"finite_difference"`` DARTS' approximation of the second-order term (error
        O(fd_radius^2)).
    second_order: how ``"second"`` gets the mixed term: ``"jvp"`` (forward-over-reverse, no
        ``create_graph``) or ``"unrolled"`` (double backward through the virtual step).
    inner_grads: ``g`` already computed by :func:`inner_gradients` from a loss value the caller
        also uses elsewhere (one forward and one gradient serving a real optimiser step and the
        virtual step); ``"unrolled"`` needs it from ``create_graph=True`` (see
        :func:`needs_differentiable_inner_grads`). Compute the meta-gradient before an optimiser
        updates ``theta`` in place.
    fd_radius: length of the finite-difference step ``r v`` in parameter space.

    Under autocast, the ``"jvp"`` pass runs the weights in the autocast dtype (mixed-dtype
    forward-mode BatchNorm is several times slower on CPU). No ``.grad`` attribute is written and
    no tensor is modified in place; the returned gradients are detached (set them as ``m.grad``
    for an optimiser step).
    """
    outer_params = list(outer_params)
    if order not in get_args(MetaOrder):
        raise ValueError(f"order must be one of {get_args(MetaOrder)}, got {order!r}")
    if second_order not in get_args(SecondOrder):
        raise ValueError(f"second_order must be one of {get_args(SecondOrder)}, got {second_order!r}")
    if not outer_params:
        raise ValueError("outer_params is empty: nothing to differentiate")
    frozen = [i for i, m in enumerate(outer_params) if not m.requires_grad]
    if frozen:
        raise ValueError(f"outer_params at positions {frozen} do not require grad")
    if not inner_params:
        raise ValueError("inner_params is empty: nothing to step")
    if not fd_radius > 0:
        raise ValueError(f"fd_radius must be > 0, got {fd_radius}")
    step = step if isinstance(step, SGDStep) else SGDStep(lr=step)
    unrolled = needs_differentiable_inner_grads(order, second_order)

    if inner_grads is None:
        inner_grads = inner_gradients(inner_loss(dict(inner_params)), inner_params, create_graph=unrolled)
    elif unrolled and not any(g is not None and g.requires_grad for g in inner_grads.values()):
        raise ValueError('order="second" with second_order="unrolled" needs inner_grads computed with '
                         "create_graph=True")
    detached_grads = {name: None if g is None else g.detach() for name, g in inner_grads.items()}

    if unrolled:
        stepped = step.virtual_step(inner_params, inner_grads)
        value = _check_scalar(outer_loss(stepped), "outer_loss")
        return MetaGradient(_grads_or_zeros(value, outer_params), detached_grads, value.detach())

    theta = {name: p.detach() for name, p in inner_params.items()}
    stepped = step.virtual_step(theta, detached_grads)
    moved = [name for name, g in detached_grads.items() if g is not None]
    for name in moved if order != "first" else ():
        stepped[name].requires_grad_(True)  # to read v = dL_out/dtheta+
    value = _check_scalar(outer_loss(stepped), "outer_loss")
    if order == "first":
        return MetaGradient(_grads_or_zeros(value, outer_params), detached_grads, value.detach())
    grads = _grads_or_zeros(value, outer_params + [stepped[name] for name in moved])
    direct, v = grads[: len(outer_params)], dict(zip(moved, grads[len(outer_params):]))
    if order == "second":
        mixed = _mixed_derivative_jvp(v, theta, inner_loss, outer_params)
    else:
        mixed = _mixed_derivative_along(v, theta, inner_loss, outer_params, fd_radius)
    outer_grads = [d - step.lr * term for d, term in zip(direct, mixed)]
    return MetaGradient(outer_grads, detached_grads, value.detach())


def needs_differentiable_inner_grads(order: MetaOrder, second_order: SecondOrder = "jvp") -> bool:
    """Whether :func:`meta_gradient` with these settings needs ``g`` from ``create_graph=True``
    (and so the inner loss computed with ``m`` as a variable, not a constant)."""
    return order == "second" and second_order == "unrolled"


def _mixed_derivative_jvp(v: Params, theta: Params, inner_loss: LossOf, outer_params: list[Tensor]) -> list[Tensor]:
    """``(d^2 L_in / dm dtheta) . v`` at ``theta``: the reverse-mode gradient w.r.t. ``m`` of
    the forward-mode derivative of ``L_in`` along ``v`` (``theta``: detached tensors)."""
    device = next(iter(theta.values())).device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None

    def cast(t: Tensor) -> Tensor:
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    with fwAD.dual_level():
        dual = {name: fwAD.make_dual(cast(p), cast(v[name])) if name in v else cast(p) for name, p in theta.items()}
        tangent = fwAD.unpack_dual(_check_scalar(inner_loss(dual), "inner_loss")).tangent
    if tangent is None:
        return [torch.zeros_like(m) for m in outer_params]
    return _grads_or_zeros(tangent.float(), outer_params)


def _mixed_derivative_along(
    v: Params, theta: Params, inner_loss: LossOf, outer_params: list[Tensor], fd_radius: float
) -> list[Tensor]:
    """``(d^2 L_in / dm dtheta) . v`` at ``theta`` by central differences of ``dL_in/dm``
    between ``theta +- r v``, ``r = fd_radius / ||v||`` (``v`` over the names that move;
    zeros when ``v = 0``)."""
    v_norm = torch.sqrt(sum((x * x).sum() for x in v.values())) if v else 0.0
    if v_norm == 0:
        return [torch.zeros_like(m) for m in outer_params]
    radius = fd_radius / v_norm
    at = []
    for sign in (1.0, -1.0):
        shifted = {**theta, **{name: theta[name] + sign * radius * x for name, x in v.items()}}
        at.append(_grads_or_zeros(_check_scalar(inner_loss(shifted), "inner_loss"), outer_params))
    return [(plus - minus) / (2 * radius) for plus, minus in zip(*at)]


def surrogate_loss(loss: Tensor, params: Params, grads: Params) -> Tensor:
    """A scalar equal to ``loss`` whose gradient w.r.t. each ``params[name]`` is
    ``grads[name]`` (detached; names with a ``None`` gradient get none): a backward pass through
    it hands the trainer an already computed gradient without recomputing it."""
    linear = sum((params[name] * g.detach()).sum() for name, g in grads.items() if g is not None)
    return loss.detach() + (linear - linear.detach())


def encoder_parameters(module: nn.Module, parts: Sequence[str]) -> dict[str, nn.Parameter]:
    """``theta`` of a meta-learning method: the parameters of ``module``'s submodules ``parts``
    that require grad, by name as in ``module.named_parameters()``."""
    return {name: p for name, p in module.named_parameters() if p.requires_grad and name.split(".")[0] in parts}


def momentum_buffers(optimizer: torch.optim.SGD, params: Sequence[Tensor]) -> Tensor:
    """The SGD momentum buffers of ``params``, flattened and concatenated in order; empty before
    the optimiser's first step. One tensor, so a module can return it as its extra state and its
    state dict stays a mapping of tensors."""
    buffers = [optimizer.state.get(p, {}).get("momentum_buffer") for p in params]
    if any(b is None for b in buffers):
        return torch.empty(0)
    return torch.cat([b.detach().flatten() for b in buffers])


def restore_momentum_buffers(optimizer: torch.optim.SGD, params: Sequence[Tensor], state: Tensor, owner: str) -> None:
    """Inverse of :func:`momentum_buffers`: ``ValueError`` naming ``owner`` unless ``state`` has
    one value per parameter entry (or none: no buffers yet)."""
    params = list(params)
    expected = sum(p.numel() for p in params)
    if state.numel() not in (0, expected):
        raise ValueError(f"{owner}'s momentum buffers in the state dict have {state.numel()} values, "
                         f"expected {expected} (or none)")
    optimizer.state.clear()
    if state.numel():
        for p, buffer in zip(params, state.to(params[0]).split([p.numel() for p in params])):
            optimizer.state[p]["momentum_buffer"] = buffer.view_as(p).clone()
