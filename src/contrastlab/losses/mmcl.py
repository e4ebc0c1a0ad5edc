"""Max-Margin Contrastive Learning (MMCL; Shah, Sra, Chellappa, Cherian, AAAI 2022).

Per anchor ``t`` of view 1, a kernel SVM separates the anchor (label +1) from the other samples
of the (global) view-1 batch (label -1). With one positive, the dual's equality constraint
gives ``alpha_t = sum_j beta_j`` and leaves a box-constrained QP in the negatives' duals
``beta: (M,)``, ``M = N - 1``::

    min_{0 <= beta <= C}  1/2 beta^T Q_t beta - 2 * 1^T beta,
    (Q_t)_jk = K(z_t, z_t) - K(z_t, z_j) - K(z_t, z_k) + K(z_j, z_k) + r delta_jk

(ridge ``r``; ``C = -1``: no upper bound). It is solved without gradients (closed form or
projected gradient), and the encoder maximises the SVM's score of the anchor's *other view*
``z'_t`` (bias left out)::

    L = -(1/B) sum_t [alpha_t K(z_t, z'_t) - sum_{j != t} beta_tj K(z_j, z'_t)]

with gradients through the kernel values only. ``K(z_t, z_t)`` is the kernel's true value for
every kernel (the official code takes 1, right only for the RBF and linear kernels on unit
vectors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from contrastlab.core.distributed import all_reduce_mean, gather_with_grad, rank_and_world

KERNELS = ("rbf", "linear", "poly", "tanh")
SOLVERS = ("pgd", "inverse")


@dataclass(frozen=True)
class KernelSpec:
    """A kernel on unit vectors.

    Attributes:
        kind: ``rbf``: ``exp(-|u - v|^2 / sigma)`` (``sigma`` divides the squared distance, as
            in the official code's "gamma"); ``linear``: ``u.v``; ``poly``:
            ``(u.v + offset)^degree``; ``tanh``: ``tanh(u.v + offset)``.
    """

    kind: Literal["rbf", "linear", "poly", "tanh"] = "rbf"
    sigma: float = 10.0
    degree: int = 3
    offset: float = 0.5

    def __call__(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``(N, D), (M, D)`` unit rows -> ``(N, M)`` kernel values."""
        dot = u @ v.T
        if self.kind == "rbf":
            return torch.exp(-(2.0 - 2.0 * dot).clamp_min(0.0) / self.sigma)
        if self.kind == "linear":
            return dot
        if self.kind == "poly":
            return (dot + self.offset) ** self.degree
        if self.kind == "tanh":
            return torch.tanh(dot + self.offset)
        raise ValueError(f"unknown kernel '{self.kind}'; expected one of {', '.join(KERNELS)}")


@dataclass(frozen=True)
class SolverSpec:
    """How the box QP is solved (see :func:`solve_inverse` and :func:`solve_pgd`)."""

    solver: Literal["pgd", "inverse"] = "pgd"
    c: float = -1.0  # box bound; -1: none
    ridge: float = 0.1
    step: Literal["fixed", "frobenius"] = "fixed"
    eta: float = 1e-3
    momentum: Literal["nesterov", "none"] = "nesterov"
    max_iter: int = 1000
    tol: float = 1e-2
    stop: Literal["batch", "anchor"] = "batch"
    dtype: Literal["float32", "float64"] = "float32"


def other_indices(anchors: torch.Tensor, n: int) -> torch.Tensor:
    """``(A,)`` anchor positions in ``range(n)`` -> ``(A, n - 1)`` every other position, in order."""
    grid = torch.arange(n - 1, device=anchors.device).expand(len(anchors), n - 1)
    return grid + (grid >= anchors[:, None]).long()


def gram_bytes(anchors: int, negatives: int, dtype: torch.dtype) -> int:
    """Bytes the QP of :func:`svm_gram` and its solver hold at most at once: two ``(A, M, M)``
    tensors (the Gram tensor and the kernel rows it is gathered from, or the factorised copy
    of the closed form)."""
    return 2 * anchors * negatives * negatives * torch.empty((), dtype=dtype).element_size()


def available_bytes(device: torch.device) -> int:
    """Free memory on ``device``: ``torch.cuda.mem_get_info`` on CUDA, ``MemAvailable`` of
    ``/proc/meminfo`` on the CPU (no limit known elsewhere: a very large number)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def check_gram_memory(anchors: int, negatives: int, dtype: torch.dtype, device: torch.device) -> None:
    """Raise ``MemoryError`` naming ``train.batch_size`` when the QP would not fit in the free
    memory of ``device``, before anything is allocated."""
    need, free = gram_bytes(anchors, negatives, dtype), available_bytes(device)
    if need > free:
        raise MemoryError(
            f"MMCL's Gram tensor for {anchors} anchors x {negatives} x {negatives} negatives "
            f"({str(dtype).removeprefix('torch.')}) needs {need / 2**30:.2f} GiB, "
            f"but {device} has {free / 2**30:.2f} GiB free; lower train.batch_size (the tensor grows as "
            f"its cube) or use method.svm_dtype=float32"
        )


def svm_gram(kernel: torch.Tensor, anchors: torch.Tensor, ridge: float) -> torch.Tensor:
    """The per-anchor QP matrices, materialised (the closed form needs them).

    Args:
        kernel: ``(N, N)`` kernel values among the view-1 batch (detached).
        anchors: ``(A,)`` positions of the anchors in that batch.
        ridge: ``r`` added to every diagonal.
    Returns:
        ``(A, N - 1, N - 1)``: ``Q_t`` over the negatives of anchor ``t`` (every other sample,
        in order).
    """
    others = other_indices(anchors, kernel.shape[0])
    a, m = others.shape
    q = kernel[others].gather(2, others[:, None, :].expand(a, m, m))  # K(z_j, z_k); index not materialised
    cross = kernel[anchors[:, None], others]  # (A, M): K(z_t, z_j)
    q.sub_(cross[:, :, None]).sub_(cross[:, None, :]).add_(kernel[anchors, anchors][:, None, None])
    q.diagonal(dim1=1, dim2=2).add_(ridge)
    return q


class AnchorGram:
    """The QP matrices ``Q_t`` of :func:`svm_gram` as an operator, never materialised:
    ``O(A N)`` memory instead of ``O(A N^2)``, and one ``(A, N) x (N, N)`` matrix product per
    product ``Q beta`` instead of a batched matrix-vector product over ``A N^2`` values.

    It works in the space of the whole batch: ``x: (A, N)`` holds anchor ``t``'s duals at its
    negatives and 0 at ``t`` itself (:meth:`embed`, :meth:`extract`, :meth:`pin`). With
    ``s = 1^T x_t`` and ``p = K x_t``: ``(Q_t x_t)_j = p_j - K_tj s - p_t + K_tt s + r x_tj``
    (``p_t = sum_k K_tk x_tk`` because ``x_tt = 0``), which is 0 at ``j = t``.

    Args:
        kernel: ``(N, N)`` symmetric kernel values among the view-1 batch (detached).
        anchors: ``(A,)`` positions of the anchors; ridge: ``r``.
    """

    def __init__(self, kernel: torch.Tensor, anchors: torch.Tensor, ridge: float) -> None:
        self.kernel, self.anchors, self.ridge = kernel, anchors, ridge
        self.others = other_indices(anchors, kernel.shape[0])  # (A, M)
        self.own = anchors[:, None]  # (A, 1): each row's pinned column
        self.self_kernel = kernel[anchors, anchors][:, None]  # (A, 1)
        self.rows = kernel[anchors]  # (A, N): K(z_t, .)
        self.shape = (len(anchors), kernel.shape[0] - 1, kernel.shape[0] - 1)
        self.dtype, self.device = kernel.dtype, kernel.device

    def embed(self, beta: torch.Tensor) -> torch.Tensor:
        """``(A, M)`` duals -> ``(A, N)``, 0 at each anchor's own position."""
        return beta.new_zeros((beta.shape[0], self.kernel.shape[0])).scatter_(1, self.others, beta)

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        """``(A, N) -> (A, M)``: the duals of each anchor's negatives."""
        return x.gather(1, self.others)

    def pin(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with each anchor's own entry set to 0, in place."""
        return x.scatter_(1, self.own, 0.0)

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        """``(A, N) -> (A, N)``: ``Q_t x_t`` for every anchor (0 at its own position)."""
        p = x @ self.kernel  # K symmetric
        total = x.sum(dim=1, keepdim=True)
        shift = self.self_kernel * total - p.gather(1, self.own)
        return p.addcmul_(self.rows, total, value=-1.0).add_(shift).add_(x, alpha=self.ridge)

    def frobenius(self, chunk_elements: int = 1 << 24) -> torch.Tensor:
        """``(A,)``: ``|Q_t|_F``, materialising a few anchors' ``Q_t`` at a time (at most
        ``chunk_elements`` values)."""
        per_chunk = max(1, chunk_elements // (self.shape[1] ** 2))
        return torch.cat([torch.linalg.matrix_norm(svm_gram(self.kernel, part, self.ridge))
                          for part in self.anchors.split(per_chunk)])


class DenseGram:
    """A materialised ``(A, M, M)`` tensor of QP matrices with :class:`AnchorGram`'s interface
    (its space is the negatives' duals themselves)."""

    def __init__(self, q: torch.Tensor) -> None:
        self.q, self.shape, self.dtype, self.device = q, tuple(q.shape), q.dtype, q.device

    def embed(self, beta: torch.Tensor) -> torch.Tensor:
        return beta

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def pin(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bmm(self.q, x[:, :, None])[:, :, 0]

    def frobenius(self) -> torch.Tensor:
        return torch.linalg.matrix_norm(self.q)


def project(beta: torch.Tensor, c: float) -> torch.Tensor:
    """Onto the box ``[0, C]`` (``C = -1``: ``[0, inf)``), in place."""
    return beta.clamp_min_(0.0) if c < 0 else beta.clamp_(0.0, c)


def solve_inverse(q: torch.Tensor, c: float) -> torch.Tensor:
    """MMCL-INV: ``beta = clip(Q^-1 2 1, 0, C)`` by one batched solve: ``(A, M, M) -> (A, M)``.
    The exact QP solution when no bound is active."""
    rhs = torch.full(q.shape[:2], 2.0, dtype=q.dtype, device=q.device)
    return project(torch.linalg.solve(q, rhs), c)


def solve_pgd(q: torch.Tensor | AnchorGram | DenseGram, spec: SolverSpec, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """MMCL-PGD: projected gradient on ``1/2 b^T Q b - 2 1^T b`` over the box, batched.

    ``beta <- P(y - eta (Q y - 2))`` from ``beta_0 = P(relu(N(0, 1)))``, with ``y`` the
    Nesterov/FISTA extrapolation ``beta_new + gamma_k (beta_new - beta)``,
    ``a_{k+1} = (sqrt(a_k^4 + 4 a_k^2) - a_k^2) / 2``, ``gamma_k = a_k (1 - a_k) / (a_k^2 + a_{k+1})``,
    ``a_0 ~ U(1e-8, 1)`` (``momentum="none"``: ``y = beta``). Step ``eta`` fixed, or
    ``1 / |Q_t|_F`` per anchor. Stops after ``max_iter`` iterations or when the mean relative
    change ``|beta_new - beta| / (|beta| + 1e-7)`` falls below ``tol``: over the whole batch at
    once (``stop="batch"``, the official code's rule; under ``torch.distributed`` the mean over
    every rank's anchors, so all ranks stop together) or per anchor, each anchor frozen at its
    own stop (``stop="anchor"``).

    Args:
        q: the QP matrices: an :class:`AnchorGram` (what training uses), or ``(A, M, M)``
            materialised; generator: CPU generator for the random start.
    Returns:
        ``beta: (A, M)`` and the iterations each anchor ran, ``(A,)`` float.
    """
    q = DenseGram(q) if isinstance(q, torch.Tensor) else q
    anchors, m = q.shape[:2]
    start = torch.randn((anchors, m), generator=generator, dtype=torch.float64).relu()
    x = q.embed(project(start.to(device=q.device, dtype=q.dtype), spec.c))
    a = float(torch.empty((), dtype=torch.float64).uniform_(1e-8, 1.0, generator=generator))
    eta = (1.0 / q.frobenius().clamp_min(1e-12))[:, None] if spec.step == "frobenius" else spec.eta
    y = x
    active = torch.ones((anchors, 1), dtype=torch.bool, device=q.device)
    iterations = torch.zeros((anchors, 1), dtype=q.dtype, device=q.device)
    for _ in range(spec.max_iter):
        step = q.matvec(y).sub_(2.0).mul_(eta)  # eta (Q y - 2); pinned entries stay 0
        new = q.pin(project(y - step, spec.c))
        if spec.stop == "anchor":
            new = torch.where(active, new, x)  # stopped anchors keep their solution
        if spec.momentum == "nesterov":
            a_next = 0.5 * (math.sqrt(a**4 + 4 * a**2) - a**2)
            y = torch.lerp(new, x, -a * (1 - a) / (a**2 + a_next))  # new + gamma (new - x)
            a = a_next
        else:
            y = new
        change = (new - x).abs_().div_(x + 1e-7).sum(dim=1, keepdim=True) / m  # x >= 0 (projected); pinned: 0 / 1e-7
        iterations += active
        x = new
        if spec.stop == "batch":  # over the global batch: every rank stops at the same iteration
            if all_reduce_mean(change.mean()) < spec.tol:
                break
        else:
            active &= change >= spec.tol
            if not active.any():
                break
    return q.extract(x), iterations[:, 0]


def mmcl_loss(z1: torch.Tensor, z2: torch.Tensor, kernel: KernelSpec, solver: SolverSpec,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The MMCL loss of this process's anchors (view 1) against the global view-1 batch.

    Under ``torch.distributed`` view 1 is gathered from every rank with gradients (the SVMs'
    training set), so the mean over ranks equals the loss of one process over the whole batch
    (exactly for the closed form; projected gradient starts each rank from its own random
    point, so it agrees to the solver's tolerance).

    Args:
        z1, z2: ``(B, D)`` projections of the two views (L2-normalised here, in at least fp32).
        kernel, solver: the kernel and the QP solver.
        generator: CPU generator for PGD's random start.
    Returns:
        The scalar loss and detached diagnostics: ``positive_kernel`` (mean ``K(z_t, z'_t)``),
        ``negative_kernel`` (mean ``K(z_j, z'_t)``, ``j != t``), ``beta_zero`` (fraction of the
        duals at 0), ``beta_at_c`` (fraction of the non-zero duals at ``C``; 0 when unbounded),
        ``svm_iterations`` (mean per anchor).
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be (B, D), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    with torch.autocast(z1.device.type, enabled=False):
        dtype = torch.promote_types(z1.dtype, torch.float32)
        z1, z2 = F.normalize(z1.to(dtype), dim=1), F.normalize(z2.to(dtype), dim=1)
        rank, _ = rank_and_world()
        local = z1.shape[0]
        all1 = gather_with_grad(z1)
        n = all1.shape[0]
        if n < 2:
            raise ValueError("MMCL needs at least 2 samples in the (global) batch")
        anchors = torch.arange(local, device=z1.device) + rank * local
        solve_dtype = getattr(torch, solver.dtype)
        with torch.no_grad():
            among = kernel(all1, all1).to(solve_dtype)
            if solver.solver == "inverse":
                check_gram_memory(local, n - 1, solve_dtype, z1.device)
                beta = solve_inverse(svm_gram(among, anchors, solver.ridge), solver.c)
                iterations = torch.zeros(local, dtype=solve_dtype, device=z1.device)
            else:
                beta, iterations = solve_pgd(AnchorGram(among, anchors, solver.ridge), solver, generator)
            beta = beta.to(dtype)
        cross = kernel(z2, all1)  # (B, N): K(z_j, z'_t), with gradients
        positive = cross[torch.arange(local, device=z1.device), anchors]
        negative = cross.gather(1, other_indices(anchors, n))
        score = beta.sum(dim=1) * positive - (beta * negative).sum(dim=1)
        stats = {
            "positive_kernel": positive.detach().mean(),
            "negative_kernel": negative.detach().mean(),
            "beta_zero": (beta == 0).float().mean(),
            # among the support vectors (beta > 0), as the official code's "sparsity" (additions B)
            "beta_at_c": ((beta >= solver.c).sum() / (beta > 0).sum().clamp_min(1)).float() if solver.c > 0
            else torch.zeros((), device=z1.device),
            "svm_iterations": iterations.float().mean(),
        }
        return -score.mean(), stats
