"""InfoNCE-family losses on similarity logits, shared by batch (SimCLR) and queue (MoCo) negatives.

Every function takes cosine similarities: ``pos: (N,)`` between each anchor and its positive,
``neg: (N, M)`` between each anchor and its M negatives.
"""

from __future__ import annotations

import math

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from contrastlab.core.distributed import gather_with_grad, rank_and_world
from contrastlab.losses.logsumexp import log_softmax, logsumexp

LOSS_KINDS = ("infonce", "dcl", "hcl", "decoupled")


def info_nce(pos: torch.Tensor, neg: torch.Tensor, temperature: float) -> torch.Tensor:
    """``mean_a -log exp(pos_a/t) / (exp(pos_a/t) + sum_j exp(neg_aj/t))`` (stable cross-entropy).

    Args:
        pos: ``(N,)`` and neg: ``(N, M)`` similarities; temperature: ``t > 0``.
    """
    _check(pos, neg, temperature)
    logits = torch.cat([pos[:, None], neg], dim=1) / temperature
    return cross_entropy(logits, torch.zeros_like(pos, dtype=torch.long))


def batch_info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """``info_nce(*batch_pairs(z1, z2), temperature)`` without building ``pos`` and ``neg``: the
    cross-entropy of the full rows of :func:`batch_similarities` over ``t`` (each anchor's
    self-similarity at ``-inf``) with its positive's column as the target.

    Args:
        z1, z2: ``(B, D)`` projections of the two views (normalised here); temperature: ``t > 0``.
    Returns:
        The mean over the ``2B`` local anchors, a scalar in at least float32.
    """
    _check_temperature(temperature)
    logits, _, positive_index = batch_similarities(z1, z2, temperature, mask_self=True)
    return cross_entropy(logits, positive_index)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean_a (logsumexp_k logits_ak - logits_a,target_a)``, in at least float32; ``-inf``
    logits drop out of the sum.

    torch's fused ``F.cross_entropy`` (one pass, no gather), except where ``logits`` carries a
    forward-mode tangent (``forward_ad.unpack_dual(logits).tangent``, under ``dual_level`` as
    well as ``torch.func.jvp``): torch's forward-mode formula of the fused op cannot itself be
    back-propagated (:mod:`contrastlab.losses.logsumexp`), which the meta-learning methods'
    ``second_order="jvp"`` needs, so there the composite log-sum-exp is used. The check is on
    the tensor, not on whether a dual level is open: the loss has no parameters, so a tangent
    can only arrive through ``logits``, and tensors without one keep the fast path.

    Args:
        logits: ``(N, C)``; target: ``(N,)`` int64 column indices.
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if fwAD.unpack_dual(logits).tangent is None:
        return F.cross_entropy(logits, target)
    return (logsumexp(logits, dim=1) - logits.gather(1, target[:, None]).squeeze(1)).mean()


def hard_negative_log_weights(neg: torch.Tensor, temperature: float, beta: float) -> torch.Tensor:
    """HCL's importance weights in log space: ``log w_j``, ``w_j = e^{beta neg_j/t} / mean_k e^{beta neg_k/t}``.

    Args:
        neg: ``(N, M)`` anchor-negative cosine similarities.
    Returns:
        ``(N, M)``; ``exp`` of each row has mean 1 (all zeros, i.e. uniform weights, for ``beta = 0``).
        Not detached: gradients flow through the weights, as in the HCL code.
    """
    if temperature <= 0 or beta < 0:
        raise ValueError(f"need temperature > 0 and beta >= 0, got temperature={temperature}, beta={beta}")
    return math.log(neg.shape[1]) + log_softmax(beta * neg / temperature, dim=1)


def debiased_info_nce(pos: torch.Tensor, neg: torch.Tensor, temperature: float, tau_plus: float,
                      beta: float = 0.0, log_weights: torch.Tensor | None = None) -> torch.Tensor:
    """DCL (Chuang et al., 2020; ``beta = 0``) and HCL (Robinson et al., 2021; ``beta > 0``).

    ``Ng = max((sum_j w_j e^{neg_j/t} - tau_plus M e^{pos/t}) / (1 - tau_plus), M e^{-1/t})`` with
    the weights of :func:`hard_negative_log_weights` (or ``exp(log_weights)``, given per
    negative, e.g. the difficulty weights of :mod:`contrastlab.losses.difficulty`; ``beta`` is
    then unused) and ``L = mean_a -log(e^{pos/t} / (e^{pos/t} + Ng))``.
    Computed entirely in log space, so no exponential over- or underflows at small temperatures;
    the floor ``M e^{-1/t}`` (the least ``Ng`` cosines in [-1, 1] allow) is applied exactly, and
    where it is active ``Ng`` is a constant (no gradient to the negatives).

    Args:
        pos: ``(N,)`` and neg: ``(N, M)`` cosine similarities.
        temperature: ``t > 0``; tau_plus: class prior in ``[0, 1)``; beta: concentration ``>= 0``.
        log_weights: ``(N, M)`` log weights of the negatives, or ``None`` for HCL's.
    """
    _check(pos, neg, temperature)
    if not 0.0 <= tau_plus < 1.0:
        raise ValueError(f"tau_plus must be in [0, 1), got {tau_plus}")
    m = neg.shape[1]
    log_pos = pos / temperature
    if log_weights is None:
        log_weights = hard_negative_log_weights(neg, temperature, beta)
    elif log_weights.shape != neg.shape:
        raise ValueError(f"log_weights must have the shape of neg {tuple(neg.shape)}, got {tuple(log_weights.shape)}")
    log_negatives = logsumexp(log_weights + neg / temperature, dim=1)  # log sum_j w_j e^{neg_j/t}
    log_floor = math.log(m) - 1.0 / temperature
    above_floor = log_negatives > log_floor
    log_ng = log_negatives
    if tau_plus > 0:
        # log(S - c P) = log S + log(1 - e^gap) with gap = log(c P / S), defined where gap < 0
        gap = log_pos + math.log(tau_plus * m) - log_negatives
        tiny = torch.finfo(gap.dtype).tiny  # keeps the unused branch finite (and its gradient 0, not NaN)
        log_ng = log_negatives + torch.log(-torch.expm1(gap.clamp_max(-tiny))) - math.log(1 - tau_plus)
        above_floor = (gap < 0) & (log_ng > log_floor)
    log_ng = torch.where(above_floor, log_ng, torch.full_like(log_ng, log_floor))
    return (torch.logaddexp(log_pos, log_ng) - log_pos).mean()


def decoupled_info_nce(pos: torch.Tensor, neg: torch.Tensor, temperature: float,
                       vmf_sigma: float | None = None) -> torch.Tensor:
    """The *decoupled* contrastive loss (Yeh et al., 2022; lightly's ``DCLLoss``, not Chuang et
    al.'s debiased DCL of :func:`debiased_info_nce`): InfoNCE with the positive left out of the
    denominator, ``L_a = -w_a pos_a / t + log sum_j e^{neg_aj / t}``.

    ``w_a = 1``, or with ``vmf_sigma`` (DCLW) the von Mises-Fisher weighting
    ``w_a = 2 - n e^{pos_a / sigma} / sum_b e^{pos_b / sigma}`` over the ``n`` anchors of the
    global batch (gathered under ``torch.distributed``, so two ranks equal one process), which
    weighs easy positives less. The weights carry gradients, as in lightly's implementation.

    Args:
        pos: ``(N,)`` and neg: ``(N, M)`` cosine similarities; temperature: ``t > 0``;
        vmf_sigma: ``sigma > 0`` or ``None``.
    """
    _check(pos, neg, temperature)
    weights = 1.0
    if vmf_sigma is not None:
        if vmf_sigma <= 0:
            raise ValueError(f"vmf_sigma must be > 0, got {vmf_sigma}")
        every = gather_with_grad(pos)
        weights = 2.0 - every.shape[0] * torch.exp(pos / vmf_sigma - logsumexp(every / vmf_sigma, dim=0))
    return (logsumexp(neg / temperature, dim=1) - weights * pos / temperature).mean()


def contrastive_loss(pos: torch.Tensor, neg: torch.Tensor, temperature: float, kind: str = "infonce",
                     tau_plus: float = 0.1, beta: float = 1.0, vmf_sigma: float | None = None) -> torch.Tensor:
    """The one switch between InfoNCE, DCL (debiased), HCL and the decoupled loss (``kind``);
    ``dcl`` ignores ``beta``, only ``decoupled`` reads ``vmf_sigma``."""
    if kind == "infonce":
        return info_nce(pos, neg, temperature)
    if kind == "decoupled":
        return decoupled_info_nce(pos, neg, temperature, vmf_sigma)
    if kind == "dcl":
        return debiased_info_nce(pos, neg, temperature, tau_plus, 0.0)
    if kind == "hcl":
        return debiased_info_nce(pos, neg, temperature, tau_plus, beta)
    raise ValueError(f"unknown contrastive loss '{kind}'; expected one of {', '.join(LOSS_KINDS)}")


def batch_similarities(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 1.0,
                       mask_self: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SimCLR's 2B-batch similarities (over ``temperature``), in at least float32 whatever the
    autocast.

    Each of the 2B local embeddings (``cat([z1, z2])``) is an anchor; the columns are every
    embedding of the global batch (``cat([all z1, all z2])``, ``N = world * B``, gathered with
    gradients from all ranks); an anchor's positive is the other view of the same image.

    Args:
        z1, z2: ``(B, D)`` projections of the two views (L2-normalised here).
        temperature: ``t > 0``, divides the anchors (``2B x D`` values, not ``2B x 2N``).
        mask_self: put ``-inf`` in each anchor's own column (one fused ``addmm`` with a constant
            offset, so the backward pass has nothing extra to do).
    Returns:
        ``sims: (2B, 2N)`` cosine similarities over ``t``, and per anchor the column of itself
        and of its positive, ``self_index, positive_index: (2B,)`` int64.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be (B, D), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    dtype = torch.promote_types(z1.dtype, torch.float32)  # fp16/bf16 -> fp32, fp64 stays
    z1, z2 = F.normalize(z1.to(dtype), dim=1), F.normalize(z2.to(dtype), dim=1)
    rank, _ = rank_and_world()
    b = z1.shape[0]
    all1, all2 = gather_with_grad(z1), gather_with_grad(z2)
    n = all1.shape[0]
    local = torch.arange(b, device=z1.device) + rank * b
    self_index, positive_index = torch.cat([local, local + n]), torch.cat([local + n, local])
    anchors, columns = torch.cat([z1, z2]), torch.cat([all1, all2]).T
    if temperature != 1.0:
        anchors = anchors / temperature
    with torch.autocast(z1.device.type, enabled=False):
        if not mask_self:
            return anchors @ columns, self_index, positive_index
        offset = torch.zeros(2 * b, 2 * n, dtype=dtype, device=z1.device)
        offset[torch.arange(2 * b, device=z1.device), self_index] = float("-inf")
        return torch.addmm(offset, anchors, columns), self_index, positive_index


def batch_pairs(z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SimCLR's 2B-batch convention: ``pos: (2B,)``, ``neg: (2B, 2N - 2)``, from the rows of
    :func:`batch_similarities` (``N = world * B``): an anchor's negatives are every other
    embedding of the global batch except itself and its positive.

    Args:
        z1, z2: ``(B, D)`` projections of the two views (L2-normalised here).
    """
    sims, self_index, positive_index = batch_similarities(z1, z2)
    rows = torch.arange(sims.shape[0], device=sims.device)
    keep = torch.ones_like(sims, dtype=torch.bool)
    keep[rows, self_index] = False
    keep[rows, positive_index] = False
    return sims[rows, positive_index], sims[keep].view(sims.shape[0], sims.shape[1] - 2)


def cross_view_pairs(u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One direction, the other view's embeddings only (GraphCL's TU code): ``pos: (B,)``
    ``cos(u_a, v_a)``, ``neg: (B, N - 1)`` ``cos(u_a, v_j)`` over every other sample ``j`` of the
    global batch (``v`` gathered with gradients from all ranks, ``N = world * B``).

    Args:
        u: ``(B, D)`` anchors (the original graphs' projections), v: ``(B, D)`` candidates (the
            augmented views'); L2-normalised here.
    """
    if u.shape != v.shape or u.dim() != 2 or u.shape[0] < 1:
        raise ValueError(f"u and v must both be (B, D), got {tuple(u.shape)} and {tuple(v.shape)}")
    dtype = torch.promote_types(u.dtype, torch.float32)
    u, v = F.normalize(u.to(dtype), dim=1), F.normalize(v.to(dtype), dim=1)
    rank, _ = rank_and_world()
    b = u.shape[0]
    every = gather_with_grad(v)
    sims = u @ every.T  # (B, N)
    rows = torch.arange(b, device=u.device)
    keep = torch.ones_like(sims, dtype=torch.bool)
    keep[rows, rows + rank * b] = False
    return sims[rows, rows + rank * b], sims[keep].view(b, every.shape[0] - 1)


def queue_pairs(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor,
                key_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """MoCo's pairs: ``pos: (B,)`` query-key similarities, ``neg: (B, K)`` query-queue ones.

    Args:
        q: ``(B, D)`` queries (L2-normalised here; gradients flow).
        k: ``(B, D)`` keys (normalised here): from the momentum encoder, constants; with
            ``key_grad`` from a trained encoder, gradients flow (the biased encoder of
            difficulty-weighted MoCo).
        queue: ``(K, D)`` past keys, already L2-normalised (constants).
    """
    if q.shape != k.shape or q.dim() != 2 or queue.dim() != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(
            f"expected q, k: (B, D) and queue: (K, D), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(queue.shape)}"
        )
    dtype = torch.promote_types(q.dtype, torch.float32)
    q = F.normalize(q.to(dtype), dim=1)
    k = F.normalize((k if key_grad else k.detach()).to(dtype), dim=1)
    return (q * k).sum(dim=1), q @ queue.detach().to(dtype).T


def _check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _check(pos: torch.Tensor, neg: torch.Tensor, temperature: float) -> None:
    _check_temperature(temperature)
    if pos.dim() != 1 or neg.dim() != 2 or neg.shape[0] != pos.shape[0] or neg.shape[1] == 0:
        raise ValueError(f"expected pos: (N,) and neg: (N, M >= 1), got {tuple(pos.shape)} and {tuple(neg.shape)}")
