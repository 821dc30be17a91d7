"""The CLIP-space losses of IPL (Guo et al., CVPR 2023) and of its StyleGAN-NADA baseline (Gal et al. 2022).

Notation of the paper: ``E_I`` / ``E_T`` the frozen VLM's image / text encoders, ``N`` L2 normalisation,
``f(w, d)`` the feature of the image-specific prompt of latent code ``w`` for domain ``d`` and ``T(d)`` the mean
template feature of ``d`` (:class:`~.model.PromptEncoder`).

* Stage 1, eq. 2 (:func:`contrastive_loss`): the symmetric InfoNCE between ``E_I(G_s(w_i))`` and
  ``N(f(w_i, source))`` with the VLM's logit scale.
* Stage 1, eq. 3 (:func:`domain_loss`): ``L_domain = mean_i 1 - cos(f(w_i, target), T(target))``; the stage-1
  loss is ``L_contr + lambda * L_domain`` (:func:`mapper_loss`).
* Stage 2, eq. 4 (:func:`directional_loss`): ``L = mean_i 1 - cos(dI_i, dT_i)`` with
  ``dI_i = N(E_I(G_t(w_i))) - N(E_I(G_s(w_i)))`` and ``dT_i = N(f(w_i, target)) - N(f(w_i, source))``
  (:func:`image_specific_direction`). NADA uses one fixed ``dT = N(T(target) - T(source))``
  (:func:`nada_direction`, StyleGAN-NADA eq. 2-3) for every image instead.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .config import IPLConfig
from .data import template_prompts


def cosine_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``1 - cos(a, b)`` row-wise, with ``eps`` guarding zero vectors (``G_t = G_s`` exactly at step 0)."""
    dot = (a * b).sum(dim=-1)
    return 1.0 - dot / (a.norm(dim=-1).clamp_min(eps) * b.norm(dim=-1).clamp_min(eps))


def contrastive_loss(image_feats: torch.Tensor, prompt_feats: torch.Tensor, logit_scale: Any) -> torch.Tensor:
    """IPL eq. 2: symmetric cross-entropy of ``logit_scale * E_I(G_s(w_i)) . N(f(w_j, source))``; image ``i``
    and its own prompt are the positive pair, the rest of the batch the negatives."""
    labels = torch.arange(image_feats.shape[0], device=image_feats.device)
    logits = logit_scale * image_feats @ prompt_feats.T
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def domain_loss(prompt_feats: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """IPL eq. 3: ``mean_i 1 - cos(f(w_i, d), T(d))`` (the prompts of domain ``d`` stay near its name)."""
    return cosine_distance(prompt_feats, template.expand_as(prompt_feats)).mean()


def mapper_loss(
    image_feats: torch.Tensor,
    source_feats: torch.Tensor,
    target_feats: torch.Tensor,
    source_template: torch.Tensor,
    target_template: torch.Tensor,
    logit_scale: Any,
    config: IPLConfig,
) -> torch.Tensor:
    """Stage 1: ``L_contr + lambda_domain * (L_domain(target) + lambda_source * L_domain(source))`` (eq. 2-3;
    ``lambda_source`` is 0 in the paper). Prompt features are normalised."""
    contrastive = contrastive_loss(image_feats, source_feats, logit_scale)
    domain = domain_loss(target_feats, target_template)
    if config.lambda_source > 0:
        domain = domain + config.lambda_source * domain_loss(source_feats, source_template)
    return contrastive + config.lambda_domain * domain


def image_specific_direction(source_feats: torch.Tensor, target_feats: torch.Tensor) -> torch.Tensor:
    """IPL's text direction per image: ``dT_i = N(f(w_i, target)) - N(f(w_i, source))`` (eq. 4)."""
    return F.normalize(target_feats, dim=-1) - F.normalize(source_feats, dim=-1)


#: The norm below which an image direction ``dI`` counts as zero in :func:`directional_loss`. At the first LoRA step
#: ``G_t = G_s`` (the LoRA's B is zero), yet the two image features differ by rounding (about 1e-7: the adapted pass
#: runs with gradients, other kernels); normalising that noise would make the first step's direction float noise,
#: which changes with the batch's size or split (and so with the process count under torchrun). Below this guard the
#: loss's gradient is ``-dT / (eps |dT|)``: the first step moves the images along the text direction, deterministically.
#: Real directions are far above it (about 1e-2 after one step).
DIRECTION_EPS = 1e-5


def directional_loss(image_direction: torch.Tensor, text_direction: torch.Tensor) -> torch.Tensor:
    """Eq. 4 (IPL) / NADA's directional loss: ``mean_i 1 - cos(dI_i, dT_i)`` (``dI`` guarded by
    :data:`DIRECTION_EPS`)."""
    return cosine_distance(image_direction, text_direction, eps=DIRECTION_EPS).mean()


def nada_direction(vlm: Any, config: IPLConfig) -> torch.Tensor:
    """StyleGAN-NADA's fixed text direction ``N(mean_t N(E_T(t(target))) - N(E_T(t(source))))`` ``[1, E]``."""
    with torch.no_grad():
        src = vlm.encode_text(template_prompts(config.source_text, config.templates))
        tgt = vlm.encode_text(template_prompts(config.target_text, config.templates))
        return F.normalize((tgt - src).mean(dim=0, keepdim=True), dim=-1)
