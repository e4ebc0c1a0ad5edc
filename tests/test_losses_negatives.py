"""The negative-handling losses against slow references in float64: MMCL's kernels, QP matrices,
solvers (vs scipy's L-BFGS-B and the box-KKT conditions) and loss; the difficulty weights, the
debiased triplet loss and the weighted DCL estimator; the decoupled loss (DCL / DCLW).
Their 2-process runs: test_losses_negatives_distributed.py; the methods: test_negatives.py."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from contrastlab.losses import (
    batch_pairs,
    contrastive_loss,
    debiased_info_nce,
    debiased_triplet_loss,
    decoupled_info_nce,
    difficulty_weights,
    info_nce,
    nt_xent,
)
from contrastlab.losses import mmcl as mmcl_module
from contrastlab.losses.mmcl import (
    AnchorGram,
    KernelSpec,
    SolverSpec,
    check_gram_memory,
    gram_bytes,
    mmcl_loss,
    other_indices,
    solve_inverse,
    solve_pgd,
    svm_gram,
)

F64 = torch.float64


def unit_vectors(n, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=F64), dim=1)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ kernels and QP matrices
KERNELS = {
    "rbf": KernelSpec("rbf", sigma=0.7),
    "linear": KernelSpec("linear"),
    "poly": KernelSpec("poly", degree=3, offset=0.5),
    "tanh": KernelSpec("tanh", offset=0.5),
}


def loop_kernel(spec, u, v):
    """``K(u, v)`` of two vectors, from the formulas (the RBF from the squared distance itself)."""
    dot = sum(u[i] * v[i] for i in range(len(u)))
    if spec.kind == "rbf":
        return torch.exp(-sum((u[i] - v[i]) ** 2 for i in range(len(u))) / spec.sigma)
    if spec.kind == "linear":
        return dot
    if spec.kind == "poly":
        return (dot + spec.offset) ** spec.degree
    return torch.tanh(dot + spec.offset)


def loop_gram(spec, x, t, ridge, self_kernel=None):
    """Spec 4.1: ``(Q_t)_jk = K(x_t,x_t) - K(x_t,y_j) - K(x_t,y_k) + K(y_j,y_k) + r delta_jk`` over
    ``j, k != t``, entry by entry (``self_kernel`` replaces ``K(x_t, x_t)``: the official code's 1)."""
    others = [j for j in range(len(x)) if j != t]
    ktt = loop_kernel(spec, x[t], x[t]) if self_kernel is None else self_kernel
    return torch.stack([torch.stack([
        ktt - loop_kernel(spec, x[t], x[j]) - loop_kernel(spec, x[t], x[k]) + loop_kernel(spec, x[j], x[k])
        + (ridge if j == k else 0.0) for k in others]) for j in others])


@pytest.mark.parametrize("kind", list(KERNELS))
def test_kernels_match_their_formulas_including_the_self_kernel(kind):
    spec, u, v = KERNELS[kind], unit_vectors(4, seed=1), unit_vectors(3, seed=2)
    ref = torch.stack([torch.stack([loop_kernel(spec, u[i], v[j]) for j in range(3)]) for i in range(4)])
    torch.testing.assert_close(spec(u, v), ref, rtol=0, atol=1e-12)
    self_kernel = torch.diagonal(spec(u, u))
    expected = {"rbf": 1.0, "linear": 1.0, "poly": 1.5**3, "tanh": math.tanh(1.5)}[kind]
    torch.testing.assert_close(self_kernel, torch.full((4,), expected, dtype=F64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", list(KERNELS))
def test_svm_gram_matches_the_entrywise_formula_with_the_true_self_kernel(kind):
    """Correction A2: ``K(x_t, x_t)`` is the kernel's value, not 1 (they differ for poly/tanh)."""
    spec, x, ridge = KERNELS[kind], unit_vectors(6, seed=3), 0.3
    anchors = torch.tensor([4, 0, 2, 5])
    q = svm_gram(spec(x, x), anchors, ridge)
    assert q.shape == (4, 5, 5)
    for row, t in enumerate(anchors.tolist()):
        ref = loop_gram(spec, x, t, ridge)
        torch.testing.assert_close(q[row], ref, rtol=0, atol=1e-12)
        legacy = loop_gram(spec, x, t, ridge, self_kernel=1.0)
        differs = (ref - legacy).abs().max() > 0.05
        assert differs == (kind in ("poly", "tanh"))  # the test can tell the legacy Q apart
    torch.testing.assert_close(q, q.transpose(1, 2), rtol=0, atol=1e-12)
    if kind != "tanh":  # positive definite kernels: Q_t is a Gram matrix plus the ridge
        assert torch.linalg.eigvalsh(q).min() > ridge - 1e-10


def test_other_indices_lists_every_other_position_in_order():
    anchors = torch.tensor([3, 0, 4])
    expected = [[j for j in range(5) if j != t] for t in anchors.tolist()]
    assert other_indices(anchors, 5).tolist() == expected


@pytest.mark.parametrize("kind", list(KERNELS))
def test_anchor_gram_operator_equals_the_materialised_matrices(kind):
    spec, x = KERNELS[kind], unit_vectors(7, seed=4)
    kernel, anchors = spec(x, x), torch.tensor([1, 6, 0])
    q = svm_gram(kernel, anchors, 0.2)
    op = AnchorGram(kernel, anchors, 0.2)
    beta = torch.rand(3, 6, generator=gen(5), dtype=F64)
    embedded = op.embed(beta)  # the operator's space: the whole batch, 0 at each anchor
    assert torch.equal(embedded[torch.arange(3), anchors], torch.zeros(3, dtype=F64))
    assert torch.equal(op.extract(embedded), beta)
    product = op.matvec(embedded)
    torch.testing.assert_close(op.extract(product), torch.bmm(q, beta[:, :, None])[:, :, 0], rtol=0, atol=1e-12)
    torch.testing.assert_close(product[torch.arange(3), anchors], torch.zeros(3, dtype=F64), rtol=0, atol=1e-12)
    norms = torch.tensor([np.linalg.norm(q[i].numpy(), "fro") for i in range(3)], dtype=F64)
    torch.testing.assert_close(op.frobenius(), norms, rtol=0, atol=1e-12)
    torch.testing.assert_close(op.frobenius(chunk_elements=1), norms, rtol=0, atol=1e-12)  # one anchor a chunk


# ------------------------------------------------------------------ the box QP: solvers vs scipy
def qp_problem(n, a, seed, sigma=1.0, ridge=0.1):
    """``(a, n-1, n-1)`` QP matrices from ``n`` random unit vectors (RBF kernel)."""
    x = unit_vectors(n, seed=seed)
    return svm_gram(KernelSpec("rbf", sigma=sigma)(x, x), torch.arange(a), ridge)


def objective(q, b):
    q, b = np.asarray(q), np.asarray(b)
    return 0.5 * b @ q @ b - 2.0 * b.sum()


def scipy_box_qp(q, c):
    """A generic bound-constrained solver: L-BFGS-B with tight tolerances, from 0."""
    q = q.numpy()
    result = minimize(lambda b: (objective(q, b), q @ b - 2.0), np.zeros(len(q)), jac=True, method="L-BFGS-B",
                      bounds=[(0.0, None if c < 0 else c)] * len(q),
                      options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10000})
    # status 2 ("ABNORMAL"): the line search made no more progress at these tolerances; the
    # box-KKT conditions decide whether that point is the optimum
    assert result.status in (0, 2), result.message
    box_kkt(q, result.x, c)
    return result.x


def box_kkt(q, b, c, tol=1e-6):
    """Asserts the box-KKT conditions of ``min 1/2 b'Qb - 2 1'b`` on ``[0, C]``; returns how many
    entries sit at 0 and at C."""
    q, b = np.asarray(q), np.asarray(b)
    g = q @ b - 2.0
    lower = b <= 1e-9
    upper = (b >= c - 1e-9) if c > 0 else np.zeros_like(lower)
    free = ~lower & ~upper
    assert (b >= 0).all() and (c < 0 or (b <= c).all())
    assert np.abs(g[free]).max(initial=0) < tol, g[free]
    assert (g[lower] > -tol).all(), g[lower]
    assert (g[upper] < tol).all(), g[upper]
    return int(lower.sum()), int(upper.sum())


PROBLEMS = [(6, 3, 0), (7, 4, 1), (8, 5, 2)]


@pytest.mark.parametrize("c", [-1.0, 1.0])
@pytest.mark.parametrize("n, a, seed", PROBLEMS)
def test_pgd_reaches_the_optimum_of_a_generic_bound_constrained_solver(n, a, seed, c):
    q = qp_problem(n, a, seed)
    ref = [scipy_box_qp(q[t], c) for t in range(a)]
    counts = np.array([box_kkt(q[t], ref[t], c) for t in range(a)]).sum(axis=0)
    assert counts[0] > 0 and (c < 0 or counts[1] > 0)  # both kinds of bound are active somewhere
    eta = 1.0 / torch.linalg.eigvalsh(q).max().item()
    for momentum, stop, step in itertools.product(("nesterov", "none"), ("batch", "anchor"), ("fixed", "frobenius")):
        spec = SolverSpec(c=c, step=step, eta=eta, momentum=momentum, max_iter=5000, tol=1e-12, stop=stop,
                          dtype="float64")
        beta, iterations = solve_pgd(q, spec, gen(seed))
        assert iterations.max() < spec.max_iter, (momentum, stop, step)  # stopped by the tolerance
        for t in range(a):
            assert objective(q[t], beta[t]) == pytest.approx(objective(q[t], ref[t]), abs=1e-10)
            np.testing.assert_allclose(beta[t].numpy(), ref[t], rtol=0, atol=1e-6)
            box_kkt(q[t], beta[t], c)


@pytest.mark.parametrize("q", [qp_problem(7, 4, seed=0, sigma=0.5), qp_problem(6, 5, seed=3, ridge=5.0)],
                         ids=["narrow-kernel", "large-ridge"])
def test_closed_form_solves_q_beta_equals_two_and_is_the_optimum_when_no_bound_is_active(q):
    beta = solve_inverse(q, -1.0)
    assert (beta > 0).all()  # no bound active: the closed form is the QP's solution
    torch.testing.assert_close(torch.bmm(q, beta[:, :, None])[:, :, 0], torch.full_like(beta, 2.0),
                               rtol=0, atol=1e-10)
    for t in range(q.shape[0]):
        ref = scipy_box_qp(q[t], -1.0)
        np.testing.assert_allclose(beta[t].numpy(), ref, rtol=0, atol=1e-6)
        assert objective(q[t], beta[t]) == pytest.approx(objective(q[t], ref), abs=1e-10)
        assert box_kkt(q[t], beta[t], -1.0) == (0, 0)
    big = beta.max().item() + 1.0  # a bound above the solution changes nothing
    torch.testing.assert_close(solve_inverse(q, big), beta, rtol=0, atol=0)


def test_closed_form_clips_the_unconstrained_solution_when_bounds_are_active():
    q = qp_problem(7, 4, seed=1)
    for c in (-1.0, 1.0):
        clipped = np.clip(np.linalg.solve(q.numpy(), np.full((4, 6), 2.0)[:, :, None])[:, :, 0], 0,
                          None if c < 0 else c)
        np.testing.assert_allclose(solve_inverse(q, c).numpy(), clipped, rtol=0, atol=1e-12)
        for t in range(4):  # then only an approximation: never better than the QP's optimum
            assert objective(q[t], clipped[t]) >= objective(q[t], scipy_box_qp(q[t], c)) - 1e-12


# ------------------------------------------------------------------ PGD: steps, momentum, stopping rules
def hand_pgd(q, spec, generator):
    """Spec 4.2 + A3 in numpy, one anchor at a time, from the same random start as
    :func:`solve_pgd` (``beta_0 = P(relu(N(0, 1)))``, then ``a_0 ~ U(1e-8, 1)``)."""
    a_count, m = q.shape[:2]
    start = torch.randn((a_count, m), generator=generator, dtype=F64).relu().numpy()
    a = float(torch.empty((), dtype=F64).uniform_(1e-8, 1.0, generator=generator))
    q = q.numpy()

    def project(b):
        return np.maximum(b, 0.0) if spec.c < 0 else np.clip(b, 0.0, spec.c)

    etas = [1.0 / np.linalg.norm(q[t], "fro") if spec.step == "frobenius" else spec.eta for t in range(a_count)]
    beta = [project(start[t]) for t in range(a_count)]
    y = [b.copy() for b in beta]
    active, iterations = [True] * a_count, [0] * a_count
    for _ in range(spec.max_iter):
        new = [project(y[t] - etas[t] * (q[t] @ y[t] - 2.0)) if active[t] else beta[t] for t in range(a_count)]
        change = [np.mean(np.abs(new[t] - beta[t]) / (np.abs(beta[t]) + 1e-7)) for t in range(a_count)]
        if spec.momentum == "nesterov":
            a_next = 0.5 * (math.sqrt(a**4 + 4 * a**2) - a**2)
            gamma = a * (1 - a) / (a**2 + a_next)
            y = [new[t] + gamma * (new[t] - beta[t]) for t in range(a_count)]
            a = a_next
        else:
            y = [b.copy() for b in new]
        iterations = [iterations[t] + active[t] for t in range(a_count)]
        beta = new
        if spec.stop == "batch":
            if np.mean(change) < spec.tol:
                break
        else:
            active = [active[t] and change[t] >= spec.tol for t in range(a_count)]
            if not any(active):
                break
    return np.stack(beta), np.array(iterations, dtype=float)


@pytest.mark.parametrize("momentum, stop, step", list(itertools.product(("nesterov", "none"), ("batch", "anchor"),
                                                                        ("fixed", "frobenius"))))
@pytest.mark.parametrize("c", [-1.0, 1.0])
def test_pgd_follows_the_hand_written_iteration(momentum, stop, step, c):
    q = qp_problem(6, 3, seed=0)
    for tol in (1e-4, 0.05):  # a loose tolerance stops early, where the rule's denominator |beta_old| matters
        spec = SolverSpec(c=c, step=step, eta=0.05, momentum=momentum, max_iter=400, tol=tol, stop=stop,
                          dtype="float64")
        beta, iterations = solve_pgd(q, spec, gen(7))
        ref_beta, ref_iterations = hand_pgd(q, spec, gen(7))
        np.testing.assert_allclose(beta.numpy(), ref_beta, rtol=0, atol=1e-12)
        assert iterations.tolist() == ref_iterations.tolist()
        assert 0 < iterations.max() < spec.max_iter


def test_frobenius_step_is_one_over_each_anchors_norm():
    """A few plain projected-gradient steps by hand: ``beta <- P(beta - (Q_t beta - 2) / |Q_t|_F)``."""
    q = qp_problem(7, 4, seed=1)
    spec = SolverSpec(c=-1.0, step="frobenius", momentum="none", max_iter=3, tol=0.0, dtype="float64")
    g = gen(3)
    beta = torch.randn((4, 6), generator=g, dtype=F64).relu()
    for _ in range(3):
        beta = torch.stack([(beta[t] - (q[t] @ beta[t] - 2.0) / torch.sqrt((q[t] ** 2).sum())).clamp_min(0)
                            for t in range(4)])
    ours, iterations = solve_pgd(q, spec, gen(3))
    torch.testing.assert_close(ours, beta, rtol=0, atol=1e-12)
    assert iterations.tolist() == [3.0] * 4
    largest = torch.linalg.matrix_norm(q).max()  # one batch-wide step would be another iterate
    fixed, _ = solve_pgd(q, SolverSpec(c=-1.0, eta=1.0 / largest.item(), momentum="none", max_iter=3, tol=0.0,
                                       dtype="float64"), gen(3))
    assert (fixed - ours).abs().max() > 1e-3


def test_batch_and_anchor_stopping_differ_when_anchors_converge_at_different_speeds():
    """Additions A3: one batch-wide rule (every anchor runs as long as the batch) vs each anchor
    frozen at its own stop. Anchor 0 (Q = I) converges at once, anchor 1 (condition 100) slowly."""
    m = 5
    slow = torch.diag(torch.tensor([0.01, 0.1, 0.3, 0.6, 1.0], dtype=F64))
    rotation = torch.linalg.qr(torch.randn(m, m, generator=gen(4), dtype=F64))[0]
    q = torch.stack([torch.eye(m, dtype=F64), rotation @ slow @ rotation.T])
    base = dict(c=-1.0, eta=0.5, momentum="none", max_iter=3000, tol=1e-3, dtype="float64")
    batch_beta, batch_its = solve_pgd(q, SolverSpec(stop="batch", **base), gen(0))
    anchor_beta, anchor_its = solve_pgd(q, SolverSpec(stop="anchor", **base), gen(0))
    assert batch_its[0] == batch_its[1] < base["max_iter"]
    assert anchor_its[0] < anchor_its[1] < base["max_iter"]
    assert anchor_its[0] < batch_its[0]
    assert (batch_beta - anchor_beta).abs().max() > 1e-6  # per-anchor stopping gives different beta
    ref_beta, ref_its = hand_pgd(q, SolverSpec(stop="anchor", **base), gen(0))
    np.testing.assert_allclose(anchor_beta.numpy(), ref_beta, rtol=0, atol=1e-12)
    assert anchor_its.tolist() == ref_its.tolist()


@pytest.mark.parametrize("stop", ["batch", "anchor"])
@pytest.mark.parametrize("momentum", ["nesterov", "none"])
def test_pgd_respects_the_iteration_cap(stop, momentum):
    q = qp_problem(7, 4, seed=2)
    spec = SolverSpec(c=1.0, eta=1e-3, momentum=momentum, max_iter=7, tol=1e-12, stop=stop, dtype="float64")
    beta, iterations = solve_pgd(q, spec, gen(1))
    assert iterations.tolist() == [7.0] * 4
    ref_beta, _ = hand_pgd(q, spec, gen(1))
    np.testing.assert_allclose(beta.numpy(), ref_beta, rtol=0, atol=1e-12)


def test_pgd_on_the_operator_equals_pgd_on_the_materialised_matrices():
    x = unit_vectors(8, seed=5)
    kernel, anchors = KernelSpec("poly")(x, x), torch.tensor([2, 7, 0])
    spec = SolverSpec(c=1.0, step="frobenius", max_iter=200, tol=1e-6, dtype="float64")
    dense, dense_its = solve_pgd(svm_gram(kernel, anchors, 0.1), spec, gen(2))
    op, op_its = solve_pgd(AnchorGram(kernel, anchors, 0.1), spec, gen(2))
    torch.testing.assert_close(op, dense, rtol=0, atol=1e-10)
    assert op_its.tolist() == dense_its.tolist()


# ------------------------------------------------------------------ the MMCL loss
def reference_mmcl(z1, z2, spec, c, ridge, solve):
    """Spec 4.4 one anchor at a time: ``Q_t`` entry by entry, ``beta_t = solve(Q_t)`` as a
    constant, ``alpha_t = sum beta``, ``L = -mean_t [alpha_t K(z_t, z'_t) - sum_j beta_tj K(z_j, z'_t)]``."""
    n = z1.shape[0]
    u = [z1[i] / z1[i].norm() for i in range(n)]
    v = [z2[i] / z2[i].norm() for i in range(n)]
    total, betas, positives, negatives = z1.new_zeros(()), [], [], []
    for t in range(n):
        q = loop_gram(spec, [w.detach() for w in u], t, ridge)
        beta = torch.as_tensor(solve(q, c), dtype=F64)
        others = [j for j in range(n) if j != t]
        positive = loop_kernel(spec, u[t], v[t])
        negative = [loop_kernel(spec, u[j], v[t]) for j in others]
        total = total - (beta.sum() * positive - sum(beta[i] * negative[i] for i in range(n - 1)))
        betas.append(beta)
        positives.append(positive.detach())
        negatives += [k.detach() for k in negative]
    return total / n, torch.stack(betas), torch.stack(positives).mean(), torch.stack(negatives).mean()


def numpy_inverse(q, c):
    b = np.linalg.solve(q.numpy(), np.full(len(q), 2.0))
    return np.clip(b, 0.0, None if c < 0 else c)


def views(n=6, d=4, seed=0):
    g = gen(seed)
    return (torch.randn(n, d, generator=g, dtype=F64, requires_grad=True),
            torch.randn(n, d, generator=g, dtype=F64, requires_grad=True))


def assert_mmcl_matches(z1, z2, kernel, solver, ref, atol):
    loss, stats = mmcl_loss(z1, z2, kernel, solver, gen(0))
    ref_loss, ref_beta, ref_pos, ref_neg = ref
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=atol)
    for ours, theirs in zip(torch.autograd.grad(loss, (z1, z2)), torch.autograd.grad(ref_loss, (z1, z2))):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=atol)
    torch.testing.assert_close(stats["positive_kernel"], ref_pos, rtol=0, atol=1e-12)
    torch.testing.assert_close(stats["negative_kernel"], ref_neg, rtol=0, atol=1e-12)
    assert stats["beta_zero"].item() == pytest.approx((ref_beta == 0).double().mean().item())
    if solver.c > 0:  # additions B: at C among the support vectors
        at_c = (ref_beta == solver.c).sum().item() / max(1, (ref_beta > 0).sum().item())
        assert stats["beta_at_c"].item() == pytest.approx(at_c)
    else:
        assert stats["beta_at_c"].item() == 0
    assert all(not v.requires_grad for v in stats.values())
    return stats


@pytest.mark.parametrize("bounded", [False, True])
@pytest.mark.parametrize("kind", list(KERNELS))
def test_mmcl_loss_with_the_closed_form_matches_the_loop_reference(kind, bounded):
    spec, (z1, z2) = KERNELS[kind], views(seed=1)
    c = -1.0
    if bounded:  # a bound that clips some duals: the 70th percentile of the unbounded ones
        unbounded = reference_mmcl(z1, z2, spec, -1.0, 0.1, numpy_inverse)[1]
        c = float(torch.quantile(unbounded[unbounded > 0], 0.7))
    ref = reference_mmcl(z1, z2, spec, c, 0.1, numpy_inverse)
    solver = SolverSpec("inverse", c=c, ridge=0.1, dtype="float64")
    stats = assert_mmcl_matches(z1, z2, spec, solver, ref, atol=1e-10)
    assert stats["svm_iterations"] == 0
    if bounded:
        assert 0 < stats["beta_at_c"] < 1


@pytest.mark.parametrize("bounded", [False, True])
@pytest.mark.parametrize("kind", ["rbf", "poly"])
def test_mmcl_loss_with_projected_gradient_matches_the_loop_reference_at_the_optimum(kind, bounded):
    spec = KernelSpec("rbf", sigma=2.0) if kind == "rbf" else KERNELS[kind]  # a wide RBF: some duals at 0
    z1, z2 = views(seed=2)
    ref = reference_mmcl(z1, z2, spec, -1.0, 0.1, scipy_box_qp)
    c = float(torch.quantile(ref[1][ref[1] > 0], 0.7)) if bounded else -1.0
    if bounded:
        ref = reference_mmcl(z1, z2, spec, c, 0.1, scipy_box_qp)
    zeros = (ref[1] == 0).sum().item()
    assert zeros > 0 and (c < 0 or (ref[1] == c).sum() > 0)  # bounds active
    solver = SolverSpec("pgd", c=c, ridge=0.1, step="frobenius", max_iter=5000, tol=1e-12, dtype="float64")
    stats = assert_mmcl_matches(z1, z2, spec, solver, ref, atol=1e-7)
    assert 0 < stats["svm_iterations"] < 5000


def test_mmcl_loss_normalises_its_inputs_and_checks_shapes():
    z1, z2 = views(seed=3)
    solver = SolverSpec("inverse", dtype="float64")
    loss, _ = mmcl_loss(z1, z2, KERNELS["rbf"], solver)
    scaled, _ = mmcl_loss(3.0 * z1, 0.5 * z2, KERNELS["rbf"], solver)
    torch.testing.assert_close(scaled, loss, rtol=0, atol=1e-12)
    assert loss.dtype == F64
    with pytest.raises(ValueError, match="z1 and z2"):
        mmcl_loss(z1, z2[:4], KERNELS["rbf"], solver)
    with pytest.raises(ValueError, match="at least 2 samples"):
        mmcl_loss(z1[:1], z2[:1], KERNELS["rbf"], solver)


# ------------------------------------------------------------------ the memory check
def test_gram_bytes_counts_two_anchor_by_negative_squared_tensors():
    assert gram_bytes(3, 7, torch.float64) == 2 * 3 * 7 * 7 * 8
    assert gram_bytes(256, 255, torch.float32) == 2 * 256 * 255 * 255 * 4
    assert gram_bytes(4, 3, torch.float16) == 2 * 4 * 3 * 3 * 2


def test_gram_memory_check_names_the_batch_size_and_the_gib_needed(monkeypatch):
    monkeypatch.setattr(mmcl_module, "available_bytes", lambda device: 1 << 20)
    need = gram_bytes(1024, 1023, torch.float32) / 2**30
    with pytest.raises(MemoryError, match=r"1024 anchors x 1023 x 1023") as error:
        check_gram_memory(1024, 1023, torch.float32, torch.device("cpu"))
    assert "train.batch_size" in str(error.value) and f"needs {need:.2f} GiB" in str(error.value)
    assert f"{need:.2f}" == "7.98"
    check_gram_memory(16, 15, torch.float32, torch.device("cpu"))  # 14.4 KB fit in 1 MiB
    monkeypatch.setattr(mmcl_module, "available_bytes", lambda device: 1 << 40)
    check_gram_memory(1024, 1023, torch.float32, torch.device("cpu"))


def test_the_closed_form_loss_checks_memory_and_projected_gradient_does_not(monkeypatch):
    monkeypatch.setattr(mmcl_module, "available_bytes", lambda device: 100)
    z1, z2 = views(seed=4)
    with pytest.raises(MemoryError, match=r"6 anchors x 5 x 5 negatives \(float64\).*train.batch_size"):
        mmcl_loss(z1, z2, KERNELS["rbf"], SolverSpec("inverse", dtype="float64"))
    mmcl_loss(z1, z2, KERNELS["rbf"], SolverSpec("pgd", max_iter=3, dtype="float64"), gen(0))
    assert mmcl_module.available_bytes is not None


def test_available_bytes_reports_a_positive_amount_on_the_cpu():
    assert mmcl_module.available_bytes(torch.device("cpu")) > 0


# ------------------------------------------------------------------ difficulty weights, triplet loss, weighted DCL
def loop_difficulty_weights(neg_main, neg_biased, t):
    """Spec 3.2 step 3 per anchor row: exp(s/t), L2-normalise the row, ``1 + e_d / (e_b + e_d + 1e-6)``."""
    rows = []
    for a in range(neg_main.shape[0]):
        e_d = [math.exp(s / t) for s in neg_main[a].tolist()]
        e_b = [math.exp(s / t) for s in neg_biased[a].tolist()]
        norm_d, norm_b = math.sqrt(sum(e * e for e in e_d)), math.sqrt(sum(e * e for e in e_b))
        rows.append([1 + (d / norm_d) / (b / norm_b + d / norm_d + 1e-6) for d, b in zip(e_d, e_b)])
    return torch.tensor(rows, dtype=F64)


def cosines(n=5, m=8, seed=0, low=-1.0, high=1.0):
    g = gen(seed)
    return (torch.rand(n, m, generator=g, dtype=F64) * (high - low) + low).requires_grad_()


@pytest.mark.parametrize("t", [0.2, 0.5, 1.0])
def test_difficulty_weights_match_the_loop_lie_in_one_to_two_and_are_detached(t):
    main, biased = cosines(seed=1), cosines(seed=2)
    weights = difficulty_weights(main, biased, t)
    torch.testing.assert_close(weights, loop_difficulty_weights(main, biased, t), rtol=0, atol=1e-12)
    assert ((weights >= 1) & (weights < 2)).all()
    assert not weights.requires_grad and weights.grad_fn is None
    assert weights.shape == main.shape and weights.dtype == F64


def test_identical_encoders_give_weight_one_and_a_half():
    s = cosines(seed=3)
    weights = difficulty_weights(s, s.clone(), 0.5)
    e = torch.exp(s.detach() / 0.5)
    tilde = e / e.norm(dim=1, keepdim=True)
    torch.testing.assert_close(weights, 1 + tilde / (2 * tilde + 1e-6), rtol=0, atol=1e-12)
    deviation = 1.5 - weights  # 0.5e-6 / (2 e~ + 1e-6): only the 1e-6 of the formula
    assert (deviation > 0).all() and (deviation <= 0.25e-6 / tilde).all()


def test_difficulty_weights_order_the_negatives_by_relative_difficulty():
    """Harder for the main encoder than for the biased one: towards 2; the reverse: towards 1."""
    main = torch.tensor([[0.9, -0.9, 0.0]], dtype=F64)
    biased = torch.tensor([[-0.9, 0.9, 0.0]], dtype=F64)
    w = difficulty_weights(main, biased, 0.1)[0]
    assert w[0] > 1.99 and w[1] < 1.01 and w[1] < w[2] < w[0]


def test_difficulty_weights_survive_small_temperatures_in_float32():
    main, biased = cosines(seed=4), cosines(seed=5)  # exp(1 / 0.01) overflows float32
    weights = difficulty_weights(main.float(), biased.float(), 0.01)
    assert weights.dtype == torch.float32 and torch.isfinite(weights).all()
    ref = loop_difficulty_weights(main, biased, 0.01)
    torch.testing.assert_close(weights.double(), ref, rtol=0, atol=1e-6)


def test_difficulty_weights_reject_bad_arguments():
    s = cosines()
    with pytest.raises(ValueError, match="two \\(N, M\\)"):
        difficulty_weights(s, s[:, :3], 0.5)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        difficulty_weights(s, s, 0.0)


def reference_triplet(z1, z2, tau_plus):
    """Spec 3.2 step 2 / A7 on the stacked unit vectors ``u = [z1; z2]``: squared distances of
    the vectors themselves, ``mean_a [D+_a - (sum_j D_aj - tau+ N D+_a) / (1 - tau+)]``."""
    z = torch.cat([z1, z2])
    n, b = z.shape[0], z1.shape[0]
    u = [z[k] / z[k].norm() for k in range(n)]
    total = z.new_zeros(())
    for a in range(n):
        p = (a + b) % n
        d_pos = ((u[a] - u[p]) ** 2).sum()
        d_neg = [((u[a] - u[j]) ** 2).sum() for j in range(n) if j not in (a, p)]
        total = total + d_pos - (sum(d_neg) - tau_plus * len(d_neg) * d_pos) / (1 - tau_plus)
    return total / n


@pytest.mark.parametrize("tau_plus", [0.0, 0.1, 0.3])
def test_debiased_triplet_loss_matches_the_distance_loop(tau_plus):
    z1, z2 = views(n=4, d=3, seed=5)
    ours = debiased_triplet_loss(*batch_pairs(z1, z2), tau_plus)
    ref = reference_triplet(z1, z2, tau_plus)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    for a, b in zip(torch.autograd.grad(ours, (z1, z2)), torch.autograd.grad(ref, (z1, z2))):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_debiased_triplet_loss_weights_per_a7():
    """Affine in the similarities: d/d pos = -2 (1 + tau+ M / (1 - tau+)) / N, d/d neg = 2 / ((1 - tau+) N)."""
    pos, neg = cosines(n=3, m=4, seed=6)[:, 0].detach().requires_grad_(), cosines(n=3, m=4, seed=7)
    g_pos, g_neg = torch.autograd.grad(debiased_triplet_loss(pos, neg, 0.1), (pos, neg))
    torch.testing.assert_close(g_pos, torch.full((3,), -2 * (1 + 0.1 * 4 / 0.9) / 3, dtype=F64))
    torch.testing.assert_close(g_neg, torch.full((3, 4), 2 / (0.9 * 3), dtype=F64))
    with pytest.raises(ValueError, match="tau_plus must be in"):
        debiased_triplet_loss(pos, neg, 1.0)


def reference_weighted_dcl(pos, neg, weights, t, tau_plus):
    """Additions C: ``Ng = max((sum_j w_j e^{neg/t} - tau+ N e^{pos/t}) / (1 - tau+), N e^{-1/t})``,
    ``L = mean_a -log(e^{pos/t} / (e^{pos/t} + Ng))``, unshifted exponentials, one anchor at a time."""
    total, clamped = pos.new_zeros(()), []
    m = neg.shape[1]
    for a in range(neg.shape[0]):
        e_pos = torch.exp(pos[a] / t)
        weighted = sum(weights[a, j] * torch.exp(neg[a, j] / t) for j in range(m))
        estimate = (weighted - tau_plus * m * e_pos) / (1 - tau_plus)
        floor = torch.tensor(m * math.exp(-1 / t), dtype=F64)
        clamped.append(bool(estimate < floor))
        total = total - torch.log(e_pos / (e_pos + torch.maximum(estimate, floor)))
    return total / neg.shape[0], clamped


@pytest.mark.parametrize("t, tau_plus", [(0.5, 0.1), (0.2, 0.05), (0.5, 0.0)])
def test_weighted_dcl_matches_the_loop_with_difficulty_weights(t, tau_plus):
    neg, neg_b = cosines(seed=8), cosines(seed=9)
    pos = cosines(n=5, m=1, seed=10)[:, 0].detach().requires_grad_()
    weights = difficulty_weights(neg, neg_b, t)
    ours = debiased_info_nce(pos, neg, t, tau_plus, log_weights=weights.log())
    ref, clamped = reference_weighted_dcl(pos, neg, weights, t, tau_plus)
    assert not any(clamped)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
    for a, b in zip(torch.autograd.grad(ours, (pos, neg)), torch.autograd.grad(ref, (pos, neg))):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    unweighted = debiased_info_nce(pos, neg, t, tau_plus)
    assert (ours - unweighted).abs() > 1e-3  # the weights matter


def test_weighted_dcl_honours_the_floor_per_anchor():
    neg = cosines(n=4, m=5, seed=11, low=-0.3, high=0.3)
    pos = cosines(n=4, m=1, seed=12, low=-0.3, high=0.3)[:, 0].detach()
    with torch.no_grad():
        pos[0], neg[0] = 0.99, -0.9
    pos.requires_grad_()
    weights = 1 + torch.rand(4, 5, generator=gen(13), dtype=F64)
    ours = debiased_info_nce(pos, neg, 0.5, 0.4, log_weights=weights.log())
    ref, clamped = reference_weighted_dcl(pos, neg, weights, 0.5, 0.4)
    assert clamped == [True, False, False, False]
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
    for a, b in zip(torch.autograd.grad(ours, (pos, neg)), torch.autograd.grad(ref, (pos, neg))):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_zero_log_weights_are_dcl():
    neg = cosines(seed=14)
    pos = cosines(n=5, m=1, seed=15)[:, 0].detach().requires_grad_()
    ours = debiased_info_nce(pos, neg, 0.5, 0.1, beta=2.0, log_weights=torch.zeros_like(neg))  # beta unused
    dcl = contrastive_loss(pos, neg, 0.5, "dcl", tau_plus=0.1)
    torch.testing.assert_close(ours, dcl, rtol=0, atol=1e-12)
    for a, b in zip(torch.autograd.grad(ours, (pos, neg)), torch.autograd.grad(dcl, (pos, neg))):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="log_weights must have the shape of neg"):
        debiased_info_nce(pos, neg, 0.5, 0.1, log_weights=torch.zeros(5, 3, dtype=F64))


# ------------------------------------------------------------------ the decoupled loss (DCL / DCLW)
def reference_decoupled(pos, neg, t, sigma=None):
    """``L_a = -w_a pos_a / t + log sum_j exp(neg_aj / t)`` (no positive in the denominator),
    ``w_a = 2 - n exp(pos_a / sigma) / sum_b exp(pos_b / sigma)`` or 1, one anchor at a time."""
    n, m = neg.shape
    total = pos.new_zeros(())
    for a in range(n):
        w = 1.0
        if sigma is not None:
            w = 2 - n * torch.exp(pos[a] / sigma) / sum(torch.exp(pos[b] / sigma) for b in range(n))
        total = total - w * pos[a] / t + torch.log(sum(torch.exp(neg[a, j] / t) for j in range(m)))
    return total / n


@pytest.mark.parametrize("t, sigma", [(0.5, None), (0.1, None), (0.5, 0.5), (0.2, 0.1)])
def test_decoupled_loss_matches_the_loop(t, sigma):
    neg = cosines(seed=16)
    pos = cosines(n=5, m=1, seed=17)[:, 0].detach().requires_grad_()
    ours = decoupled_info_nce(pos, neg, t, sigma)
    ref = reference_decoupled(pos, neg, t, sigma)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
    g_ours, g_ref = torch.autograd.grad(ours, (pos, neg)), torch.autograd.grad(ref, (pos, neg))
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    if sigma is not None:  # the weights carry gradient: a detached weighting differs
        detached = (torch.logsumexp(neg / t, 1)
                    - (2 - 5 * torch.softmax(pos.detach() / sigma, 0)) * pos / t).mean()
        assert (torch.autograd.grad(detached, pos)[0] - g_ours[0]).abs().max() > 1e-3
        torch.testing.assert_close(torch.autograd.grad(detached, neg)[0], g_ours[1], rtol=0, atol=1e-12)


def test_decoupled_loss_leaves_the_positive_out_of_the_denominator():
    neg = cosines(seed=18)
    pos = cosines(n=5, m=1, seed=19)[:, 0].detach()
    # InfoNCE = decoupled + mean log(1 + e^{pos/t} / sum_j e^{neg_j/t})
    gap = torch.log1p(torch.exp(pos / 0.5) / torch.exp(neg / 0.5).sum(1)).mean()
    torch.testing.assert_close(info_nce(pos, neg, 0.5), decoupled_info_nce(pos, neg, 0.5) + gap, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="vmf_sigma must be > 0"):
        decoupled_info_nce(pos, neg, 0.5, vmf_sigma=0.0)


@pytest.mark.parametrize("sigma", [None, 0.5])
def test_nt_xent_decoupled_matches_lightlys_two_directions(sigma):
    """From the vectors: each view in turn is the anchor set (B anchors, von Mises-Fisher weights
    over those B), negatives = the other 2B - 2 embeddings; the mean of the two directions."""
    z1, z2 = views(n=4, d=3, seed=20)
    ours = nt_xent(z1, z2, 0.5, kind="decoupled", vmf_sigma=sigma)
    u = [z1[i] / z1[i].norm() for i in range(4)]
    v = [z2[i] / z2[i].norm() for i in range(4)]
    directions = []
    for a_set, b_set in ((u, v), (v, u)):
        pos = [a_set[i] @ b_set[i] for i in range(4)]
        total = z1.new_zeros(())
        for i in range(4):
            w = 1.0 if sigma is None else 2 - 4 * torch.exp(pos[i] / sigma) / sum(torch.exp(p / sigma) for p in pos)
            negatives = [a_set[i] @ a_set[j] for j in range(4) if j != i] + [a_set[i] @ b_set[j] for j in range(4) if j != i]
            total = total - w * pos[i] / 0.5 + torch.log(sum(torch.exp(s / 0.5) for s in negatives))
        directions.append(total / 4)
    ref = (directions[0] + directions[1]) / 2
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    for a, b in zip(torch.autograd.grad(ours, (z1, z2)), torch.autograd.grad(ref, (z1, z2))):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
