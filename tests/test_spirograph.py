"""Spirograph: renderer vs a slow loop reference, sampling, gradients, loader, views."""

import math

import pytest
import torch

from contrastlab.data import DATASETS
from contrastlab.data import spirograph as sp
from contrastlab.data.preprocess import Normalize


def params(n, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return sp.sample_factors(n, g).to(dtype), sp.sample_nuisance(n, g).to(dtype)


def reference_render(factors, nuisance):
    """Spec 3.8 with explicit loops over images, pixels and curve points (float64 Python)."""
    out = torch.zeros(len(factors), 3, 32, 32, dtype=torch.float64)
    ts = [2 * math.pi * j / 39 for j in range(40)]
    grid = [-6 + 12 * p / 31 for p in range(32)]
    for i, (factor_row, nuisance_row) in enumerate(zip(factors.tolist(), nuisance.tolist())):
        (m, b, sigma, f_r), (h, b_r, f_g, b_g, f_b, b_b) = factor_row, nuisance_row
        xs = [(m - h) * math.cos(t) + h * math.cos((m - h) * t / b) for t in ts]
        ys = [(m - h) * math.sin(t) - h * math.sin((m - h) * t / b) for t in ts]
        c = [[0.0] * 32 for _ in range(32)]
        for p in range(32):
            for q in range(32):
                total = sum(math.exp(-((grid[p] - x) ** 2 + (grid[q] - y) ** 2) / sigma) for x, y in zip(xs, ys))
                c[p][q] = total / 40
        peak = max(max(row) for row in c)
        for p in range(32):
            for q in range(32):
                ch = c[p][q] / (peak + 1e-8)
                for k, (fg, bg) in enumerate(((f_r, b_r), (f_g, b_g), (f_b, b_b))):
                    out[i, k, p, q] = ch * fg + (1 - ch) * bg
    return out


def test_render_matches_loop_reference():
    factors, nuisance = params(3)
    expected = reference_render(factors, nuisance)
    torch.testing.assert_close(sp.render(factors, nuisance), expected, atol=1e-6, rtol=0)


def test_render_chunks_agree_and_float32_close(monkeypatch):
    factors, nuisance = params(7)
    full = sp.render(factors, nuisance)
    monkeypatch.setattr(sp, "RENDER_CHUNK", 3)
    torch.testing.assert_close(sp.render(factors, nuisance), full)
    single = sp.render(factors.float(), nuisance.float())
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), full, atol=1e-5, rtol=0)


def test_samples_lie_in_spec_ranges_and_overrides_apply():
    g = torch.Generator().manual_seed(1)
    factors, nuisance = sp.sample_factors(5000, g), sp.sample_nuisance(5000, g)
    ranges = ((factors, sp.FACTOR_LOW, sp.FACTOR_HIGH), (nuisance, sp.NUISANCE_LOW, sp.NUISANCE_HIGH))
    for values, low, high in ranges:
        assert (values >= torch.tensor(low)).all() and (values <= torch.tensor(high)).all()
        torch.testing.assert_close(values.min(0).values, torch.tensor(low), atol=0.01, rtol=0)
        torch.testing.assert_close(values.max(0).values, torch.tensor(high), atol=0.01, rtol=0)
    shifted = sp.sample_nuisance(100, g, low=[1.0] * 6, high=[2.0] * 6)
    assert shifted.min() >= 1.0 and shifted.max() <= 2.0
    with pytest.raises(ValueError, match="6 bounds"):
        sp.sample_nuisance(3, g, low=[0.0] * 5)
    with pytest.raises(ValueError, match="low <= high"):
        sp.sample_nuisance(3, g, low=[1.0] * 6, high=[0.0] * 6)


def test_curve_radius_at_most_five_and_values_in_unit_interval():
    factors, nuisance = params(5000, seed=2)
    m, b, h = factors[:, :1], factors[:, 1:2], nuisance[:, :1]
    t = torch.linspace(0, 2 * math.pi, 40, dtype=torch.float64)
    x = (m - h) * torch.cos(t) + h * torch.cos((m - h) * t / b)
    y = (m - h) * torch.sin(t) - h * torch.sin((m - h) * t / b)
    assert torch.sqrt(x**2 + y**2).max() <= 5.0
    images = sp.render(factors[:300], nuisance[:300])
    assert images.min() >= 0 and images.max() <= 1


def test_gradient_wrt_nuisance_and_factors_matches_finite_differences():
    factors, nuisance = params(2, seed=3)
    factors.requires_grad_(True)
    nuisance.requires_grad_(True)
    # A fixed random projection keeps the check cheap (32 x 32 x 3 outputs -> 1).
    weights = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f, a: (sp.render(f, a) * weights).sum(), (factors, nuisance))
    grad = torch.autograd.grad((sp.render(factors, nuisance) * weights).sum(), nuisance)[0]
    assert (grad.abs() > 0).all()


def test_render_rejects_bad_shapes():
    factors, nuisance = params(2)
    with pytest.raises(ValueError, match=r"factors must be a float tensor \(B, 4\)"):
        sp.render(factors[:, :3], nuisance)
    with pytest.raises(ValueError, match=r"nuisance must be a float tensor \(B, 6\)"):
        sp.render(factors, nuisance[0])
    with pytest.raises(ValueError, match="2 factor rows but 1 nuisance rows"):
        sp.render(factors, nuisance[:1])


def test_loader_shapes_determinism_and_streams():
    load = DATASETS.get("spirograph")
    data = load("train", size=16, seed=5)
    assert data.images.shape == (16, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.targets.shape == (16, 4) and data.targets.dtype == torch.float32
    assert data.extras["nuisance"].shape == (16, 6) and data.extras["nuisance"].dtype == torch.float32
    assert data.labels is None and data.target_names == ("m", "b", "sigma", "f_r")
    expected = (sp.render(data.targets, data.extras["nuisance"]) * 255).round().to(torch.uint8)
    assert torch.equal(data.images, expected)
    again = load("train", size=16, seed=5)
    assert torch.equal(again.images, data.images) and torch.equal(again.targets, data.targets)
    assert not torch.equal(load("train", size=16, seed=6).targets, data.targets)
    assert not torch.equal(load("test", size=16, seed=5).targets, data.targets)
    assert len(load("test", size=None, seed=0)) == 2000


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"split": "train", "root": "/data"}, "root must be None"),
        ({"split": "val"}, "unknown split 'val'"),
        ({"split": "train", "size": 0}, "size must be a positive integer"),
    ],
)
def test_loader_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DATASETS.get("spirograph")(**kwargs)


def test_views_rerender_targets_with_fresh_nuisance():
    data = DATASETS.get("spirograph")("train", size=4, seed=0)
    normalize = Normalize([0.5] * 3, [0.25] * 3)
    views = sp.SpirographViews(normalize)
    batch = {"inputs": data.images, "targets": data.targets, "index": torch.arange(4)}
    p1 = views.sample(batch, torch.Generator().manual_seed(0))
    p2 = views.sample(batch, torch.Generator().manual_seed(1))
    assert p1["nuisance"].shape == (4, 6) and not torch.equal(p1["nuisance"], p2["nuisance"])
    view = views.apply(batch, p1)
    torch.testing.assert_close(view, (sp.render(data.targets, p1["nuisance"]) - 0.5) / 0.25)
    torch.testing.assert_close(views(batch, torch.Generator().manual_seed(0)), view)
    nuisance = p1["nuisance"].clone().requires_grad_(True)
    views.apply(batch, {"nuisance": nuisance}).sum().backward()
    assert nuisance.grad is not None and nuisance.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"batch\['targets'\]"):
        views.sample({"inputs": data.images}, torch.Generator())
