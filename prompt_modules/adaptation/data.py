"""What IPL trains on (Guo et al., CVPR 2023): no files, only text and latent codes.

IPL is zero-shot: the target domain is named by text, so a run reads no images. Its data are

* the **prompt sets** of each domain ``d`` (paper sec. 3.2): the template prompts whose mean text feature is
  ``T(d)`` (the domain loss of eq. 3 and NADA's fixed direction), the plain prompt ``"<ctx_init> d."`` whose
  feature is the official code's base feature, and the placeholder prompt ``[SOS] x x x x d [EOS]`` whose ``x``
  embeddings the latent mapper's vectors replace;
* the **latent codes** ``w`` of each step: ``generator.sample_codes(batch, seed)`` with a seed derived from the
  run's seed, the stage and the step only (:func:`step_codes`), so an interrupted run resumed from its checkpoint
  draws the same batches. The pool the codes are drawn from is the generator's
  (:func:`~.generators.sample_worldgen_latents` / :func:`~.generators.encode_worldgen_latents` for WorldGen,
  Gaussian starting noise for Stable Diffusion).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .generators import AdaptableGenerator

#: Templates whose mean text feature is the "plain domain-name feature" of the domain loss (stage 1) and of
#: NADA's fixed text direction. The official code uses CLIP's 80 ImageNet templates; a short list does the
#: same job for small VLMs with a short vocabulary of phrasings.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "a rendering of a {}.",
    "an image in {} style.",
    "a {} image.",
    "a {}.",
)

PLACEHOLDER = "x"  # one BPE token per context slot; the mapper's vectors replace its embeddings


def template_prompts(domain: str, templates: Sequence[str]) -> list[str]:
    """The prompts whose mean text feature is ``T(domain)``: every template filled with the stripped name."""
    return [t.format(domain.strip()) for t in templates]


def base_prompt(ctx_init: str, domain: str) -> str:
    """The plain prompt ``"<ctx_init> <domain>."`` whose feature is added to every mapped prompt's feature."""
    return f"{ctx_init} {domain.strip()}."


def placeholder_prompt(domain: str, n_ctx: int) -> str:
    """``n_ctx`` placeholder tokens then the domain name: the prompt whose placeholders ``F(w)`` replaces."""
    return " ".join([PLACEHOLDER] * n_ctx) + " " + domain.strip()


def step_seed(seed: int, stage: int, step: int) -> int:
    """The seed of one training step's batch: a function of the run's ``seed``, the ``stage`` (1 mapper, 2 LoRA)
    and the ``step`` only."""
    return (int(seed) * 1_000_003 + stage * 7_919_993 + step) % (2**62)


def step_codes(generator: AdaptableGenerator, batch_size: int, seed: int, stage: int, step: int) -> torch.Tensor:
    """The latent codes ``w`` of one training step (``generator.sample_codes`` at :func:`step_seed`)."""
    return generator.sample_codes(batch_size, step_seed(seed, stage, step))
