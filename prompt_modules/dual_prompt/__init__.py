"""DCAR: dual prompt learning for fine-grained image-text retrieval (Wang et al. 2025, arXiv 2508.04028).

A frozen :class:`~..core.vlm.VisionLanguageModel` gets learnable prompts on both towers (:mod:`..core.deep_prompts`:
text context tokens built on the shared :class:`~..core.learned_prompt.LearnedPrompt`, plus visual prompt tokens,
optionally MaPLe-coupled and deep) and is trained for retrieval in both directions. The paper publishes
neither formulas nor prompt sizes; our choices:

**Attribute level: dynamic token re-weighting by an image-text mutual-information estimate.** For every word
token ``t`` of a caption we take its contextual feature ``e_t`` (final hidden state, ``ln_final``, text
projection, normalised) and CLIP's own retrieval posterior over a reference set of ``K`` images,
``p(j | t) = softmax_j(s * <e_t, v_j>)`` (``s`` the VLM's logit scale). The estimate is

    ``I_t = log K - H(p(. | t)) = KL(p(. | t) || uniform)``,

the pointwise contribution of token ``t`` to the mutual information ``I(T; J)`` between the token and the
image identity (uniform prior over the reference images). Function words ("a", "on") spread their posterior
over all images (``I_t ~ 0``); category, colour and texture words single out few images (large ``I_t``).
We chose it because (i) it needs no extra network or labels, (ii) it is bounded (``0..log K``) and cheap,
(iii) it depends only on the text and a fixed reference set, so retrieval stays a bi-encoder (text features
do not depend on the query image, galleries are encoded once). The weights ``w_t = I_t / sum I`` (word
tokens only, no gradient through them) re-weight the tokens in an attribute term added to the pooled
feature: ``g = normalize(f_eot + alpha * sum_t w_t e_t)`` with a learnable ``alpha``. A category-swap negative
then differs from the positive in a *heavily weighted* token. The reference set is the current batch's
image features during training and a stored bank of ``bank_size`` training-image features at inference
(``image_bank``, saved with the prompt); with an empty bank the weights are uniform.

**Category level: category-aware augmentation and weighted contrastive loss.** Each image comes with hard
negative captions from two views of its category: swaps to a *sibling* (same family, another member;
weight ``same_family_weight``) and swaps to another family (``other_family_weight``); the world provides both
(:attr:`~..world.scene.Scene.hard_negative_edits`), FDRD JSON provides 4 category swaps per image (weighted as
siblings). In-batch pairs are weighted by category match: a caption/image of the same family but other fine
category counts ``batch_family_weight`` times in the softmax denominator, one with the same categories
``batch_same_category_weight`` times. The loss is the symmetric (image->text and text->image) InfoNCE with
these weights inside the log-sum-exp (a weight ``w`` adds ``log w`` to that logit); hard negatives enter the
image->text direction. Per image at most ``max_negatives`` hard negatives are used (world: sibling swaps first,
plus one swap to another family when there is one), since the text tower's cost grows with their number.
The default of two (one of each view) was chosen on the world's val split (200 steps, seeds 0 and 1; i2t / t2i
R@1): 3 negatives 22.8 / 81.2, 2 negatives 23.2 / 81.7, 1 (the other-family view only) 23.5 / 81.9, none 22.9 /
82.1, plain MaPLe prompts 23.0 / 81.8. The differences are within seed noise; two is the fewest that keeps
both views of the category-aware augmentation.

**Prompt shape defaults** (the paper gives none): 4 text and 4 image tokens, a depth that scales with the tower as
MaPLe prompts 9 of 12 layers (``round(0.75 * layers)``, :func:`~.config.maple_depth`; the world benchmarks keep the
depth 2 chosen on WorldCLIP's 4 layers), MaPLe coupling (image prompts = linear map of the text prompts).
The caption keeps its unprompted token positions (``keep_positions``; WorldCLIP never saw captions start
later) and visual/deep prompts start close to the unprompted model (class-token copies and measured mean
hidden states, :meth:`~..core.deep_prompts.DeepPrompts.init_from_vlm`): randomly initialised prompts cost a trained
small backbone several recall points that a few hundred steps do not win back.

Switching ``token_reweighting`` / ``category_aware`` off gives the ablations; with both off and
``coupling=True`` the model is MaPLe-like, with ``n_visual=0`` CoOp-like.

**Stable Diffusion.** Only the text context can reach an SD text encoder, and only approximately: the
VLM's token space (e.g. 192-d WorldCLIP) is not CLIP-L's (768-d) or CLIP-G's (1280-d). After training, each
learned context vector is projected to its nearest vocabulary token in the VLM's token embedding
(``text_token_ids``, cosine; the CLIP BPE vocabulary is shared by all these encoders); an SD encoder then
gets *its own* embeddings of those tokens (a hard prompt, as in PEZ). What transfers is therefore a discrete
reading of the context, not the continuous vectors, and nothing of the visual or deep prompts. Continuous
SD vectors can be attached with :meth:`DualPrompt.set_sd_prompt` (e.g. a learned prompt trained on that SD
model); they take precedence and are checked against the encoder's widths (an SD1 prompt on an SDXL CLIP is
refused).

**Where things are.** ``config.py`` :class:`DualPromptConfig`; ``losses.py`` the MI token weights and the
category-aware loss; ``model.py`` :class:`DualPrompt`, its start from RPP bundles and retrieval scoring;
``data.py`` FDRD JSON and caption-folder sources; ``train.py`` :func:`train_dual_prompt`; ``io.py`` the
``dcar`` safetensors files. The procedural world's source is
:class:`promptweave.prompt_modules.world.sources.WorldSource` (the method does not depend on the world).
"""

from ..core.data import IMAGE_EXTENSIONS, RetrievalBatch, RetrievalSource
from .config import FDRD_NEGATIVES, METHOD, DualPromptConfig, maple_depth
from .data import FDRDEntry, FDRDSource, FolderSource, read_fdrd_json
from .io import load_dual_prompt, save_dual_prompt
from .losses import (
    category_aware_contrastive_loss,
    category_match_weights,
    mi_token_weights,
    token_mutual_information,
)
from .model import (
    DualPrompt,
    encode_gallery,
    init_dual_prompt_from_bundle,
    rank_images,
    rank_texts,
    similarity,
)
from .train import TrainResult, train_dual_prompt

__all__ = [
    "FDRD_NEGATIVES",
    "IMAGE_EXTENSIONS",
    "METHOD",
    "DualPrompt",
    "DualPromptConfig",
    "FDRDEntry",
    "FDRDSource",
    "FolderSource",
    "RetrievalBatch",
    "RetrievalSource",
    "TrainResult",
    "category_aware_contrastive_loss",
    "category_match_weights",
    "encode_gallery",
    "init_dual_prompt_from_bundle",
    "load_dual_prompt",
    "maple_depth",
    "mi_token_weights",
    "rank_images",
    "rank_texts",
    "read_fdrd_json",
    "save_dual_prompt",
    "similarity",
    "token_mutual_information",
    "train_dual_prompt",
]
