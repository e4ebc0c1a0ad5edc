"""HaLP's pieces (Shah et al., CVPR 2023): prototypes by spherical k-means, positives
hallucinated in closed form between prototypes, and the loss that pulls queries toward them.

Positive generation, per unit key ``k`` and prototypes ``p_1..p_P`` (unit rows):

1. ``p_0`` is the prototype most similar to ``k``; the candidate targets are the
   ``num_candidates`` most similar prototypes after skipping the ``skip`` most similar
   (clamped to ``P - skip``: with ``P = 20``, ``skip = 1`` every prototype but ``p_0``).
2. Each of ``G`` positives draws a target ``p_s`` uniformly from the candidates.
3. The great circle from ``k`` toward ``p_s`` (slerp, ``omega = arccos(k . p_s)``, the cosine
   clamped to ``[-1 + 1e-6, 1 - 1e-6]``) crosses the boundary between ``p_0``'s and ``p_s``'s
   regions at ``t_max = arctan(sin omega / (kappa + cos omega)) / omega``,
   ``kappa = (1 - p_s . p_0) / (k . (p_0 - p_s))``, clamped to ``[0, 1]``.
4. ``t = (1 - lambda) t_max``, ``lambda ~ U(0, lambda_max)`` (``lambda_max = 1000``: always
   ``t = t_max - 0.01``, floored at 0); the positive is the normalised slerp point at ``t``.
5. The rank filter keeps a positive only if its most similar prototype is still ``p_0``.

Denominators ``a = k . (p_0 - p_s)``, ``sin omega`` and ``omega`` get ``1e-8``, as in the
official code. Where ``kappa + cos omega < 0`` (a target nearly opposite the key) the arctan is
negative and the clamp gives ``t_max = 0``: the positive is the key itself.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

ALWAYS_HARDEST = 1000.0
"""``lambda_max`` value meaning ``t = t_max - 0.01`` for every positive (the official code's)."""

COSINE_CLAMP = 1e-6  # arccos input kept in [-1 + COSINE_CLAMP, 1 - COSINE_CLAMP]
GUARD = 1e-8  # added to the denominators a, sin(omega), omega


# ----------------------------------------------------------------------------- spherical k-means


class KMeansResult(NamedTuple):
    """``centroids``: ``(k, D)`` unit rows; ``objective``: scalar, the mean cosine distance
    ``1 - x . c`` of each point to its nearest centroid; ``iterations``: update steps run."""

    centroids: torch.Tensor
    objective: torch.Tensor
    iterations: int


def cosine_objective(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Mean over ``points: (N, D)`` of ``1 - max_j x . c_j`` for unit ``centroids: (k, D)``."""
    return 1 - (points @ centroids.T).max(dim=1).values.mean()


def kmeans_plus_plus(points: torch.Tensor, num_clusters: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeds among unit ``points: (N, D)``: the first uniformly, each next one with
    probability proportional to its squared chord distance ``|x - c|^2 = 2 - 2 x . c`` to the
    nearest seed so far (uniformly when every point is already a seed's duplicate). Draws on
    the CPU ``generator``. Returns ``(num_clusters, D)`` rows of ``points``."""
    n = points.shape[0]
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    nearest = (2 - 2 * points @ points[chosen[0]]).clamp_min(0)
    for _ in range(1, num_clusters):
        weights = nearest.double().cpu()
        if weights.sum() > 0:
            index = int(torch.multinomial(weights, 1, generator=generator))
        else:
            index = int(torch.randint(n, (1,), generator=generator))
        chosen.append(index)
        nearest = torch.minimum(nearest, (2 - 2 * points @ points[index]).clamp_min(0))
    return points[chosen].clone()


def spherical_kmeans(points: torch.Tensor, num_clusters: int, generator: torch.Generator, tol: float = 1e-3,
                     max_iterations: int = 100) -> KMeansResult:
    """Spherical k-means (Lloyd's iterations on the unit sphere) from k-means++ seeds.

    Each iteration assigns every point to its most similar centroid and replaces each centroid
    by the normalised sum (mean direction) of its points; a centroid whose cluster is empty (or
    whose points sum to zero) keeps its place. Stops when no centroid moved by more than ``tol``
    (Euclidean) or after ``max_iterations``.

    Args:
        points: ``(N, D)``, normalised here; ``N >= num_clusters``.
        num_clusters: ``k >= 1``.
        generator: CPU generator of the k-means++ draws.
        tol: ``> 0``; max_iterations: ``>= 1``.
    """
    if points.dim() != 2 or not 1 <= num_clusters <= points.shape[0]:
        raise ValueError(f"expected points: (N, D) with N >= num_clusters >= 1, got points {tuple(points.shape)} "
                         f"and num_clusters={num_clusters}")
    if tol <= 0 or max_iterations < 1:
        raise ValueError(f"expected tol > 0 and max_iterations >= 1, got tol={tol}, max_iterations={max_iterations}")
    points = F.normalize(points, dim=1)
    centroids = kmeans_plus_plus(points, num_clusters, generator)
    for iteration in range(1, max_iterations + 1):
        updated = mean_directions(points, (points @ centroids.T).argmax(dim=1), centroids)
        shift = (updated - centroids).norm(dim=1).max()
        centroids = updated
        if shift < tol:
            break
    return KMeansResult(centroids, cosine_objective(points, centroids), iteration)


def mean_directions(points: torch.Tensor, assignment: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """The normalised sum of each cluster's ``points: (N, D)`` (``assignment: (N,)`` cluster
    indices), or its ``previous: (k, D)`` centroid where that sum is zero (an empty cluster)."""
    sums = torch.zeros_like(previous).index_add_(0, assignment, points)
    norms = sums.norm(dim=1, keepdim=True)
    return torch.where(norms > 1e-12, sums / norms.clamp_min(1e-12), previous)


# ----------------------------------------------------------------------------- positives


class Hallucinated(NamedTuple):
    """The positives of each key ``k_i`` as unit combinations ``g_ig = a_ig k_i + b_ig p_s(ig)``
    of the key and its target prototype (a slerp point is one), so that the rank filter and the
    loss need only dot products, never the ``(B, G, D)`` points themselves.

    ``keys``: ``(B, D)`` unit keys; ``prototypes``: ``(P, D)``; ``coefficients``: ``(B, G, 2)``
    the ``(a, b)``; ``kept``: ``(B, G)`` bool, the rank filter; ``own``: ``(B,)`` index of each
    key's prototype ``p_0``; ``targets``: ``(B, G)`` index of each positive's ``p_s``; ``t``:
    ``(B, G)`` the slerp fractions used."""

    keys: torch.Tensor
    prototypes: torch.Tensor
    coefficients: torch.Tensor
    kept: torch.Tensor
    own: torch.Tensor
    targets: torch.Tensor
    t: torch.Tensor

    @property
    def positives(self) -> torch.Tensor:
        """``(B, G, D)`` the positives themselves (unit rows)."""
        a, b = self.coefficients.unbind(-1)
        return a[..., None] * self.keys[:, None, :] + b[..., None] * self.prototypes[self.targets]


def candidate_prototypes(similarities: torch.Tensor, num_candidates: int, skip: int) -> torch.Tensor:
    """``(B, C)`` prototype indices: per row of ``similarities: (B, P)``, the ``C =
    min(num_candidates, P - skip)`` most similar after skipping the ``skip`` most similar,
    most similar first."""
    count = min(num_candidates, similarities.shape[1] - skip)
    return similarities.topk(skip + count, dim=1).indices[:, skip:]


def great_circle_angle(cosine: torch.Tensor) -> torch.Tensor:
    """``arccos`` of ``cosine`` clamped to ``[-1 + 1e-6, 1 - 1e-6]`` (no NaN from rounding)."""
    return torch.arccos(cosine.clamp(-1 + COSINE_CLAMP, 1 - COSINE_CLAMP))


def boundary_fraction(omega: torch.Tensor, own_minus_target: torch.Tensor, own_dot_target: torch.Tensor) -> torch.Tensor:
    """``t_max`` in ``[0, 1]``: where the slerp from ``k`` toward ``p_s`` is equally similar to
    ``p_0`` and ``p_s``. Elementwise (broadcast) in ``omega`` (the angle from ``k`` to
    ``p_s``), ``own_minus_target = k . (p_0 - p_s)`` and ``own_dot_target = p_0 . p_s``."""
    kappa = (1 - own_dot_target) / (own_minus_target + GUARD)
    t_max = torch.arctan(torch.sin(omega) / (kappa + torch.cos(omega))) / (omega + GUARD)
    return t_max.clamp(0, 1)


def slerp_coefficients(omega: torch.Tensor, t: torch.Tensor, cosine: torch.Tensor) -> torch.Tensor:
    """``(..., 2)`` the ``(a, b)`` of the normalised slerp point ``a k + b p`` at fraction ``t``
    of the way from ``k`` to ``p`` (``omega``: the angle between them, ``cosine = k . p``):
    ``[sin((1 - t) omega), sin(t omega)] / sin omega``, divided by the norm of the point,
    ``sqrt(a^2 + b^2 + 2 a b cosine)``."""
    a = torch.sin((1 - t) * omega) / (torch.sin(omega) + GUARD)
    b = torch.sin(t * omega) / (torch.sin(omega) + GUARD)
    norm = (a * a + b * b + 2 * a * b * cosine).clamp_min(1e-24).sqrt()
    return torch.stack([a / norm, b / norm], dim=-1)


def slerp(start: torch.Tensor, end: torch.Tensor, omega: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The normalised slerp point from ``start`` to ``end`` (``(..., D)``, broadcast) at fraction
    ``t`` (``(...)``) of the angle ``omega`` between them."""
    a, b = slerp_coefficients(omega, t, (start * end).sum(-1)).unbind(-1)
    return a[..., None] * start + b[..., None] * end


def hardness_fractions(t_max: torch.Tensor, lambda_max: float, generator: torch.Generator) -> torch.Tensor:
    """``t = (1 - lambda) t_max``, ``lambda ~ U(0, lambda_max)`` drawn on the CPU ``generator``
    (``torch.rand`` in float64, shape of ``t_max``); ``lambda_max = 1000``: ``max(t_max - 0.01, 0)``,
    nothing drawn."""
    if lambda_max == ALWAYS_HARDEST:
        return (t_max - 0.01).clamp_min(0)
    lam = lambda_max * torch.rand(t_max.shape, generator=generator, dtype=torch.float64)
    return (1 - lam.to(t_max)) * t_max


def check_generation(keys: torch.Tensor, prototypes: torch.Tensor, num_positives: int, num_candidates: int,
                     skip: int, lambda_max: float) -> None:
    if keys.dim() != 2 or prototypes.dim() != 2 or keys.shape[1] != prototypes.shape[1]:
        raise ValueError(f"expected keys: (B, D) and prototypes: (P, D), got {tuple(keys.shape)} and "
                         f"{tuple(prototypes.shape)}")
    if num_positives < 1 or num_candidates < 1:
        raise ValueError(f"num_positives and num_candidates must be >= 1, got {num_positives}, {num_candidates}")
    if not 0 <= skip < prototypes.shape[0]:
        raise ValueError(f"skip must be in [0, P) for P={prototypes.shape[0]} prototypes, got {skip}")
    if not (0 <= lambda_max <= 1 or lambda_max == ALWAYS_HARDEST):
        raise ValueError(f"lambda_max must be in [0, 1] or {ALWAYS_HARDEST:g} (always the hardest), got {lambda_max}")


def hallucinate_positives(keys: torch.Tensor, prototypes: torch.Tensor, num_positives: int, num_candidates: int,
                          skip: int, lambda_max: float, generator: torch.Generator) -> Hallucinated:
    """HaLP's closed-form positives (see the module docstring), batched over keys and
    positives, as constants (no gradient), in at least float32 whatever the autocast.

    Args:
        keys: ``(B, D)`` anchor keys (normalised here).
        prototypes: ``(P, D)`` unit prototypes.
        num_positives: ``G >= 1`` positives per key.
        num_candidates, skip: the candidate targets (``0 <= skip < P``).
        lambda_max: in ``[0, 1]``, or 1000 (always ``t_max - 0.01``).
        generator: CPU generator; draws, in this order, ``torch.randint(C, (B, G))`` (the
            targets among the candidates) and ``torch.rand((B, G), dtype=float64)`` (lambda).
    """
    check_generation(keys, prototypes, num_positives, num_candidates, skip, lambda_max)
    with torch.no_grad(), torch.autocast(keys.device.type, enabled=False):
        dtype = torch.promote_types(keys.dtype, torch.float32)
        k, protos = F.normalize(keys.to(dtype), dim=1), prototypes.to(dtype)
        similarities = k @ protos.T  # (B, P)
        own = similarities.argmax(dim=1)  # (B,)
        candidates = candidate_prototypes(similarities, num_candidates, skip)  # (B, C)
        picks = torch.randint(candidates.shape[1], (k.shape[0], num_positives), generator=generator)
        targets = candidates.gather(1, picks.to(candidates.device))  # (B, G)
        key_dot_target = similarities.gather(1, targets)
        omega = great_circle_angle(key_dot_target)
        own_minus_target = similarities.gather(1, own[:, None]) - key_dot_target
        own_dot_target = (protos @ protos.T)[own[:, None], targets]  # (B, G)
        t = hardness_fractions(boundary_fraction(omega, own_minus_target, own_dot_target), lambda_max, generator)
        coefficients = slerp_coefficients(omega, t, key_dot_target)  # (B, G, 2)
        gram = protos @ protos.T  # (P, P)
        # similarity of every positive to every prototype: a (k . p_r) + b (p_s . p_r): (B, G, P)
        to_prototypes = coefficients[..., :1] * similarities[:, None, :] + coefficients[..., 1:] * gram[targets]
        kept = to_prototypes.argmax(dim=-1) == own[:, None]
    return Hallucinated(k, protos, coefficients, kept, own, targets, t)


# ----------------------------------------------------------------------------- the loss


def halp_loss(queries: torch.Tensor, made: Hallucinated, temperature: float) -> torch.Tensor:
    """HaLP's extra loss (the official code's form): ``-(1/|K|) sum_{(i, g) in K} q_i . g_ig / tau``
    over the kept positives ``K``, no denominator; 0 when none is kept. From dot products only:
    ``q . g = a (q . k) + b (q . p_s)``. In at least float32 whatever the autocast.

    Args:
        queries: ``(B, D)`` queries ``q`` (normalised here; gradients flow).
        made: the positives of the queries' keys (constants), from :func:`hallucinate_positives`.
        temperature: ``tau > 0``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if queries.dim() != 2 or queries.shape != made.keys.shape:
        raise ValueError(f"expected queries: (B, D) like the keys {tuple(made.keys.shape)}, got {tuple(queries.shape)}")
    with torch.autocast(queries.device.type, enabled=False):
        dtype = torch.promote_types(queries.dtype, torch.float32)
        q = F.normalize(queries.to(dtype), dim=1)
        to_key = (q * made.keys.detach().to(dtype)).sum(dim=1, keepdim=True)  # (B, 1)
        to_targets = (q @ made.prototypes.detach().to(dtype).T).gather(1, made.targets)  # (B, G)
        a, b = made.coefficients.detach().to(dtype).unbind(-1)
        similarities = a * to_key + b * to_targets
        count = made.kept.sum().clamp_min(1)
        return -(similarities * made.kept).sum() / (temperature * count)
