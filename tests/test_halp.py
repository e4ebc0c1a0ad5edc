"""HaLP: the closed-form positives (boundary, unit norm, t = 0, the rank filter), spherical
k-means, the loss against a loop reference, and the method's gating and prototype refresh
through the trainer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from contrastlab.core.config import ConfigError
from contrastlab.engine.distributed import init_distributed
from contrastlab.engine.trainer import Trainer
from contrastlab.losses import hallucinate_positives, halp_loss, spherical_kmeans
from contrastlab.losses.halp import boundary_fraction, cosine_objective, great_circle_angle, kmeans_plus_plus, slerp
from contrastlab.recipes import load_config
from test_trainer import METHOD_OVERRIDES, tiny_config


def unit(*shape: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype), dim=-1)


@pytest.mark.parametrize("seed", range(5))
def test_at_t_max_the_positive_is_equally_similar_to_its_own_and_the_target_prototype(seed):
    keys, prototypes = unit(64, 16, seed=seed), unit(8, 16, seed=100 + seed)
    made = hallucinate_positives(keys, prototypes, num_positives=6, num_candidates=7, skip=1,
                                 lambda_max=0.0, generator=torch.Generator().manual_seed(seed))  # lambda = 0: t = t_max
    own = prototypes[made.own][:, None, :]  # (B, 1, D)
    target = prototypes[made.targets]  # (B, G, D)
    inside = (made.t > 0) & (made.t < 1)  # t_max clamped at 0 or 1 is not on the boundary
    assert inside.float().mean() > 0.5
    gap = ((made.positives * own).sum(-1) - (made.positives * target).sum(-1))[inside]
    assert gap.abs().max() < 1e-5
    assert ((made.positives.norm(dim=-1) - 1).abs().max() < 1e-6)
    assert (made.targets != made.own[:, None]).all()  # skip = 1: never the key's own prototype


def test_t_zero_returns_the_key_and_the_slerp_stays_on_the_sphere():
    k, p = unit(5, 8, seed=1), unit(5, 8, seed=2)
    omega = great_circle_angle((k * p).sum(-1))
    assert torch.allclose(slerp(k, p, omega, torch.zeros(5, dtype=torch.float64)), k, atol=1e-7)
    assert torch.allclose(slerp(k, p, omega, torch.ones(5, dtype=torch.float64)), p, atol=1e-6)
    for t in (0.25, 0.5, 0.75):
        point = slerp(k, p, omega, torch.full((5,), t, dtype=torch.float64))
        assert ((point.norm(dim=-1) - 1).abs().max() < 1e-12)
        # on the great circle: the angle to k is t * omega
        assert torch.allclose(great_circle_angle((point * k).sum(-1)), t * omega, atol=1e-5)


def test_boundary_fraction_solves_the_equal_similarity_equation():
    k, p0, ps = unit(200, 6, seed=3), unit(200, 6, seed=4), unit(200, 6, seed=5)
    swap = (k * p0).sum(-1) < (k * ps).sum(-1)  # make p0 the closer one, as for a key's own prototype
    p0, ps = torch.where(swap[:, None], ps, p0), torch.where(swap[:, None], p0, ps)
    omega = great_circle_angle((k * ps).sum(-1))
    t = boundary_fraction(omega, (k * (p0 - ps)).sum(-1), (p0 * ps).sum(-1))
    z = slerp(k, ps, omega, t)
    inside = (t > 0) & (t < 1)
    assert inside.sum() > 100
    assert ((z * (p0 - ps)).sum(-1)[inside]).abs().max() < 1e-6  # the 1e-8 guards of the denominators
    assert ((t >= 0) & (t <= 1)).all()


def test_the_rank_filter_drops_positives_that_cross_into_a_third_region():
    # On the unit circle: the key at 0 rad, its own prototype at 0.1, a third prototype at 0.9,
    # the target at 2.0. The boundary own/target lies at 1.05 rad, past the own/third
    # boundary (0.5 rad): the hardest positive sits in the third prototype's region.
    angle = torch.tensor([0.1, 0.9, 2.0], dtype=torch.float64)
    prototypes = torch.stack([angle.cos(), angle.sin()], dim=1)
    key = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    hard = hallucinate_positives(key, prototypes, 1, num_candidates=1, skip=2, lambda_max=1000.0,
                                 generator=torch.Generator().manual_seed(0))
    assert int(hard.targets) == 2 and not bool(hard.kept)
    near = hallucinate_positives(key, prototypes[[0, 2]], 1, num_candidates=1, skip=1, lambda_max=1000.0,
                                 generator=torch.Generator().manual_seed(0))
    assert bool(near.kept)  # without the third prototype the same positive is kept


def test_lambda_max_sets_the_hardness_range():
    keys, prototypes = unit(32, 8, seed=6), unit(6, 8, seed=7)

    def fractions(lambda_max):
        return hallucinate_positives(keys, prototypes, 50, 5, 1, lambda_max, torch.Generator().manual_seed(1)).t

    hardest = fractions(0.0)
    ratio = fractions(0.8) / hardest.clamp_min(1e-12)
    valid = hardest > 1e-6
    assert ((ratio[valid] >= 0.2 - 1e-9) & (ratio[valid] <= 1 + 1e-9)).all() and ratio[valid].min() < 0.3
    assert torch.allclose(fractions(1000.0), (hardest - 0.01).clamp_min(0))


def test_halp_loss_equals_a_loop_reference_and_its_gradient():
    made = hallucinate_positives(unit(4, 5, seed=8), unit(3, 5, seed=9), 3, 2, 1, 0.8, torch.Generator().manual_seed(2))
    made = made._replace(kept=torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.bool))
    q = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    loss = halp_loss(q, made, temperature=0.2)
    qn, positives = F.normalize(q, dim=1), made.positives
    terms = [torch.dot(qn[i], positives[i, g]) / 0.2 for i in range(4) for g in range(3) if made.kept[i, g]]
    reference = -sum(terms) / len(terms)
    assert torch.allclose(loss, reference)
    torch.autograd.gradcheck(lambda x: halp_loss(x, made, 0.2), (q,))
    assert halp_loss(q, made._replace(kept=torch.zeros_like(made.kept)), 0.2) == 0


def test_the_rank_filter_from_dot_products_equals_the_explicit_one():
    keys, prototypes = unit(64, 16, seed=11), unit(10, 16, seed=12)
    made = hallucinate_positives(keys, prototypes, 20, 9, 1, 0.8, torch.Generator().manual_seed(3))
    explicit = (made.positives @ prototypes.T).argmax(dim=-1) == made.own[:, None]
    assert torch.equal(made.kept, explicit) and 0 < made.kept.float().mean() < 1


def test_spherical_kmeans_lowers_its_objective_and_returns_unit_centroids():
    centres = unit(5, 16, seed=9)
    points = F.normalize(centres.repeat(40, 1) + 0.05 * torch.randn(200, 16, dtype=torch.float64,
                                                                     generator=torch.Generator().manual_seed(10)), dim=1)
    seeds = kmeans_plus_plus(points, 5, torch.Generator().manual_seed(0))
    result = spherical_kmeans(points, 5, torch.Generator().manual_seed(0))
    assert result.objective < cosine_objective(points, seeds) - 1e-3
    assert ((result.centroids.norm(dim=1) - 1).abs().max() < 1e-9)
    # the planted centres are found: each one is within 0.1 rad of a centroid
    assert ((centres @ result.centroids.T).max(dim=1).values > math.cos(0.1)).all()
    with pytest.raises(ValueError, match="num_clusters"):
        spherical_kmeans(points[:3], 5, torch.Generator())


HALP = METHOD_OVERRIDES["halp"]


def test_generation_waits_until_the_queue_is_filled_twice_then_refreshes_prototypes(tmp_path):
    trainer = Trainer(tiny_config("train.epochs=3", *HALP), tmp_path, init_distributed("cpu"))
    trainer.fit()
    records = [r for r in trainer.logger.records if "loss" in r]
    active = [r["halp_active"] for r in records]
    # 64 keys per step, queue 96: more than 2 x 96 keys seen after 4 steps; generating from the 5th on
    assert active == [0.0] * 4 + [1.0] * (len(records) - 4)
    assert all(r["halp_loss"] == 0 and r["loss"] == r["moco_loss"] for r in records[:4])
    assert all(r["halp_loss"] < 0 and 0 < r["halp_kept"] <= 1 for r in records[4:])
    assert ((trainer.method.prototypes.norm(dim=1) - 1).abs().max() < 1e-5)


def test_halp_settings_are_validated():
    with pytest.raises(ConfigError, match="method.prototype_keys=200 must be at most method.queue_size=96"):
        load_config(overrides=[*HALP, "method.prototype_keys=200"])
    with pytest.raises(ConfigError, match="method.lambda_max must be in"):
        load_config(overrides=[*HALP, "method.lambda_max=2"])
    with pytest.raises(ConfigError, match="method.skip=8 must be smaller than method.num_prototypes=8"):
        load_config(overrides=[*HALP, "method.skip=8"])
