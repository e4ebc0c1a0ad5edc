"""Meta-learning core: the virtual SGD step against real ``torch.optim.SGD`` steps, and the three
meta-gradient orders against central finite differences of the unrolled objective, whose inner
step is a real optimiser step on a copy of the encoder (float64, smooth networks)."""

import copy
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from contrastlab.components.meta import SGDStep, functional_forward, inner_gradients, meta_gradient
from contrastlab.core.optim import LARS, parameter_groups
from contrastlab.losses.logsumexp import log_softmax

BATCH, IN, HIDDEN, DIM = 8, 3, 6, 4
LR = 0.5  # large, so the second-order term is a sizeable part of the meta-gradient
EPS = 1e-6


def make_encoder(batchnorm: bool) -> nn.Module:
    norm = [nn.BatchNorm1d(HIDDEN)] if batchnorm else []
    return nn.Sequential(nn.Linear(IN, HIDDEN), *norm, nn.Tanh(), nn.Linear(HIDDEN, DIM)).double().train()


def make_sgd(module: nn.Module, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """Two param groups like the project's: decayed weights, undecayed biases/norms."""
    weights = [p for p in module.parameters() if p.ndim > 1]
    others = [p for p in module.parameters() if p.ndim <= 1]
    groups = [{"params": weights, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=LR, momentum=momentum)


def views(h, outer):
    """h: (B, DIM) -> masked (B, DIM) (MetaMask-like mask), augmented (B, DIM) (MetAug-like
    generator MLP)."""
    mask, w1, b1, w2, b2 = outer
    masked = h * torch.sigmoid(mask)
    return masked, torch.tanh(masked @ w1.T + b1) @ w2.T + b2


def cross_entropy_on_diagonal(logits):
    """Cross-entropy with the diagonal as targets, differentiable through forward mode."""
    return -log_softmax(logits, dim=1).diagonal().mean()


def inner_objective(h, outer):
    masked, augmented = views(h, outer)
    return cross_entropy_on_diagonal(F.normalize(masked, dim=1) @ F.normalize(augmented, dim=1).T / 0.5)


def outer_objective(h, outer):
    masked, augmented = views(h, outer)
    logits = F.normalize(augmented, dim=1) @ F.normalize(masked, dim=1).T / 0.2
    return cross_entropy_on_diagonal(logits) + 0.1 * masked.pow(2).mean()


@dataclass
class Case:
    encoder: nn.Module
    optimizer: torch.optim.SGD
    outer: list
    x: torch.Tensor

    def losses(self, inner_obj=inner_objective, outer_obj=outer_objective):
        """(inner_loss, outer_loss) as functions of the encoder's parameter dict."""
        def inner(theta):
            return inner_obj(functional_forward(self.encoder, theta, self.x), self.outer)

        def outer(theta):
            return outer_obj(functional_forward(self.encoder, theta, self.x), self.outer)

        return inner, outer

    def meta(self, order, inner_obj=inner_objective, outer_obj=outer_objective, **kwargs):
        theta = dict(self.encoder.named_parameters())
        step = SGDStep.like(self.optimizer, theta)
        return meta_gradient(self.outer, theta, *self.losses(inner_obj, outer_obj), step, order=order, **kwargs)


def make_case(batchnorm: bool, momentum: float, weight_decay: float) -> Case:
    torch.manual_seed(0)
    encoder = make_encoder(batchnorm)
    optimizer = make_sgd(encoder, momentum, weight_decay)
    x = torch.randn(BATCH, IN, dtype=torch.float64)
    shapes = [(DIM,), (DIM, DIM), (DIM,), (DIM, DIM), (DIM,)]
    outer = [(0.7 * torch.randn(s, dtype=torch.float64)).requires_grad_() for s in shapes]
    encoder(torch.randn(BATCH, IN, dtype=torch.float64)).sin().sum().backward()  # fills momentum buffers
    optimizer.step()  # and moves BN running statistics off their initial values
    optimizer.zero_grad(set_to_none=True)
    return Case(encoder, optimizer, outer, x)


CASES = {
    "plain": (False, 0.0, 0.0),
    "batchnorm": (True, 0.0, 0.0),
    "momentum+wd": (False, 0.9, 0.05),
    "batchnorm+momentum+wd": (True, 0.9, 0.05),
}


def real_step_copy(case: Case, outer_values, inner_obj=inner_objective) -> nn.Module:
    """A copy of the encoder after one real step of (a copy of) its optimiser on inner_obj."""
    encoder = copy.deepcopy(case.encoder)
    optimizer = make_sgd(encoder, momentum=0.0, weight_decay=0.0)
    # hyper-parameters and momentum buffers; a deep copy, as loading shares the buffer tensors
    optimizer.load_state_dict(copy.deepcopy(case.optimizer.state_dict()))
    inner_obj(encoder(case.x), outer_values).backward()
    optimizer.step()
    return encoder


def central_differences(function, values):
    """d function / d values (a list of tensors) by central differences, one entry at a time."""
    values = [v.detach().clone() for v in values]
    grads = []
    for value in values:
        grad = torch.zeros_like(value)
        flat, flat_grad = value.view(-1), grad.view(-1)
        for j in range(flat.numel()):
            original = flat[j].item()
            flat[j] = original + EPS
            up = function(values)
            flat[j] = original - EPS
            down = function(values)
            flat[j] = original
            flat_grad[j] = (up - down) / (2 * EPS)
        grads.append(grad)
    return grads


def unrolled_objective_fd(case, inner_obj=inner_objective, outer_obj=outer_objective):
    """dF/dm for F(m) = outer_obj(encoder after a real step on inner_obj(.; m); m)."""
    def unrolled(values):
        return outer_obj(real_step_copy(case, values, inner_obj)(case.x), values).item()

    return central_differences(unrolled, case.outer)


def assert_all_close(got, expected, **tolerances):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, **tolerances)


def relative_difference(a, b):
    flat_a, flat_b = torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b])
    return ((flat_a - flat_b).norm() / flat_b.norm()).item()


# --- functional_forward ---------------------------------------------------------------------


def test_functional_forward_uses_the_given_weights_and_batch_statistics_only():
    case = make_case(batchnorm=True, momentum=0.0, weight_decay=0.0)
    encoder = case.encoder
    own = {name: p.detach().clone() for name, p in encoder.named_parameters()}
    buffers = {name: b.clone() for name, b in encoder.named_buffers()}
    theta = {name: p + 0.3 * torch.randn_like(p) for name, p in own.items()}

    def reference():
        """A copy of the encoder holding theta (a fresh one each time: its forward in training
        mode moves its running statistics)."""
        module = copy.deepcopy(encoder)
        with torch.no_grad():
            for name, p in module.named_parameters():
                p.copy_(theta[name])
        return module

    torch.testing.assert_close(functional_forward(encoder, theta, case.x), reference()(case.x))
    for name, b in encoder.named_buffers():
        assert torch.equal(b, buffers[name]), name  # running statistics and num_batches_tracked
    for name, p in encoder.named_parameters():
        assert torch.equal(p, own[name]), name
    assert all(m.track_running_stats for m in encoder.modules() if isinstance(m, nn.BatchNorm1d))

    encoder.eval()  # eval mode: the running statistics are used
    torch.testing.assert_close(functional_forward(encoder, theta, case.x), reference()(case.x))


def test_functional_forward_rejects_unknown_names():
    with pytest.raises(ValueError, match="2.wieght"):
        functional_forward(make_encoder(False), {"2.wieght": torch.zeros(1)}, torch.zeros(2, IN))


# --- the virtual SGD step -------------------------------------------------------------------


@pytest.mark.parametrize("warm", [False, True], ids=["first-step", "with-buffers"])
def test_virtual_step_matches_a_real_sgd_step(warm):
    torch.manual_seed(1)
    encoder = make_encoder(batchnorm=True)
    optimizer = make_sgd(encoder, momentum=0.9, weight_decay=0.05)
    x = torch.randn(BATCH, IN, dtype=torch.float64)
    if warm:
        encoder(x).sin().sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    theta = dict(encoder.named_parameters())
    grads = inner_gradients(encoder(x).pow(2).mean(), theta, create_graph=False)
    grads["0.bias"] = None  # a parameter without gradient is skipped by SGD
    before = {name: p.detach().clone() for name, p in theta.items()}
    state_before = copy.deepcopy(optimizer.state_dict())

    stepped = SGDStep.like(optimizer, theta).virtual_step(theta, grads)

    assert str(optimizer.state_dict()) == str(state_before)
    for name, p in theta.items():
        assert torch.equal(p, before[name]), name
        p.grad = grads[name]
    optimizer.step()
    for name, p in theta.items():
        torch.testing.assert_close(stepped[name], p.detach(), rtol=1e-13, atol=1e-15)
    assert torch.equal(stepped["0.bias"], before["0.bias"])


@pytest.mark.parametrize("warm", [False, True], ids=["first-step", "with-buffers"])
def test_virtual_step_matches_a_real_lars_step(warm):
    """Weights adapted and decayed, biases / norms plain momentum (the project's LARS groups)."""
    torch.manual_seed(1)
    encoder = make_encoder(batchnorm=True)
    optimizer = LARS(parameter_groups(encoder.parameters(), weight_decay=0.05), lr=0.7, momentum=0.9, trust=0.02)
    x = torch.randn(BATCH, IN, dtype=torch.float64)
    if warm:
        encoder(x).sin().sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    theta = dict(encoder.named_parameters())
    grads = inner_gradients(encoder(x).pow(2).mean(), theta, create_graph=False)
    step = SGDStep.like(optimizer, theta, grads)
    assert set(step.scale) == {name for name, p in theta.items() if p.ndim > 1}
    stepped = step.virtual_step(theta, grads)
    for name, p in theta.items():
        p.grad = grads[name]
    optimizer.step()
    for name, p in theta.items():
        torch.testing.assert_close(stepped[name], p.detach(), rtol=1e-13, atol=1e-15)
    with pytest.raises(ValueError, match="needs the gradient its trust ratios"):
        SGDStep.like(optimizer, theta)


def test_virtual_step_is_differentiable_in_params_and_grads():
    torch.manual_seed(2)
    theta, grad = torch.randn(3, 2, dtype=torch.float64, requires_grad=True), torch.randn(3, 2, dtype=torch.float64)
    grad.requires_grad_()
    step = SGDStep(0.3, momentum=0.9, weight_decay=0.1, momentum_buffers={"w": torch.randn(3, 2, dtype=torch.float64)})
    assert torch.autograd.gradcheck(lambda t, g: step.virtual_step({"w": t}, {"w": g})["w"], (theta, grad))


@pytest.mark.parametrize("optimizer, match", [
    (lambda p: torch.optim.Adam(p), "torch.optim.SGD"),
    (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True), "nesterov"),
    (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1), "dampening"),
    (lambda p: torch.optim.SGD([{"params": p[:1], "lr": 0.1}, {"params": p[1:], "lr": 0.2}]),
     "different learning rates"),
    (lambda p: torch.optim.SGD(p[1:], lr=0.1), "'0.weight' is not in the optimizer"),
])
def test_sgd_step_like_rejects_what_it_cannot_mimic(optimizer, match):
    encoder = make_encoder(False)
    with pytest.raises(ValueError, match=match):
        SGDStep.like(optimizer(list(encoder.parameters())), dict(encoder.named_parameters()))


# --- meta-gradients against finite differences ----------------------------------------------


@pytest.mark.parametrize("case_name", CASES)
@pytest.mark.parametrize("second_order", ["jvp", "unrolled"])
def test_second_order_equals_finite_differences_of_the_unrolled_objective(case_name, second_order):
    case = make_case(*CASES[case_name])
    got = case.meta("second", second_order=second_order).outer_grads
    assert_all_close(got, unrolled_objective_fd(case), rtol=1e-5, atol=5e-9)


@pytest.mark.parametrize("case_name", CASES)
def test_forward_mode_and_unrolled_second_order_agree(case_name):
    case = make_case(*CASES[case_name])
    jvp, unrolled = (case.meta("second", second_order=mode).outer_grads for mode in ("jvp", "unrolled"))
    assert_all_close(jvp, unrolled, rtol=1e-10, atol=1e-14)


def test_forward_mode_second_order_under_autocast_runs_in_the_autocast_dtype():
    """bf16 autocast (CPU): the jvp pass casts the weights, and the meta-gradient stays within
    bf16 error of the fp32 one."""
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                            nn.Flatten(), nn.Linear(8, DIM))
    x = torch.randn(16, 3, 8, 8)
    outer = [(0.7 * torch.randn(s)).requires_grad_() for s in [(DIM,), (DIM, DIM), (DIM,), (DIM, DIM), (DIM,)]]
    theta = dict(encoder.named_parameters())
    dtypes = []

    def inner(params):
        h = functional_forward(encoder, params, x)
        dtypes.append(h.dtype)
        return inner_objective(h.float(), outer)

    def outer_loss(params):
        return outer_objective(functional_forward(encoder, params, x).float(), outer)

    reference = meta_gradient(outer, theta, inner, outer_loss, LR, second_order="unrolled").outer_grads
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dtypes.clear()
        got = meta_gradient(outer, theta, inner, outer_loss, LR).outer_grads
    assert dtypes == [torch.bfloat16, torch.bfloat16]  # the real-step loss, then the jvp pass
    assert relative_difference(got, reference) < 0.05
    assert relative_difference(got, meta_gradient(outer, theta, inner, outer_loss, LR, order="first").outer_grads) > 0


@pytest.mark.parametrize("case_name", ["plain", "batchnorm+momentum+wd"])
def test_first_order_is_the_direct_term_only(case_name):
    case = make_case(*CASES[case_name])
    stepped = real_step_copy(case, [v.detach() for v in case.outer])  # theta+ frozen
    direct = central_differences(lambda values: outer_objective(stepped(case.x), values).item(), case.outer)
    got = case.meta("first").outer_grads
    assert_all_close(got, direct, rtol=1e-5, atol=1e-9)
    # the second-order term is ~0.3-0.6 % of the meta-gradient here, far above the 1e-8 noise
    assert relative_difference(got, case.meta("second").outer_grads) > 1e-3


@pytest.mark.parametrize("case_name", CASES)
@pytest.mark.parametrize("same_loss", [False, True], ids=["darts", "metamask-reference"])
def test_finite_difference_order_approximates_second_order(case_name, same_loss):
    case = make_case(*CASES[case_name])
    losses = dict(inner_obj=outer_objective) if same_loss else {}
    first, second, fd = (case.meta(order, **losses).outer_grads for order in ("first", "second", "finite_difference"))
    correction = [s - f for s, f in zip(second, first)]
    fd_correction = [d - f for d, f in zip(fd, first)]
    assert relative_difference(fd_correction, correction) < 1e-3
    assert relative_difference(fd, second) < 1e-4
    tighter = case.meta("finite_difference", fd_radius=1e-3, **losses).outer_grads
    assert relative_difference(tighter, second) < relative_difference(fd, second)


# --- bookkeeping: nothing touched, one gradient shared --------------------------------------


@pytest.mark.parametrize("order, second_order", [("second", "jvp"), ("second", "unrolled"), ("first", "jvp"),
                                                 ("finite_difference", "jvp")])
def test_meta_gradient_leaves_module_optimizer_and_grads_untouched(order, second_order):
    case = make_case(*CASES["batchnorm+momentum+wd"])
    params = {name: p.detach().clone() for name, p in case.encoder.named_parameters()}
    buffers = {name: b.clone() for name, b in case.encoder.named_buffers()}
    state = str(case.optimizer.state_dict())
    result = case.meta(order, second_order=second_order)
    for name, p in case.encoder.named_parameters():
        assert torch.equal(p, params[name]) and p.grad is None, name
    for name, b in case.encoder.named_buffers():
        assert torch.equal(b, buffers[name]), name
    assert str(case.optimizer.state_dict()) == state
    assert all(m.grad is None for m in case.outer)
    assert all(not g.requires_grad for g in result.outer_grads)
    assert [g.shape for g in result.outer_grads] == [m.shape for m in case.outer]


def test_one_inner_gradient_serves_the_real_step_and_the_virtual_step():
    case = make_case(*CASES["batchnorm+momentum+wd"])
    theta = dict(case.encoder.named_parameters())
    inner, outer = case.losses()
    step = SGDStep.like(case.optimizer, theta)
    grads = inner_gradients(inner(theta), theta, create_graph=True)  # one forward, one gradient

    shared = meta_gradient(case.outer, theta, inner, outer, step, second_order="unrolled", inner_grads=grads)
    assert_all_close(shared.outer_grads, case.meta("second", second_order="unrolled").outer_grads, rtol=1e-12, atol=0)
    detached = {name: g.detach() for name, g in grads.items()}
    forward_mode = meta_gradient(case.outer, theta, inner, outer, step, inner_grads=detached)  # needs no graph
    assert_all_close(forward_mode.outer_grads, shared.outer_grads, rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="create_graph=True"):
        meta_gradient(case.outer, theta, inner, outer, step, second_order="unrolled", inner_grads=detached)

    expected_stepped = step.virtual_step(theta, shared.inner_grads)
    for name, p in theta.items():  # the real step, from the same gradient, after the meta-gradient
        p.grad = shared.inner_grads[name]
    case.optimizer.step()
    for name, p in theta.items():
        torch.testing.assert_close(p.detach(), expected_stepped[name].detach(), rtol=1e-13, atol=1e-15)


def test_a_learning_rate_means_a_plain_gradient_step():
    case = make_case(*CASES["plain"])
    theta = dict(case.encoder.named_parameters())
    got = meta_gradient(case.outer, theta, *case.losses(), LR).outer_grads
    assert_all_close(got, case.meta("second").outer_grads, rtol=1e-12, atol=0)


@pytest.mark.parametrize("change, match", [
    (dict(order="third"), "order must be one of"),
    (dict(second_order="reverse"), "second_order must be one of"),
    (dict(step=0.0), "lr must be > 0"),
    (dict(outer_params=[]), "outer_params is empty"),
    (dict(outer_params=[torch.zeros(2)]), "outer_params at positions \\[0\\]"),
    (dict(inner_params={}), "inner_params is empty"),
    (dict(fd_radius=0.0), "fd_radius must be > 0"),
    (dict(inner_loss=lambda theta: torch.zeros(2)), "inner_loss must return a scalar"),
    (dict(outer_loss=lambda theta: torch.zeros(2)), "outer_loss must return a scalar"),
], ids=lambda v: str(v)[:20])
def test_meta_gradient_rejects_bad_arguments(change, match):
    case = make_case(*CASES["plain"])
    inner, outer = case.losses()
    arguments = dict(outer_params=case.outer, inner_params=dict(case.encoder.named_parameters()),
                     inner_loss=inner, outer_loss=outer, step=LR) | change
    with pytest.raises(ValueError, match=match):
        meta_gradient(**arguments)


@pytest.mark.parametrize("settings, match", [
    (dict(lr=-1.0), "lr must be > 0"),
    (dict(lr=0.1, momentum={"w": -0.9}), "momentum must be >= 0"),
    (dict(lr=0.1, weight_decay=-1e-4), "weight_decay must be >= 0"),
])
def test_sgd_step_rejects_bad_settings(settings, match):
    with pytest.raises(ValueError, match=match):
        SGDStep(**settings)


def test_virtual_step_rejects_unknown_and_missing_names():
    step = SGDStep(0.1, weight_decay={"w": 0.1})
    with pytest.raises(ValueError, match="'v'"):
        step.virtual_step({"w": torch.zeros(2)}, {"v": torch.zeros(2)})
    with pytest.raises(ValueError, match="weight_decay has no value for parameter 'u'"):
        step.virtual_step({"u": torch.zeros(2)}, {"u": torch.zeros(2)})


def test_inner_gradients_name_frozen_parameters():
    encoder = make_encoder(False)
    encoder[0].bias.requires_grad_(False)
    with pytest.raises(ValueError, match="0.bias"):
        inner_gradients(encoder(torch.zeros(2, IN, dtype=torch.float64)).sum(),
                        dict(encoder.named_parameters()), create_graph=False)
