"""MetAug (Li et al., ICML 2022), two-view form: OUCL on the original and on generator-augmented
projections, the generators meta-learned through one virtual encoder step.

With encoder ``theta`` (backbone + projector), unit projections ``z1, z2`` of the two views and
one generator per view, ``g^v = generator_v(z_v; omega)`` (an MLP ``P -> H -> H -> P``, BN and
ReLU inside, L2-normalised output), the encoder minimises

    L(theta, omega) = OUCL(z1, z2)
                    + aug_weight * [OUCL(g^1, z2) + OUCL(z1, g^2) + OUCL(g^1, g^2)]
                    + margin_weight * MI(original scores of (z1, z2); scores of the 3 augmented pairs)

(spec 1.6-1.8; ``MI`` = :func:`margin_injection`, the generated positives/negatives of the three
augmented pairs concatenated along the columns). The generators minimise the unrolled objective
``F(omega) = L(theta+(omega), omega)``, ``theta+ = theta - inner_lr * dL/dtheta`` (a plain gradient
step, spec 1.8c), on the same batch, with their own ``torch.optim.SGD`` (``gen_lr`` never decayed,
as in the official code). ``meta_order``: ``"second"`` exact (MAML-style, the official code),
``"first"`` the direct term only, ``"none"`` (not ``off``, which YAML reads as false) no meta step:
the generators keep their random initialisation. ``second_order``: how the exact order gets its
mixed term (:mod:`meta`), ``jvp`` (forward-over-reverse, default) or ``unrolled`` (double
backward, as the official code). Step time relative to the ``simclr`` recipe on this CPU
(ConvNet, batch 256, bf16 + channels_last; ``benchmarks/results/metaug_step_time.md``): 4.5x for
``second``/``jvp``, 10.5x for ``second``/``unrolled``, 1.8x for ``first``; a meta step every 2 (4)
steps (``meta_every``) brings the exact order to 2.7x (1.9x).

Differences from the official code (CMC, three Lab-channel views, memory bank):

* Two views and batch negatives, as SimCLR: each of the ``2B`` anchors has the other view's
  sample as its positive and the other ``2B - 2`` features of both views as negatives
  (:func:`pair_scores`); the memory bank and its repeated updates (spec 1.13 item 5) are gone.
* The meta step uses the pre-update ``theta`` and the gradient ``g = dL/dtheta`` of the real
  step (the official code recomputes ``L`` after the encoder update): one forward and one
  ``g`` serve both steps. ``training_step`` returns a surrogate loss whose value is ``L`` and
  whose gradient w.r.t. ``theta`` is ``g`` (:func:`meta.surrogate_loss`).
* Defaults ``aug_weight = 0.1``, ``margin_weight = 0.1`` instead of the official ``1e-5`` and
  ``1e-11``: with those the generators barely move (spec 1.13 item 4); set them for the
  faithful setting.
* The generators always normalise with batch statistics (they only run on training batches);
  their BatchNorm running statistics are never updated nor used. Encoder virtual forwards use
  batch statistics and leave the running statistics alone.

The generators are not in the trainer's optimiser (:meth:`outer_parameters`); their SGD's
momentum buffers are checkpointed as the module's extra state (one flat tensor). Single process
only (the meta-gradient is not synchronised across ranks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastlab.components.heads import MLPHead
from contrastlab.components.meta import (
    SecondOrder,
    Params,
    encoder_parameters,
    forward_at,
    inner_gradients,
    meta_gradient,
    needs_differentiable_inner_grads,
    momentum_buffers,
    restore_momentum_buffers,
    surrogate_loss,
)
from contrastlab.core.config import MethodConfig
from contrastlab.core.distributed import rank_and_world
from contrastlab.losses import margin_injection, oucl
from contrastlab.methods.base import Method, StepInput
from contrastlab.methods.registry import METHODS

MetAugOrder = Literal["second", "first", "none"]
ENCODER_PARTS = ("backbone", "projector")


@dataclass
class MetAugConfig(MethodConfig):
    RANGES: ClassVar[dict[str, str]] = {
        "gen_hidden_dim": ">= 1", "gamma": "> 0", "circle_margin": ">= 0", "aug_weight": ">= 0",
        "margin_weight": ">= 0", "margin_positive_scale": ">= 0", "inner_lr": "> 0", "gen_lr": "> 0",
        "gen_momentum": ">= 0", "gen_weight_decay": ">= 0", "meta_every": ">= 1",
    }

    proj_hidden_dim: int = 2048  # projector D -> 2048 -> 128, output L2-normalised
    proj_out_dim: int = 128
    gen_hidden_dim: int = 2048  # generator P -> H (BN, ReLU) -> H (BN, ReLU) -> P, L2-normalised
    gamma: float = 16.0  # OUCL scale
    circle: bool = False  # Circle-loss weights and margins in OUCL (off in the official code)
    circle_margin: float = 0.25  # m of the circle variant of OUCL
    aug_weight: float = 0.1  # beta; official 1e-5
    margin_weight: float = 0.1  # mu; official 1e-11
    margin: Literal["large", "small", "mean"] = "large"  # losses.MARGIN_TYPES
    margin_positive_scale: float = 1e-4  # scale of the margin-injected positive term
    detach_margins: bool = False  # stop gradients through the injected margins
    inner_lr: float = 1e-3  # alpha of the virtual plain gradient step
    gen_lr: float = 0.03  # generators' SGD, never decayed
    gen_momentum: float = 0.9  # the generators' SGD momentum
    gen_weight_decay: float = 1e-4  # the generators' SGD weight decay
    meta_order: MetAugOrder = "second"  # none: no meta step, the generators stay at their init
    second_order: SecondOrder = "jvp"  # how the exact order gets the mixed term: jvp | unrolled
    meta_every: int = 1  # one meta step every this many training steps


def pair_scores(u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Cosine scores of the two-view batch ``u, v: (B, P)`` (unit rows, B >= 2).

    Anchors are the rows of ``[u; v]`` (``2B``). Returns ``positives: (2B, 1)``, each anchor's
    score with the same sample in the other view, and ``negatives: (2B, 2B - 2)``, its scores
    with every other row except itself and its positive, in row order.
    """
    if u.shape != v.shape or u.dim() != 2 or u.shape[0] < 2:
        raise ValueError(f"pair_scores needs two (B >= 2, P) batches of one shape, got {tuple(u.shape)} "
                         f"and {tuple(v.shape)}")
    n = u.shape[0]
    features = torch.cat([u, v])
    scores = features @ features.T
    anchors = torch.arange(2 * n, device=u.device)
    partner = (anchors + n) % (2 * n)
    positives = scores[anchors, partner][:, None]
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep[anchors, anchors] = False
    keep[anchors, partner] = False
    return positives, scores[keep].view(2 * n, 2 * n - 2)


class Objective(NamedTuple):
    """The terms of ``L`` on one two-view batch."""

    total: Tensor  # oucl + aug_weight * aug + margin_weight * margin, scalar
    oucl: Tensor  # OUCL of the original pair, scalar
    aug: Tensor  # sum of the three augmented OUCL terms, scalar
    margin: Tensor  # margin-injection regulariser, scalar
    features: Tensor  # (B, D) backbone output of view 1
    original: tuple[Tensor, Tensor]  # (2B, 1), (2B, 2B - 2) scores of (z1, z2)
    generated: tuple[Tensor, Tensor]  # (2B, 3), (2B, 3 (2B - 2)) scores of the augmented pairs


class GeneratorMetaLearning(Method):
    """What both forms of MetAug share: one feature generator per view (``MLPHead`` ``P -> H ->
    H -> P``, BN and ReLU inside), stepped by their own ``torch.optim.SGD`` (momentum buffers as
    the module's extra state) with the meta-gradient of the method's objective through one
    virtual plain gradient step of the encoder, and the training step around it.

    A subclass builds its encoder and calls :meth:`build_generators`, names its encoder parts in
    ``ENCODER_PARTS`` and implements :meth:`prepare`; :meth:`finish_step` is an optional hook.
    Its objective returns a NamedTuple with ``total``, ``oucl``, ``aug``, ``margin``, ``features``
    (``(B, D)``, logged) and the ``original`` / ``generated`` score pairs (positives, negatives).
    """

    ENCODER_PARTS: tuple[str, ...] = ()

    def build_generators(self, count: int) -> None:
        cfg = self.cfg
        dim = cfg.proj_out_dim
        self.generators = nn.ModuleList(MLPHead(dim, cfg.gen_hidden_dim, dim, num_layers=3) for _ in range(count))
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.generator_optimizer = torch.optim.SGD(
            self.generators.parameters(), lr=cfg.gen_lr, momentum=cfg.gen_momentum, weight_decay=cfg.gen_weight_decay
        )

    # ------------------------------------------------------------------ trainer hooks
    def outer_parameters(self) -> list[nn.Parameter]:
        return list(self.generators.parameters())

    def get_extra_state(self) -> Tensor:
        """The generators' SGD momentum buffers, flattened in parameter order (empty before their
        first step)."""
        return momentum_buffers(self.generator_optimizer, self.outer_parameters())

    def set_extra_state(self, state: Tensor) -> None:
        restore_momentum_buffers(self.generator_optimizer, self.outer_parameters(), state, "the generators")

    # ------------------------------------------------------------------ parameters
    def encoder_parameters(self) -> dict[str, nn.Parameter]:
        """``theta``: the parameters of ``ENCODER_PARTS`` that require grad."""
        return encoder_parameters(self, self.ENCODER_PARTS)

    def generator_parameters(self, detach: bool = False) -> dict[str, Tensor]:
        """``omega`` by name as in ``self.named_parameters()``, optionally detached."""
        return {name: p.detach() if detach else p for name, p in self.named_parameters()
                if name.startswith("generators.")}

    # ------------------------------------------------------------------ the step
    def prepare(self, step: StepInput) -> Callable[..., Any]:
        """The step's objective as a function ``(omega, theta=None) -> Objective`` (``theta``
        None: the module's own encoder weights), with the step's inputs fixed."""
        raise NotImplementedError

    def finish_step(self, step: StepInput, terms: Any) -> None:
        """Called at the end of every training step with the real forward's terms."""

    def _step_generators(self, grads: list[Tensor]) -> None:
        for p, g in zip(self.outer_parameters(), grads):
            p.grad = g
        self.generator_optimizer.step()
        self.generator_optimizer.zero_grad(set_to_none=True)

    def training_step(self, step: StepInput) -> dict[str, Tensor]:
        cfg = self.cfg
        meta = cfg.meta_order != "none" and int(self.steps_done) % cfg.meta_every == 0
        unrolled = meta and needs_differentiable_inner_grads(cfg.meta_order, cfg.second_order)
        self.steps_done += 1
        objective = self.prepare(step)
        # the real forward sees the generators as constants unless the unrolled meta-gradient needs g(omega)
        terms = objective(self.generator_parameters(detach=not unrolled))
        with torch.no_grad():
            (orig_pos, orig_neg), (gen_pos, gen_neg) = terms.original, terms.generated
            out = {
                "loss": terms.total,
                "features": terms.features.detach(),
                "loss_oucl": terms.oucl.detach(),
                "loss_aug": terms.aug.detach(),
                "loss_margin": terms.margin.detach(),
                "positive_score_original": orig_pos.mean(),
                "positive_score_generated": gen_pos.mean(),
                "hardest_negative_original": orig_neg.amax(1).mean(),
                "hardest_negative_generated": gen_neg.amax(1).mean(),
            }
        if meta:
            theta = self.encoder_parameters()

            def loss_at(params: Params) -> Tensor:
                return objective(self.generator_parameters(), params).total

            grads = inner_gradients(terms.total, theta, create_graph=unrolled)
            result = meta_gradient(
                self.outer_parameters(), theta, inner_loss=loss_at, outer_loss=loss_at, step=cfg.inner_lr,
                order=cfg.meta_order, second_order=cfg.second_order, inner_grads=grads,
            )
            self._step_generators(result.outer_grads)
            out["loss"] = surrogate_loss(terms.total, theta, result.inner_grads)
            out["meta_outer_loss"] = result.outer_loss
            out["gen_grad_norm"] = torch.stack([g.norm() for g in result.outer_grads]).norm()
        self.finish_step(step, terms)
        return out


@METHODS.register("metaug", "MetAug: OUCL with meta-learned feature-augmentation generators (Li et al., 2022)")
class MetAug(GeneratorMetaLearning):
    Config = MetAugConfig
    ENCODER_PARTS = ENCODER_PARTS

    def __init__(self, cfg: MetAugConfig, backbone: nn.Module) -> None:
        super().__init__(cfg, backbone)
        if rank_and_world()[1] > 1:
            raise ValueError("method.name=metaug trains in one process only: its generators' meta-gradient "
                             "is not synchronised across ranks")
        self.projector = self.make_projector()
        self.build_generators(2)

    # ------------------------------------------------------------------ the network
    def objective(self, x: Tensor, omega: Params, theta: Params | None = None) -> Objective:
        """``L`` on ``x: (2B, C, H, W)`` (view 1 then view 2) with generator weights ``omega``, at
        the module's encoder weights (a real forward) or at ``theta``."""
        cfg = self.cfg
        features = forward_at(self.backbone, "backbone.", theta, x)
        z1, z2 = F.normalize(forward_at(self.projector, "projector.", theta, features), dim=1).chunk(2)
        g1, g2 = (F.normalize(forward_at(gen, f"generators.{v}.", omega, z), dim=1)
                  for v, (gen, z) in enumerate(zip(self.generators, (z1, z2))))

        def contrast(scores: tuple[Tensor, Tensor]) -> Tensor:
            return oucl(*scores, cfg.gamma, circle=cfg.circle, circle_margin=cfg.circle_margin)

        original = pair_scores(z1, z2)
        augmented = [pair_scores(g1, z2), pair_scores(z1, g2), pair_scores(g1, g2)]
        generated = (torch.cat([s[0] for s in augmented], 1), torch.cat([s[1] for s in augmented], 1))
        base = contrast(original)
        aug = sum(contrast(s) for s in augmented)
        margin = margin_injection(*original, *generated, cfg.margin, cfg.margin_positive_scale, cfg.detach_margins)
        total = base + cfg.aug_weight * aug + cfg.margin_weight * margin
        return Objective(total, base, aug, margin, features[: z1.shape[0]], original, generated)

    def prepare(self, step: StepInput) -> Callable[..., Objective]:
        x = torch.cat(step.views)
        return lambda omega, theta=None: self.objective(x, omega, theta)
