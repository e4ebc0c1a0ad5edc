"""Generated skeleton actions (``data.name: skeleton_actions``): the CPU proving ground for
skeleton sequences, as Spirograph is for images.

A 25-joint body in the NTU RGB+D joint order moves by forward kinematics: every joint turns its
children by a local rotation, and each action class drives a few joint angles with periodic
trajectories. Per sample, nuisance factors that contrastive learning should become invariant to
are drawn and stored: body scale and limb proportions, the camera's rotation about the vertical,
the speed (period), phase and amplitude of the movement, the idle frames before it starts,
joint noise, and whether a second, idle person stands beside the actor.

Output layout, as the NTU loaders of the skeleton literature: ``(N, 3, T, V, M)`` float32
(x, y, z; frames; 25 joints; 2 persons, the second all zeros when absent).
"""

from __future__ import annotations

import numpy as np
import torch

from contrastlab.data.files import generated_split_size
from contrastlab.data.registry import DATASETS
from contrastlab.data.skeletons import SkeletonData

NUM_JOINTS = 25
# NTU RGB+D joints (0-based): 0 spine base, 1 spine mid, 2 neck, 3 head, 4-7 left shoulder,
# elbow, wrist, hand, 8-11 right, 12-15 left hip, knee, ankle, foot, 16-19 right, 20 spine at
# the shoulders, 21/22 left hand tip/thumb, 23/24 right hand tip/thumb.
PARENTS = (-1, 0, 20, 2, 20, 4, 5, 6, 20, 8, 9, 10, 0, 12, 13, 14, 0, 16, 17, 18, 1, 7, 6, 11, 10)
REST_OFFSETS = np.array([  # from the parent, in metres: x to the body's left, y up, z forward
    (0, 0, 0), (0, 0.25, 0), (0, 0.08, 0), (0, 0.12, 0),
    (0.18, 0, 0), (0, -0.28, 0), (0, -0.25, 0), (0, -0.08, 0),
    (-0.18, 0, 0), (0, -0.28, 0), (0, -0.25, 0), (0, -0.08, 0),
    (0.1, -0.02, 0), (0, -0.42, 0), (0, -0.4, 0), (0, -0.05, 0.1),
    (-0.1, -0.02, 0), (0, -0.42, 0), (0, -0.4, 0), (0, -0.05, 0.1),
    (0, 0.25, 0), (0, -0.05, 0), (0.03, -0.06, 0.02), (0, -0.05, 0), (-0.03, -0.06, 0.02),
], dtype=np.float64)
ARM_BONES = (5, 6, 7, 9, 10, 11, 21, 22, 23, 24)
LEG_BONES = (13, 14, 15, 17, 18, 19)
ORDER = (0, 1, 20, 2, 3, 4, 5, 6, 7, 21, 22, 8, 9, 10, 11, 23, 24, 12, 13, 14, 15, 16, 17, 18, 19)
"""Joints in an order where every parent comes before its children."""

L_SHOULDER, L_ELBOW, R_SHOULDER, R_ELBOW = 4, 5, 8, 9
L_HIP, L_KNEE, R_HIP, R_KNEE, SPINE = 12, 13, 16, 17, 1

# action -> [(joint, axis, offset, amplitude, harmonic)]: the local angle (radians) of `joint`
# about `axis` (0: x, forward flexion; 1: y, turning; 2: z, sideways) is
# offset + amplitude * sin(harmonic * phase(t)); plus "lift": vertical root motion.
ACTIONS: dict[str, list[tuple[int, int, float, float, int]]] = {
    "wave right hand": [(R_SHOULDER, 2, -2.4, 0.0, 1), (R_ELBOW, 2, 0.0, 0.6, 1)],
    "wave left hand": [(L_SHOULDER, 2, 2.4, 0.0, 1), (L_ELBOW, 2, 0.0, -0.6, 1)],
    "clap": [(L_SHOULDER, 0, -1.4, 0.0, 1), (R_SHOULDER, 0, -1.4, 0.0, 1),
             (L_SHOULDER, 1, -0.5, 0.5, 1), (R_SHOULDER, 1, 0.5, -0.5, 1)],
    "kick right": [(R_HIP, 0, -0.6, 0.6, 1), (R_KNEE, 0, 0.4, 0.4, 1)],
    "squat": [(L_HIP, 0, -0.6, 0.6, 1), (R_HIP, 0, -0.6, 0.6, 1), (L_KNEE, 0, 0.9, 0.9, 1),
              (R_KNEE, 0, 0.9, 0.9, 1)],
    "jump": [(L_KNEE, 0, 0.3, 0.3, 1), (R_KNEE, 0, 0.3, 0.3, 1)],
    "turn": [(0, 1, 0.0, 1.2, 1)],
    "raise both arms": [(L_SHOULDER, 2, 1.4, 1.4, 1), (R_SHOULDER, 2, -1.4, -1.4, 1)],
    "punch right": [(R_SHOULDER, 0, -1.5, 0.0, 1), (R_ELBOW, 0, -0.8, 0.8, 1)],
    "march": [(L_HIP, 0, -0.5, 0.5, 1), (R_HIP, 0, -0.5, -0.5, 1), (L_KNEE, 0, 0.5, 0.5, 1),
              (R_KNEE, 0, 0.5, -0.5, 1), (L_SHOULDER, 0, 0.0, -0.4, 1), (R_SHOULDER, 0, 0.0, 0.4, 1)],
    "bow": [(SPINE, 0, -0.6, 0.6, 1)],
    "side bend": [(SPINE, 2, 0.0, 0.5, 1)],
}
CLASSES = tuple(ACTIONS)
LIFT = {"jump": 0.15, "squat": -0.2}  # vertical root motion (metres) in phase with the action

NUISANCE_NAMES = ("scale", "arm_length", "leg_length", "view_angle", "period", "phase", "amplitude",
                  "start_frame", "noise", "second_person")


def rotation(axis: int, angle: np.ndarray) -> np.ndarray:
    """``(..., 3, 3)`` rotations by ``angle: (...)`` about the x, y or z axis."""
    c, s = np.cos(angle), np.sin(angle)
    one, zero = np.ones_like(angle), np.zeros_like(angle)
    rows = {0: ((one, zero, zero), (zero, c, -s), (zero, s, c)),
            1: ((c, zero, s), (zero, one, zero), (-s, zero, c)),
            2: ((c, -s, zero), (s, c, zero), (zero, zero, one))}[axis]
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2)


def sample_nuisance(n: int, frames: int, rng: np.random.Generator, view_range: float = np.pi / 3) -> np.ndarray:
    """``(n, 10)`` nuisance factors (:data:`NUISANCE_NAMES`), the camera angle in
    ``[-view_range, view_range]``."""
    return np.stack([
        rng.uniform(0.85, 1.15, n), rng.uniform(0.9, 1.1, n), rng.uniform(0.9, 1.1, n),
        rng.uniform(-view_range, view_range, n), rng.uniform(frames / 3, frames / 1.2, n),
        rng.uniform(0, 2 * np.pi, n), rng.uniform(0.7, 1.0, n), rng.integers(0, frames // 4, n).astype(float),
        rng.uniform(0.0, 0.01, n), (rng.random(n) < 0.5).astype(float),
    ], axis=1)


def render(labels: np.ndarray, nuisance: np.ndarray, frames: int, rng: np.random.Generator) -> np.ndarray:
    """``(N, 3, T, 25, 2)`` float32 joint positions of actions ``labels: (N,)`` with
    ``nuisance: (N, 10)``; ``rng`` draws the joint noise."""
    n = len(labels)
    scale, arm, leg, view, period, phase0, amplitude, start, noise, second = nuisance.T
    t = np.arange(frames)[None, :] - start[:, None]  # (N, T); the action starts at `start`
    phase = 2 * np.pi * np.clip(t, 0, None) / period[:, None] + phase0[:, None]
    moving = (t >= 0).astype(float)
    identity = np.broadcast_to(np.eye(3), (n, frames, 3, 3))
    local: dict[int, np.ndarray] = {}  # the joints an action turns -> (N, T, 3, 3)
    lift = np.zeros((n, frames))
    for label, name in enumerate(CLASSES):
        rows = labels == label
        if not rows.any():
            continue
        for joint, axis, offset, amp, harmonic in ACTIONS[name]:
            angle = np.where(moving[rows] > 0, offset + amplitude[rows, None] * amp * np.sin(harmonic * phase[rows]), 0.0)
            turned = local.setdefault(joint, identity.copy())
            turned[rows] = turned[rows] @ rotation(axis, angle)
        if name in LIFT:
            lift[rows] = LIFT[name] * amplitude[rows, None] * (0.5 - 0.5 * np.cos(phase[rows])) * moving[rows]
    offsets = np.broadcast_to(REST_OFFSETS, (n, NUM_JOINTS, 3)).copy()
    offsets[:, ARM_BONES] *= arm[:, None, None]
    offsets[:, LEG_BONES] *= leg[:, None, None]
    offsets *= scale[:, None, None]
    world: dict[int, np.ndarray] = {}
    position = np.zeros((n, frames, NUM_JOINTS, 3))
    for joint in ORDER:
        parent = PARENTS[joint]
        if parent < 0:
            world[joint] = local.get(joint, identity)
            position[:, :, joint, 1] = lift
            continue
        position[:, :, joint] = position[:, :, parent] + (world[parent] @ offsets[:, None, joint, :, None])[..., 0]
        world[joint] = world[parent] @ local[joint] if joint in local else world[parent]
    camera = rotation(1, view)  # (N, 3, 3): the camera turns about the vertical
    actor = np.einsum("nij,ntvj->ntvi", camera, position)
    standing = np.broadcast_to(rest_pose(offsets) + np.array([1.0, 0.0, 0.0]), (frames, n, NUM_JOINTS, 3))
    bystander = np.einsum("nij,tnvj->ntvi", camera, standing) * second[:, None, None, None]  # 1 m to the side
    persons = np.stack([actor, bystander], axis=-1)  # (N, T, V, 3, M)
    persons[..., 0] += rng.normal(0, 1, persons[..., 0].shape) * noise[:, None, None, None]
    return np.ascontiguousarray(persons.transpose(0, 3, 1, 2, 4), dtype=np.float32)


def rest_pose(offsets: np.ndarray) -> np.ndarray:
    """``(N, 25, 3)`` the rest pose of bodies with bone ``offsets: (N, 25, 3)``."""
    position = np.zeros(offsets.shape)
    for joint in ORDER:
        parent = PARENTS[joint]
        if parent >= 0:
            position[:, joint] = position[:, parent] + offsets[:, joint]
    return position


def generate(size: int, frames: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``size`` sequences: ``(N, 3, T, 25, 2)`` float32 joints, ``(N,)`` int64 balanced
    labels (shuffled), ``(N, 10)`` float32 nuisance; deterministic for a ``seed``."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(size) % len(CLASSES))
    nuisance = sample_nuisance(size, frames, rng)
    return render(labels, nuisance, frames, rng), labels.astype(np.int64), nuisance.astype(np.float32)


SPLIT_STREAM = {"train": 0, "test": 1}
DEFAULT_SIZE = {"train": 5000, "test": 1000}
FRAMES = 64


@DATASETS.register("skeleton_actions", "generated skeleton actions: 12 classes, 25 joints, 2 persons, 64 frames, "
                   "10 stored nuisance factors")
def load(split: str, root: str | None = None, size: int | None = None, seed: int = 0) -> SkeletonData:
    """Generate a split: ``size`` sequences (default 5,000 train / 1,000 test), deterministic
    for a ``seed``, train and test from different random streams; ``extras["nuisance"]``:
    ``(N, 10)`` float32 (:data:`NUISANCE_NAMES`)."""
    size = generated_split_size("skeleton_actions", split, root, size, DEFAULT_SIZE)
    sequences, labels, nuisance = generate(size, FRAMES, seed=2 * seed + SPLIT_STREAM[split])
    return SkeletonData(name="skeleton_actions", sequences=torch.from_numpy(sequences),
                        labels=torch.from_numpy(labels), classes=CLASSES,
                        extras={"nuisance": torch.from_numpy(nuisance)})
