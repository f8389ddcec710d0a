"""HDMNet training losses (MODEL.md section 3): cross-entropy terms and correlation distillation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = 255
KL_EPS = 1e-12
TEACHER_NEG = -1e9


def segmentation_ce(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy over ``[B, C, H, W]`` logits with label 255 ignored (mean over pixels)."""
    if logits.shape[-2:] != target.shape[-2:]:
        raise ValueError(
            f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in size"
        )
    return F.cross_entropy(logits.float(), target.long(), ignore_index=IGNORE_INDEX)


def gt_teacher(query_mask: Tensor) -> Tensor:
    """Ground-truth teacher logits ``[B, H, W]``: 1 on foreground, -1e9 elsewhere (255 included)."""
    fg = (query_mask == 1).float()
    return fg.masked_fill(fg == 0, TEACHER_NEG)


def kl_distill(teacher: Tensor, student: Tensor) -> Tensor:
    """KL(softmax(t) || softmax(s)) over all positions of each map, mean over the batch.

    ``teacher`` is resized bilinearly (align_corners=False) to the student's size first.
    Both are ``[B, h, w]``; the teacher carries no gradient.
    """
    if teacher.shape[-2:] != student.shape[-2:]:
        teacher = F.interpolate(
            teacher.unsqueeze(1), size=student.shape[-2:], mode="bilinear", align_corners=False
        ).squeeze(1)
    t = teacher.detach().flatten(1).float().softmax(1)
    s = student.flatten(1).float().softmax(1)
    loss = t * torch.log(t + KL_EPS) - t * torch.log(s + KL_EPS)
    return loss.sum(1).mean()


def distillation_loss(correlations: Sequence[Tensor], query_mask: Tensor) -> Tensor:
    """Hierarchical distillation: the ground truth teaches the coarsest map, each map the next.

    ``correlations`` run coarse to fine (``[B, h_i, w_i]``); the result is the mean of the
    per-map KL terms (the official sum over three maps divided by 3).
    """
    if not correlations:
        raise ValueError("distillation_loss needs at least one correlation map")
    teacher = gt_teacher(query_mask)
    total = correlations[0].new_zeros(())
    for corr in correlations:
        total = total + kl_distill(teacher, corr)
        teacher = corr.detach()
    return total / len(correlations)


__all__ = [
    "IGNORE_INDEX",
    "distillation_loss",
    "gt_teacher",
    "kl_distill",
    "segmentation_ce",
]
