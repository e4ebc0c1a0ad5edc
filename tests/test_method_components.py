"""EMA teacher, momentum schedule, feature queue and shuffle-BN."""

import math

import pytest
import torch
from torch import nn

from contrastlab.components.momentum import EMATeacher, cosine_momentum
from contrastlab.components.queue import FeatureQueue
from contrastlab.components.shuffle_bn import shuffled_forward


def test_cosine_momentum_runs_from_base_to_final():
    assert cosine_momentum(0.996, 1.0, 0.0) == pytest.approx(0.996)
    assert cosine_momentum(0.996, 1.0, 1.0) == pytest.approx(1.0)
    assert cosine_momentum(0.996, 1.0, 0.5) == pytest.approx(0.998)
    assert cosine_momentum(0.99, 0.99, 0.3) == pytest.approx(0.99)
    values = [cosine_momentum(0.9, 1.0, p / 10) for p in range(11)]
    assert all(a <= b for a, b in zip(values, values[1:]))


def test_ema_teacher_update_matches_the_formula_and_copies_buffers():
    torch.manual_seed(0)
    backbone, head = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), nn.Linear(4, 2)
    teacher = EMATeacher(backbone, head)
    before = [p.clone() for p in teacher.parameters()]
    assert all(not p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        for p in list(backbone.parameters()) + list(head.parameters()):
            p.add_(1.0)
    backbone(torch.randn(8, 3))  # moves BN running statistics
    teacher.update(0.9, backbone, head)
    student = list(backbone.parameters()) + list(head.parameters())
    for t, b, s in zip(teacher.parameters(), before, student):
        assert torch.allclose(t, 0.9 * b + 0.1 * s)
    assert torch.equal(teacher.module[0][1].running_mean, backbone[1].running_mean)
    x = torch.randn(5, 3)
    teacher.update(0.0, backbone, head)
    teacher.eval(), backbone.eval(), head.eval()
    assert torch.allclose(teacher(x), head(backbone(x)))
    with pytest.raises(ValueError, match="momentum"):
        teacher.update(1.5, backbone, head)


def test_queue_is_fifo_and_wraps():
    queue = FeatureQueue(size=5, dim=2)
    keys = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    queue.push(keys)
    assert torch.equal(queue.features[:3], torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))
    assert int(queue.pointer) == 3
    queue.push(torch.tensor([[0.0, -1.0], [-1.0, 0.0], [0.0, 5.0]]))
    assert torch.equal(queue.features[3:], torch.tensor([[0.0, -1.0], [-1.0, 0.0]]))
    assert torch.equal(queue.features[0], torch.tensor([0.0, 1.0]))  # oldest overwritten first
    assert int(queue.pointer) == 1
    assert torch.allclose(queue.features.norm(dim=1), torch.ones(5))
    assert set(queue.state_dict()) == {"features", "pointer"}


def test_shuffled_forward_returns_rows_in_order_with_split_statistics():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).train()
    x = torch.randn(8, 4)
    out = shuffled_forward(module, x, splits=2, generator=torch.Generator().manual_seed(1))
    order = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    expected = torch.empty(8, 3)
    for chunk in order.chunk(2):  # each half normalised with its own statistics
        expected[chunk] = module(x[chunk])
    assert torch.allclose(out, expected, atol=1e-6)
    assert not torch.allclose(out, module(x), atol=1e-3)  # differs from whole-batch statistics
    assert torch.allclose(shuffled_forward(module, x, 1, torch.Generator()), module(x), atol=1e-6)
    with pytest.raises(ValueError, match="bn_splits"):
        shuffled_forward(module, x, 0, torch.Generator())
