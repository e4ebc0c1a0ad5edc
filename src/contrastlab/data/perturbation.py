"""Test-time perturbations of a view pipeline for robustness studies (InvCLR): strength -> the
view pipeline that perturbs test inputs that much.

A dataset whose views need a perturbation of their own registers it for its view pipeline
class (Spirograph's background shift, in :mod:`contrastlab.data.spirograph`); evaluation asks
:func:`registered_perturbation` and uses its generic one (colour jitter) for every other view.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import torch

from contrastlab.data.preprocess import Normalize


class Perturbation(Protocol):
    """Strength -> the view pipeline ``(batch, generator) -> (B, C, H, W)`` that perturbs test
    inputs that much (0 = no shift)."""

    name: str  # what the strength measures, for error messages
    max_strength: float

    def __call__(self, strength: float) -> Callable[[dict[str, torch.Tensor], torch.Generator], torch.Tensor]: ...


PerturbationClass = Callable[[Normalize], Perturbation]
P = TypeVar("P", bound=PerturbationClass)

_REGISTERED: dict[type, PerturbationClass] = {}


def check_strengths(strengths: Sequence[float], perturb: Perturbation) -> None:
    """Raise ``ValueError`` unless there is at least one strength and each lies in
    ``[0, perturb.max_strength]``."""
    if len(strengths) == 0:
        raise ValueError(f"{perturb.name}: robustness needs at least one strength, got none")
    for strength in strengths:
        if not 0.0 <= strength <= perturb.max_strength:
            raise ValueError(
                f"{perturb.name} strength {strength} must lie in [0, {perturb.max_strength:g}]"
            )


def register_perturbation(view_class: type) -> Callable[[P], P]:
    """Class decorator: the decorated perturbation, built as ``cls(normalize)``, is the one for
    views of ``view_class`` (and of its subclasses)."""

    def decorate(cls: P) -> P:
        if view_class in _REGISTERED:
            raise ValueError(f"{view_class.__name__} has a perturbation registered twice")
        _REGISTERED[view_class] = cls
        return cls

    return decorate


def registered_perturbation(view: object) -> PerturbationClass | None:
    """The perturbation registered for the class of ``view`` (or its nearest base), or ``None``."""
    for cls in type(view).__mro__:
        if cls in _REGISTERED:
            return _REGISTERED[cls]
    return None
