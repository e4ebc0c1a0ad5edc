"""Losses: pure functions of tensors, no trainer state; the batch losses also as ``nn.Module``s
(:mod:`contrastlab.losses.modules`)."""

from contrastlab.losses.auc import AUC_MODES, ascent, auc_dino_loss, auc_loss, auc_pairs, dino_pairs, dino_scores
from contrastlab.losses.barlow import barlow_twins_loss, cross_correlation
from contrastlab.losses.byol import byol_loss
from contrastlab.losses.contrastive import (
    LOSS_KINDS,
    batch_pairs,
    contrastive_loss,
    cross_view_pairs,
    debiased_info_nce,
    decoupled_info_nce,
    hard_negative_log_weights,
    info_nce,
    queue_pairs,
)
from contrastlab.losses.difficulty import debiased_triplet_loss, difficulty_weights
from contrastlab.losses.halp import Hallucinated, KMeansResult, hallucinate_positives, halp_loss, spherical_kmeans
from contrastlab.losses.infonce import nt_xent
from contrastlab.losses.margin import MARGIN_TYPES, margin_injection
from contrastlab.losses.isd import similarity_distillation
from contrastlab.losses.mmcl import KERNELS, SOLVERS, KernelSpec, SolverSpec, mmcl_loss
from contrastlab.losses.modules import BarlowTwinsLoss, BYOLLoss, MMCLLoss, NTXentLoss
from contrastlab.losses.oucl import oucl

__all__ = [
    "AUC_MODES",
    "BYOLLoss",
    "BarlowTwinsLoss",
    "Hallucinated",
    "KERNELS",
    "KMeansResult",
    "LOSS_KINDS",
    "ascent",
    "auc_dino_loss",
    "auc_loss",
    "auc_pairs",
    "dino_pairs",
    "dino_scores",
    "SOLVERS",
    "KernelSpec",
    "SolverSpec",
    "MARGIN_TYPES",
    "MMCLLoss",
    "NTXentLoss",
    "barlow_twins_loss",
    "batch_pairs",
    "byol_loss",
    "contrastive_loss",
    "cross_view_pairs",
    "cross_correlation",
    "debiased_info_nce",
    "debiased_triplet_loss",
    "decoupled_info_nce",
    "difficulty_weights",
    "hallucinate_positives",
    "halp_loss",
    "hard_negative_log_weights",
    "info_nce",
    "margin_injection",
    "mmcl_loss",
    "nt_xent",
    "oucl",
    "queue_pairs",
    "similarity_distillation",
    "spherical_kmeans",
]
