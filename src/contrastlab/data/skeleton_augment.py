"""Skeleton augmentations, batched on the training device, and the ``skeleton`` view kind.

Each transform draws its parameters for the whole batch with the view's CPU generator
(``sample(shape, generator) -> params``, ``shape``: ``(B, 3, T, V, M)`` of its input) and applies them to ``(B, 3, T, V, M)``
sequences (``apply(x, params)``), so a view is reproducible from its seed. The transforms of the
skeleton literature (CMD, AimCLR, HaLP's ``feeder/augmentations.py``):

- ``temporal_crop``: a random window of ``ratio ~ U(low, high)`` of the frames, resized to
  ``frames`` by linear interpolation in time.
- ``joint_corrupt``: with probability ``prob``, ``joints`` random joints (of every frame and
  person) are zeroed, or (half of the time) multiplied by a random ``3 x 3`` matrix ``U(-1, 1)``.
- ``shear``: with probability ``prob``, the coordinates are multiplied by a shear matrix with
  off-diagonal entries ``U(-strength, strength)``.
- ``corrupt_or_shear``: CMD's choice, ``joint_corrupt`` with probability ``corrupt_prob``, else
  ``shear``.
- ``rotate``: a rotation by angles ``U(-max_angle, max_angle)`` (radians) about each axis.
- ``camera_turn``: a turn about the vertical by exactly ``angle`` to either side; also the
  test-time perturbation of ``eval.robustness`` for skeletons (strength: the angle), which
  shows viewpoints the training data never had.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import math

import torch

from contrastlab.data.augment import TransformArgumentError, ViewPreset, register_preset, register_view_kind
from contrastlab.data.perturbation import register_perturbation
from contrastlab.data.skeletons import SKELETON_KIND


def _uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator)


def _check_prob(name: str, prob: float) -> None:
    if not 0.0 <= prob <= 1.0:
        raise TransformArgumentError("prob", f"{name}: prob must be in [0, 1], got {prob!r}")


def _mix_coordinates(x: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """``matrices: (B, 3, 3)`` applied to the coordinates of ``x: (B, 3, T, V, M)``."""
    return torch.einsum("bij,bjtvm->bitvm", matrices.to(x), x)


class TemporalCrop:
    name: ClassVar[str] = "temporal_crop"
    set_by_view: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ratio: tuple[float, float] = (0.5, 1.0), frames: int = 64) -> None:
        low, high = ratio
        if not 0.0 < low <= high <= 1.0:
            raise TransformArgumentError("ratio", f"{self.name}: ratio must be (low, high) with 0 < low <= high <= 1, "
                                                  f"got {list(ratio)}")
        if frames < 2:
            raise TransformArgumentError("frames", f"{self.name}: frames must be >= 2, got {frames!r}")
        self.low, self.high, self.frames = low, high, frames

    def sample(self, shape: tuple[int, ...], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``length`` and ``start`` (frames, float) of each sample's window."""
        batch_size, frames = shape[0], shape[2]
        length = (_uniform((batch_size,), self.low, self.high, generator) * frames).clamp(min=2.0, max=frames)
        start = torch.rand(batch_size, generator=generator) * (frames - length)
        return {"length": length, "start": start}

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return resample_frames(x, params["start"], params["length"], self.frames)


def resample_frames(x: torch.Tensor, start: torch.Tensor, length: torch.Tensor, frames: int) -> torch.Tensor:
    """``(B, 3, frames, V, M)``: the window of ``length`` frames from ``start`` (``(B,)`` each,
    fractional) of every sequence of ``x: (B, 3, T, V, M)``, linearly interpolated in time."""
    total = x.shape[2]
    steps = torch.linspace(0, 1, frames, device=x.device)
    position = start.to(x.device)[:, None] + (length.to(x.device)[:, None] - 1) * steps
    below = position.floor().clamp(0, total - 1)
    above = (below + 1).clamp(max=total - 1)
    weight = (position - below).to(x.dtype)
    index = lambda p: p.long()[:, None, :, None, None].expand(-1, x.shape[1], -1, *x.shape[3:])  # noqa: E731
    lower, upper = x.gather(2, index(below)), x.gather(2, index(above))
    return lower + weight[:, None, :, None, None] * (upper - lower)


class JointCorrupt:
    name: ClassVar[str] = "joint_corrupt"
    set_by_view: ClassVar[tuple[str, ...]] = ()

    def __init__(self, prob: float = 0.5, joints: int = 15) -> None:
        _check_prob(self.name, prob)
        if joints < 1:
            raise TransformArgumentError("joints", f"{self.name}: joints must be >= 1, got {joints!r}")
        self.prob, self.joints = prob, joints

    def sample_corruption(self, batch_size: int, num_joints: int, applied: torch.Tensor,
                          generator: torch.Generator) -> dict[str, torch.Tensor]:
        chosen = torch.rand(batch_size, num_joints, generator=generator).argsort(dim=1) < min(self.joints, num_joints)
        zero = torch.rand(batch_size, generator=generator) < 0.5
        mix = _uniform((batch_size, 3, 3), -1.0, 1.0, generator)
        return {"joints": chosen & applied[:, None], "zero": zero, "mix": mix}

    def sample(self, shape: tuple[int, ...], generator: torch.Generator) -> dict[str, torch.Tensor]:
        applied = torch.rand(shape[0], generator=generator) < self.prob
        return self.sample_corruption(shape[0], shape[3], applied, generator)

    @staticmethod
    def apply(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        mixed = _mix_coordinates(x, params["mix"])
        corrupted = torch.where(params["zero"].to(x.device)[:, None, None, None, None], torch.zeros_like(x), mixed)
        return torch.where(params["joints"].to(x.device)[:, None, None, :, None], corrupted, x)


class Shear:
    name: ClassVar[str] = "shear"
    set_by_view: ClassVar[tuple[str, ...]] = ()

    def __init__(self, prob: float = 1.0, strength: float = 1.0) -> None:
        _check_prob(self.name, prob)
        if strength < 0:
            raise TransformArgumentError("strength", f"{self.name}: strength must be >= 0, got {strength!r}")
        self.prob, self.strength = prob, strength

    def sample_shear(self, batch_size: int, applied: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        off = _uniform((batch_size, 3, 3), -self.strength, self.strength, generator) * applied[:, None, None]
        return {"matrix": torch.eye(3) + off * (1 - torch.eye(3))}

    def sample(self, shape: tuple[int, ...], generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.sample_shear(shape[0], torch.rand(shape[0], generator=generator) < self.prob, generator)

    @staticmethod
    def apply(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return _mix_coordinates(x, params["matrix"])


class CorruptOrShear:
    name: ClassVar[str] = "corrupt_or_shear"
    set_by_view: ClassVar[tuple[str, ...]] = ()

    def __init__(self, corrupt_prob: float = 0.5, joints: int = 15, strength: float = 1.0) -> None:
        _check_prob(self.name, corrupt_prob)
        self.corrupt_prob = corrupt_prob
        self.corrupt, self.shear = JointCorrupt(1.0, joints), Shear(1.0, strength)

    def sample(self, shape: tuple[int, ...], generator: torch.Generator) -> dict[str, torch.Tensor]:
        corrupt = torch.rand(shape[0], generator=generator) < self.corrupt_prob
        return {**self.corrupt.sample_corruption(shape[0], shape[3], corrupt, generator),
                **self.shear.sample_shear(shape[0], ~corrupt, generator)}

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.corrupt.apply(self.shear.apply(x, params), params)


class Rotate:
    name: ClassVar[str] = "rotate"
    set_by_view: ClassVar[tuple[str, ...]] = ()

    def __init__(self, max_angle: float = 0.5) -> None:
        if not 0.0 <= max_angle <= 3.1416:
            raise TransformArgumentError("max_angle", f"{self.name}: max_angle must be in [0, pi], got {max_angle!r}")
        self.max_angle = max_angle

    def sample(self, shape: tuple[int, ...], generator: torch.Generator) -> dict[str, torch.Tensor]:
        angles = _uniform((shape[0], 3), -self.max_angle, self.max_angle, generator)
        return {"matrix": rotation_matrices(angles)}

    @staticmethod
    def apply(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return _mix_coordinates(x, params["matrix"])


class CameraTurn:
    name: ClassVar[str] = "camera_turn"
    set_by_view: ClassVar[tuple[str, ...]] = ()

    def __init__(self, angle: float = 0.5) -> None:
        if not 0.0 <= angle <= math.pi:
            raise TransformArgumentError("angle", f"{self.name}: angle must be in [0, pi], got {angle!r}")
        self.angle = angle

    def sample(self, shape: tuple[int, ...], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A turn about the vertical (y) by exactly ``angle``, to a random side per sample."""
        side = torch.randint(0, 2, (shape[0],), generator=generator) * 2 - 1
        angles = torch.zeros(shape[0], 3)
        angles[:, 1] = side * self.angle
        return {"matrix": rotation_matrices(angles)}

    apply = staticmethod(Rotate.apply)


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """``(B, 3, 3)`` rotations ``R_z R_y R_x`` by ``angles: (B, 3)`` about x, y and z."""
    c, s = angles.cos(), angles.sin()
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])

    def about(axis: int) -> torch.Tensor:
        ca, sa = c[:, axis], s[:, axis]
        rows = {0: ((one, zero, zero), (zero, ca, -sa), (zero, sa, ca)),
                1: ((ca, zero, sa), (zero, one, zero), (-sa, zero, ca)),
                2: ((ca, -sa, zero), (sa, ca, zero), (zero, zero, one))}[axis]
        return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)

    return about(2) @ about(1) @ about(0)


SKELETON_TRANSFORMS: dict[str, type] = {
    cls.name: cls for cls in (TemporalCrop, JointCorrupt, Shear, CorruptOrShear, Rotate, CameraTurn)
}
"""``augment.views[i].transforms[j].name`` of a ``skeleton`` view -> its class."""


class SkeletonView:
    """A view of skeleton sequences: the transforms in order, on ``batch["inputs"]``:
    ``(B, 3, T, V, M)`` float; the output has the last ``temporal_crop``'s frame count."""

    continuous_parameters: tuple[str, ...] = ()

    def __init__(self, transforms: Sequence[Any]) -> None:
        self.transforms = list(transforms)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of one output sequence for inputs of ``input_shape``: ``(3, T, V, M)``."""
        shape = tuple(input_shape)
        for transform in self.transforms:
            shape = self.output_shape_of(transform, shape)
        return shape

    def sample(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
        """Each transform's parameters, in order, for the shapes the batch takes on the way."""
        shape, params = tuple(batch["inputs"].shape), []
        for transform in self.transforms:
            params.append(transform.sample(shape, generator))
            shape = (shape[0], *self.output_shape_of(transform, shape[1:]))
        return {"transforms": params}

    @staticmethod
    def output_shape_of(transform: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
        channels, frames, joints, persons = shape
        return channels, getattr(transform, "frames", frames), joints, persons

    def apply(self, batch: dict[str, Any], params: dict[str, Any]) -> torch.Tensor:
        x = batch["inputs"].float()
        for transform, values in zip(self.transforms, params["transforms"]):
            x = transform.apply(x, values)
        return x

    def __call__(self, batch: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
        return self.apply(batch, self.sample(batch, generator))


@register_perturbation(SkeletonView)
class UnseenViewpoint:
    """Test sequences turned about the vertical by the strength (radians), to either side."""

    name = "skeleton camera turn"
    max_strength = math.pi

    def __init__(self, normalize: Any) -> None:
        pass  # skeleton views standardise nothing

    def __call__(self, strength: float) -> SkeletonView:
        return SkeletonView([CameraTurn(strength)])


def skeleton_view(transforms: Sequence[dict[str, Any]], size: int | None, input_shape: tuple[int, ...],
                  normalize: Any) -> SkeletonView:
    """The ``skeleton`` view kind (a :data:`~contrastlab.data.augment.ViewFactory`) for
    ``(3, T, V, M)`` sequences; ``size`` must be unset (``temporal_crop`` sets the frames)."""
    if len(input_shape) != 4 or input_shape[0] != 3:
        raise ValueError(f"skeleton views need sequences (3, T, V, M), got inputs of shape {tuple(input_shape)}")
    if size is not None:
        raise ValueError(f"skeleton views take no size (temporal_crop.frames sets the frames), got size={size}")
    return SkeletonView([SKELETON_TRANSFORMS[t["name"]](**{k: v for k, v in t.items() if k != "name"})
                         for t in transforms])


CMD_VIEW = {"count": 1, "size": None, "kind": SKELETON_KIND,
            "transforms": ({"name": "temporal_crop", "ratio": (0.5, 1.0), "frames": 64},
                           {"name": "corrupt_or_shear"})}
register_view_kind(SKELETON_KIND, skeleton_view, transforms=SKELETON_TRANSFORMS)
register_preset(SKELETON_KIND, ViewPreset(
    "skeletons: CMD's views, a temporal crop of 50-100% resized to 64 frames, then joint corruption or shear",
    kind=SKELETON_KIND, views=(CMD_VIEW, CMD_VIEW),
))
