"""MetAug (Li et al., ICML 2022) in its official code's setting: three Lab-channel views of one
crop, one memory bank per view, OUCL over six directed view pairs, one meta-learned feature
generator per view (spec 1.3-1.8).

One crop ``x`` (``step.views[0]``, a normalised Lab image; the trainer also renders a second
view, which is ignored) is split into the views ``L`` (channel 0), ``ab`` (channels 1-2) and
``ori`` (all three) by the ``lab_split`` backbone. Per view ``v``: encoder -> projector (fc7 +
fc8, :class:`MLPHead`) -> L2-normalise -> ``z_v: (B, P)``; generator -> L2-normalise ->
``g_v``. A *contrast call* ``C(a_L, a_ab, a_ori)`` scores each anchor ``a_u^i`` against the
bank ``M_w`` of every other view ``w`` (six directed pairs :data:`PAIRS`): slot 0 is
``M_w[i]`` (the positive), slots ``1..K`` are ``K`` bank rows drawn uniformly per anchor (the
same rows for the six pairs; a draw may hit ``i``); score = raw dot product
(:func:`bank_scores`). With ``theta`` = encoders + projectors, ``omega`` = generators,

    L(theta, omega) = OUCL(C(z_L, z_ab, z_ori))
                    + aug_weight * [OUCL(C(g_L, z_ab, z_ori)) + OUCL(C(z_L, g_ab, z_ori))
                                    + OUCL(C(z_L, z_ab, g_ori)) + OUCL(C(g_L, g_ab, g_ori))]
                    + margin_weight * MI

where each OUCL contrasts all 6 positives ``(B, 6)`` with all 6K negatives ``(B, 6K)`` of its
call. MI (:func:`margin_injection`) takes exactly the score tensors the official script passes
to its regulariser (:func:`margin_injection_scores`): from the single-generator call of view
``v``, the 4 pairs with ``v`` as anchor or as bank view are the *generated* scores (12 pairs:
positives ``(B, 12)``, negatives ``(B, 12K)``; half of them are original anchors against the
bank of view ``v``, which holds original features), and the other 2 pairs of that call are the
*original* scores (6 pairs over the three calls: ``(B, 6)``, ``(B, 6K)``). The official script
reuses its variable names, so the original-call scores it computed first are overwritten by
these generator-free pairs of the single-generator calls: they cover each directed pair once,
with those calls' negative draws. The all-generators call is not in MI.

The generators are meta-learned exactly as in :mod:`contrastlab.methods.metaug` (``meta_order``
``second | first | none``, ``meta_every``, plain virtual step ``inner_lr``, their own SGD with
``gen_lr`` never decayed, momentum buffers as extra state), through
:func:`~contrastlab.components.meta.meta_gradient` sharing the real step's gradient
(:func:`~contrastlab.components.meta.surrogate_loss`).

Deviations from the official code (``train_MetAug.py``):

* The banks are updated once per step, with the real forward's ``z_v`` after the meta step,
  ``M_v[i] <- normalise(m M_v[i] + (1 - m) z_v^i)`` (``m = bank_momentum`` = 0.5); the official
  script updates them three times (encoder step, generator step, and with the fast-weight
  features; spec 1.13 item 5). Fast-weight and generated features never enter the banks.
* One draw of negatives per step: ``K`` rows per anchor for each of the 5 contrast calls
  (fresh per call, shared by its 6 pairs, as in the code), reused by the meta step's
  evaluations of ``L``, which all see the banks as they were at the start of the step, so the
  meta-gradient is that of one deterministic objective (the official code redraws).
* The meta step uses the pre-update ``theta`` and the real step's gradient (as the two-view
  MetAug; the official code recomputes ``L`` after the encoder update).
* ``aug_weight`` / ``margin_weight`` default to 0.1 like the two-view MetAug (official 1e-5 and
  1e-11, set in the faithful recipe); generators normalise with batch statistics only.
* Evaluation sees the concatenated fc6 features of the three encoders (the official probe
  also appends generator features, spec 1.13 item 3).

Single process only (the meta-gradient and the banks are not synchronised across ranks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastlab.components.heads import MLPHead
from contrastlab.components.meta import Params, forward_at
from contrastlab.core.distributed import rank_and_world
from contrastlab.losses import margin_injection, oucl
from contrastlab.methods.base import StepInput
from contrastlab.methods.metaug import GeneratorMetaLearning, MetAugConfig
from contrastlab.methods.metaug import check_config as check_metaug_config
from contrastlab.methods.registry import METHODS
from contrastlab.models.backbones import LAB_VIEWS, LabSplit

# Directed view pairs (anchor view u, bank view w), u != w, in the official order:
# ab->M_L, L->M_ab, ori->M_L, L->M_ori, ab->M_ori, ori->M_ab (views indexed as LAB_VIEWS).
PAIRS = ((1, 0), (0, 1), (2, 0), (0, 2), (1, 2), (2, 1))
NUM_CALLS = 5  # contrast calls per objective: original, one per single generator, all generators

@dataclass
class MetAugLabConfig(MetAugConfig):
    TRAIN_SIZED_FIELDS: ClassVar[tuple[str, ...]] = ("bank_size",)  # filled by engine.setup

    bank_size: int | None = None  # memory-bank rows; None = the training-set size
    num_negatives: int = 1024  # K bank rows drawn per anchor and contrast call
    bank_momentum: float = 0.5  # M[i] <- normalise(m M[i] + (1 - m) z_i)


def check_config(cfg: MetAugLabConfig) -> None:
    """``ValueError`` naming ``method.<field>`` for the first invalid value."""
    check_metaug_config(cfg)
    rules = {
        "bank_size": (lambda v: v is None or (_is_int(v) and v >= 1), "an integer >= 1 or null"),
        "num_negatives": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "bank_momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    }
    for field, (ok, expected) in rules.items():
        value = getattr(cfg, field)
        if not ok(value):
            raise ValueError(f"method.{field} must be {expected}, got {value!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def bank_scores(anchors: Sequence[Tensor], banks: Tensor, index: Tensor, negatives: Tensor) -> list[Tensor]:
    """One contrast call: ``anchors``: one ``(B, P)`` batch per view; ``banks: (V, N, P)``;
    ``index: (B,)`` the anchors' own bank rows; ``negatives: (B, K)`` bank rows.

    Returns one ``(B, K + 1)`` tensor per pair ``(u, w)`` of :data:`PAIRS`: column 0 is
    ``<anchors[u][i], banks[w, index[i]]>`` (the positive), column ``1 + k`` is
    ``<anchors[u][i], banks[w, negatives[i, k]]>``.
    """
    rows = torch.cat([index[:, None], negatives], dim=1)
    bank_rows = banks[:, rows]  # (V, B, K + 1, P)
    return [torch.einsum("bp,bkp->bk", anchors[u], bank_rows[w]) for u, w in PAIRS]


def split_pairs(pairs: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """``(B, K + 1)`` pair scores -> positives ``(B, len(pairs))`` (column 0 of each) and
    negatives ``(B, len(pairs) K)`` (the rest, pair after pair)."""
    return torch.stack([s[:, 0] for s in pairs], dim=1), torch.cat([s[:, 1:] for s in pairs], dim=1)


def margin_injection_scores(single_generator_calls: Sequence[Sequence[Tensor]]
                            ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """MI's inputs from the three single-generator calls (call ``v`` generates view ``v``; each a
    list of pair scores in :data:`PAIRS` order): ``(original, generated)``, each ``(positives,
    negatives)``. Generated: the 4 pairs of call ``v`` with ``v`` as anchor or bank view
    (``(B, 12)``, ``(B, 12K)``); original: its other 2 pairs (``(B, 6)``, ``(B, 6K)``)."""
    calls = list(enumerate(single_generator_calls))
    generated = [s for v, call in calls for (u, w), s in zip(PAIRS, call) if v in (u, w)]
    original = [s for v, call in calls for (u, w), s in zip(PAIRS, call) if v not in (u, w)]
    return split_pairs(original), split_pairs(generated)


class Objective(NamedTuple):
    """The terms of ``L`` on one crop."""

    total: Tensor  # oucl + aug_weight * aug + margin_weight * margin, scalar
    oucl: Tensor  # OUCL of the original call, scalar
    aug: Tensor  # sum of the four generator calls' OUCL, scalar
    margin: Tensor  # margin-injection regulariser, scalar
    features: Tensor  # (B, sum of encoder dims) backbone features, views concatenated
    projections: tuple[Tensor, ...]  # z_v: (B, P) per view
    original: tuple[Tensor, Tensor]  # (B, 6), (B, 6K) scores of the original call
    generated: tuple[Tensor, Tensor]  # (B, 6), (B, 6K) scores of the all-generators call


@METHODS.register("metaug_lab", "MetAug as in its official code: Lab views of one crop, memory banks, "
                                "meta-learned generators (Li et al., 2022)")
class MetAugLab(GeneratorMetaLearning):
    Config = MetAugLabConfig
    ENCODER_PARTS = ("backbone", "projectors")

    def __init__(self, cfg: MetAugLabConfig, backbone: nn.Module) -> None:
        super().__init__(cfg, backbone)
        check_config(cfg)
        if not isinstance(backbone, LabSplit):
            raise ValueError(f"method.name=metaug_lab needs backbone.name=lab_split (one encoder per Lab view), "
                             f"got a {type(backbone).__name__}")
        if cfg.bank_size is None:
            raise ValueError("method.bank_size is null: the trainer sets it to the training-set size; "
                             "give it when building the method yourself")
        if rank_and_world()[1] > 1:
            raise ValueError("method.name=metaug_lab trains in one process only: its generators' meta-gradient "
                             "and its memory banks are not synchronised across ranks")
        dim = cfg.proj_out_dim
        self.projectors = nn.ModuleList(MLPHead(d, cfg.proj_hidden_dim, dim, cfg.proj_layers)
                                        for d in backbone.view_dims)
        self.build_generators(len(LAB_VIEWS))
        bound = 1 / math.sqrt(dim / 3)  # rows of expected squared norm 1
        self.register_buffer("banks", torch.empty(len(LAB_VIEWS), cfg.bank_size, dim).uniform_(-bound, bound))

    # ------------------------------------------------------------------ the network
    def objective(self, views: Sequence[Tensor], index: Tensor, negatives: Tensor, omega: Params,
                  theta: Params | None = None) -> Objective:
        """``L`` on the views ``(B, 1|2|3, H, W)`` of one crop, ``index: (B,)`` their bank rows,
        ``negatives: (NUM_CALLS, B, K)`` bank rows per contrast call, with generator weights
        ``omega``, at the module's encoder weights (a real forward) or at ``theta``."""
        cfg = self.cfg
        features = [forward_at(encoder, f"backbone.encoders.{v}.", theta, x)
                    for v, (encoder, x) in enumerate(zip(self.backbone.encoders, views))]
        z = [F.normalize(forward_at(projector, f"projectors.{v}.", theta, h), dim=1)
             for v, (projector, h) in enumerate(zip(self.projectors, features))]
        g = [F.normalize(forward_at(generator, f"generators.{v}.", omega, z_v), dim=1)
             for v, (generator, z_v) in enumerate(zip(self.generators, z))]
        calls = [z, *([*z[:v], g[v], *z[v + 1:]] for v in range(len(z))), g]
        scores = [bank_scores(anchors, self.banks, index, rows) for anchors, rows in zip(calls, negatives)]

        def contrast(pairs: list[Tensor]) -> Tensor:
            return oucl(*split_pairs(pairs), cfg.gamma, circle=cfg.circle, circle_margin=cfg.circle_margin)

        base = contrast(scores[0])
        aug = sum(contrast(pairs) for pairs in scores[1:])
        margin = margin_injection(*(s for pair in margin_injection_scores(scores[1:4]) for s in pair),
                                  cfg.margin, cfg.margin_positive_scale, cfg.detach_margins)
        total = base + cfg.aug_weight * aug + cfg.margin_weight * margin
        return Objective(total, base, aug, margin, torch.cat(features, dim=1), tuple(z),
                         split_pairs(scores[0]), split_pairs(scores[-1]))

    # ------------------------------------------------------------------ memory banks
    def bank_rows(self, step: StepInput) -> Tensor:
        """``step.batch["index"]`` (the dataset indices), checked against the banks' rows."""
        index = step.batch.get("index")
        if index is None:
            raise ValueError("metaug_lab needs the dataset indices of the batch in step.batch['index'] "
                             "(its memory banks have one row per training image)")
        size = self.banks.shape[1]
        if index.dim() != 1 or index.shape[0] != step.views[0].shape[0]:
            raise ValueError(f"step.batch['index'] must be (B,) = ({step.views[0].shape[0]},), "
                             f"got shape {tuple(index.shape)}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= size):
            raise ValueError(f"dataset indices {int(index.min())}..{int(index.max())} are outside the memory banks' "
                             f"rows [0, {size}): method.bank_size={size} must be at least the training-set size "
                             "(null sets it to that)")
        return index.to(self.banks.device)

    def draw_negatives(self, batch: int, generator: torch.Generator | None) -> Tensor:
        """``(NUM_CALLS, batch, K)`` bank rows, uniform with replacement, drawn on the CPU with
        ``generator``: one set per contrast call, in the order original, L / ab / ori generator,
        all generators."""
        size = (NUM_CALLS, batch, self.cfg.num_negatives)
        return torch.randint(self.banks.shape[1], size, generator=generator).to(self.banks.device)

    @torch.no_grad()
    def update_banks(self, index: Tensor, projections: Sequence[Tensor]) -> None:
        """``M_v[i] <- normalise(m M_v[i] + (1 - m) z_v^i)`` for each view, ``index: (B,)``,
        ``projections``: ``z_v: (B, P)`` per view."""
        m = self.cfg.bank_momentum
        for v, z in enumerate(projections):
            mixed = m * self.banks[v, index] + (1 - m) * z.detach().to(self.banks.dtype)
            self.banks[v, index] = F.normalize(mixed, dim=1)

    # ------------------------------------------------------------------ the step
    def prepare(self, step: StepInput) -> Callable[..., Objective]:
        """One crop split into its views, its bank rows and one draw of negatives, fixed for the
        step (the meta step differentiates this one objective)."""
        views = self.backbone.split(step.views[0])
        index = self.bank_rows(step)
        negatives = self.draw_negatives(index.shape[0], step.generator)
        return lambda omega, theta=None: self.objective(views, index, negatives, omega, theta)

    def finish_step(self, step: StepInput, terms: Objective) -> None:
        self.update_banks(self.bank_rows(step), terms.projections)
