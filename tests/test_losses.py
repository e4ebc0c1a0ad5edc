"""NT-Xent against a slow loop-based reference, values and gradients."""

import math

import pytest
import torch

from contrastlab.losses import nt_xent


def reference_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """Literal transcription of SimCLR's loss: for each of the 2B anchors, -log of the
    positive's share of exp(cos / t) over every other embedding."""
    z = torch.cat([z1, z2])
    n, b = z.shape[0], z1.shape[0]
    total = z.new_zeros(())
    for a in range(n):
        positive = (a + b) % n
        sims = [torch.dot(z[a], z[k]) / (z[a].norm() * z[k].norm()) / t for k in range(n)]
        denominator = sum(torch.exp(sims[k]) for k in range(n) if k != a)
        total = total - torch.log(torch.exp(sims[positive]) / denominator)
    return total / n


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_nt_xent_matches_reference_values_and_gradients(temperature):
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    ours = nt_xent(z1, z2, temperature)
    ref = reference_nt_xent(z1, z2, temperature)
    assert torch.allclose(ours.double(), ref, atol=1e-6)
    g_ours = torch.autograd.grad(ours, (z1, z2))
    g_ref = torch.autograd.grad(ref, (z1, z2))
    for a, b in zip(g_ours, g_ref):
        assert torch.allclose(a.double(), b, atol=1e-6)


def test_nt_xent_perfect_pairs_beat_random_pairs():
    g = torch.Generator().manual_seed(1)
    z = torch.nn.functional.normalize(torch.randn(32, 64, generator=g), dim=1)
    aligned = nt_xent(z, z, 0.1)
    shuffled = nt_xent(z, z[torch.randperm(32, generator=g)], 0.1)
    assert aligned < shuffled
    # identical views of orthogonal-ish embeddings: the loss approaches its floor log(1) = 0
    assert aligned < math.log(2 * 32 - 1)


def test_nt_xent_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="z1 and z2"):
        nt_xent(torch.randn(4, 8), torch.randn(5, 8))
