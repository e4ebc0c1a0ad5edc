"""ISD's loss (Tejankar et al., ICCV 2021): similarity distillation over a memory bank.

The teacher's similarities of each image to the bank, softened at ``t_teacher``, are the
target of the student's, softened at ``t_student``: ``KL(p_teacher || p_student)`` averaged
over the batch. The two views of an image are never compared with each other: a bank entry
similar to the image keeps a high target probability instead of being pushed away.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from contrastlab.losses.logsumexp import log_softmax


def similarity_distillation(student: torch.Tensor, teacher: torch.Tensor, bank: torch.Tensor,
                            t_student: float, t_teacher: float) -> torch.Tensor:
    """``mean_i sum_m p_im (log p_im - log s_im)``, ``p_i = softmax(k_i M^T / t_teacher)``,
    ``s_i = softmax(q_i M^T / t_student)``, in at least float32 whatever the autocast.

    Args:
        student: ``(B, D)`` student embeddings ``q`` (normalised here; gradients flow).
        teacher: ``(B, D)`` teacher embeddings ``k`` (normalised here; constants).
        bank: ``(K, D)`` memory of past teacher embeddings, unit rows (constants).
        t_student, t_teacher: temperatures ``> 0``.
    """
    if t_student <= 0 or t_teacher <= 0:
        raise ValueError(f"temperatures must be > 0, got t_student={t_student}, t_teacher={t_teacher}")
    if student.shape != teacher.shape or student.dim() != 2 or bank.dim() != 2 or bank.shape[1] != student.shape[1]:
        raise ValueError(f"expected student, teacher: (B, D) and bank: (K, D), got {tuple(student.shape)}, "
                         f"{tuple(teacher.shape)}, {tuple(bank.shape)}")
    with torch.autocast(student.device.type, enabled=False):
        dtype = torch.promote_types(student.dtype, torch.float32)
        q = F.normalize(student.to(dtype), dim=1)
        k = F.normalize(teacher.detach().to(dtype), dim=1)
        memory = bank.detach().to(dtype)
        log_target = log_softmax(k @ memory.T / t_teacher, dim=1)
        log_student = log_softmax(q @ memory.T / t_student, dim=1)
        return (log_target.exp() * (log_target - log_student)).sum(dim=1).mean()
