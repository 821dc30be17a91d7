"""RPP's supervision (RPP sec. 3.3): hard labels plus soft labels, the zero-shot class probabilities of a frozen
teacher, as knowledge distillation (Hinton et al. 2015; the paper gives no formula)::

    L = CE(z_S, y) + lambda * tau^2 * KL(softmax(z_T / tau) || softmax(z_S / tau))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_label_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0):
    """The soft-label term ``tau^2 * KL(softmax(z_T/tau) || softmax(z_S/tau))`` (batch mean; no gradient into
    the teacher's logits)."""
    tau = float(temperature)
    target = F.softmax(teacher_logits.detach() / tau, dim=-1)
    return F.kl_div(F.log_softmax(student_logits / tau, dim=-1), target, reduction="batchmean") * tau * tau


def rpp_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    *,
    soft_weight: float = 1.0,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``CE(z_S, y) + soft_weight * tau^2 * KL(softmax(z_T/tau) || softmax(z_S/tau))`` (batch mean) and its
    parts ``{"hard", "soft"}``; without teacher logits (or ``soft_weight=0``) the hard-label CE alone."""
    hard = F.cross_entropy(student_logits, labels)
    if teacher_logits is None or soft_weight == 0:
        return hard, {"hard": float(hard.detach()), "soft": 0.0}
    soft = soft_label_loss(student_logits, teacher_logits, temperature)
    return hard + soft_weight * soft, {"hard": float(hard.detach()), "soft": float(soft.detach())}
