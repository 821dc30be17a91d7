"""RPP: prompt pretraining with unshared query/key/value prompts and soft labels (Chen et al. 2024,
"Revisiting Prompt Pretraining of Vision-Language Models", arXiv 2409.06166), on the POMP protocol.

Deep prompts for both towers of a frozen :class:`~..core.vlm.VisionLanguageModel` are pretrained as a zero-shot
classifier over a large class set, saved as a *pretrained prompt bundle*, and then used as the starting point
of other capabilities' prompts (by one config switch: DCAR's dual prompt with ``DualPromptConfig.init_from``,
Diff-Prompt's global prompts with ``PromptConfig.init_from``; any deep-prompt module through
:func:`copy_prompt_tensors`). The paper publishes no code; our reading:

**Prompt structure (RPP sec. 3.2).** Classic deep prompting (VPT-deep / MaPLe, :mod:`..core.deep_prompts`) puts a
learnable token ``p`` into the sequence of each prompted layer; the frozen attention projects it,
``q_p = W_q LN(p)``, ``k_p = W_k LN(p)``, ``v_p = W_v LN(p)``, so the three share one vector (*shared*
mode, ``qkv_mode="shared"``). RPP instead learns *unshared, individual* query, key and value prompts
``Q_p, K_p, V_p`` (each ``[n, width]``) at every prompted attention layer (``qkv_mode="unshared"``): in
attention the prompt positions' projected q/k/v are replaced by them, so the other tokens attend to learned
keys and values directly. The rest of the block is unchanged: out-projection, residual (the prompt
positions keep their shared token as residual stream), MLP. This is done through the ``layer_fn`` hook of
:mod:`..core.deep_prompts`, for the text and the image tower, at the first ``depth`` layers (those whose prompt
tokens are replaced). ``Q_p, K_p, V_p`` start as the projections of the shared tokens, so an untrained
unshared prompt gives exactly the shared prompt's features; training then moves them apart (3x the
parameters per prompted layer). ``qkv_lr_scale`` multiplies their learning rate alone (the paper gives
none); on the val split a larger step closes unshared prompts' seen-class fit gap to shared ones but did not
improve transfer (BENCHMARKS.md, pretraining), so the default is 1.

``qkv_form`` says how the unshared prompts are stored. ``"absolute"``: ``Q_p, K_p, V_p`` are the parameters.
``"offset"``: ``[Q_p; K_p; V_p] = [W_q; W_k; W_v] LN(p) + b + [dQ; dK; dV]`` with the shared token ``p`` and
the offsets ``dQ, dK, dV`` (starting at zero) both trained, the reparametrisation prefix tuning uses for
stability (Li & Liang 2021, sec. 4.3). Both represent the same prompts (every ``Q_p, K_p, V_p`` is reachable);
they differ in how a step moves them: in the offset form a step on ``p`` moves all three together, as in
shared mode, and the offsets add the individual part. The default is ``"offset"``: on the val split the
absolute form transferred worse than shared prompts, the offset form as well as them (BENCHMARKS.md,
pretraining); bundles written before ``qkv_form`` existed hold absolute prompts and are read as such.

**Supervision (RPP sec. 3.3).** Hard labels plus soft labels: the zero-shot class probabilities of a frozen
teacher (by default the same VLM without prompts, with the hand-written template ``teacher_template``), as
knowledge distillation (Hinton et al. 2015; the paper gives no formula)::

    L = CE(z_S, y) + lambda * tau^2 * KL(softmax(z_T / tau) || softmax(z_S / tau))

``z_S``/``z_T`` are the student's (prompted) and the teacher's logits ``scale * <f_img, f_class>`` over the
classes of the step, ``lambda = soft_weight``, ``tau = temperature``; ``soft_weight=0`` is hard labels only.
The default weight 0.1 is the best of 1, 0.25 and 0.1 on the val split (weight 1 cost held-out accuracy).

**Class-subset sampling (POMP, Ren et al. 2023, sec. 3.2 "local contrast").** Each step the softmax runs over
``classes_per_step`` classes: those of the batch plus classes drawn at random, so the text tower encodes a
fixed number of class prompts whatever the size of the label space (``0``: all classes).

**Label space.** On the procedural world a class is a (colour, fine category) pair, named ``"red five-point star"``
(540 pairs, 493 outside the compositional split's held-out pairs, :func:`~..world.sources.world_classes`); the
class prompt is the learned context followed by ``class_template`` (``"{}."``), i.e. CoOp's layout, and the text
context starts from the tokens of ``init_text`` ("a picture of a"), so that an untrained prompt reads like the
teacher's template. Training images are single objects of a class rendered with a random size, texture, position
and background (``shots`` fixed renders per class, as POMP's 16-shot ImageNet-21K); a folder with one sub-folder
per class works too (:class:`FolderClassSource`).

**Bundle.** :func:`save_pretrained_prompts` writes the RPP prompts (exact, reloadable) plus, for every
prompted layer of both towers, the *shared-token equivalent* in :class:`~..core.deep_prompts.DeepPrompts`' storage
convention (layer 0 text: context token embeddings; layer 0 image: tokens before ``ln_pre``; deeper layers:
hidden states). For unshared prompts it is the token whose projections best match the learned ``Q_p, K_p,
V_p``: least squares ``min_h ||[W_q; W_k; W_v] h + b - [Q_p; K_p; V_p]||`` for the LayerNorm output ``h``,
then LayerNorm inverted with the shared token's own mean and scale (LayerNorm forgets them). The relative
residual of that fit is stored (``conversion_error``): the part of RPP's extra freedom a shared-token
consumer cannot represent. Consumers copy these tensors (:func:`init_deep_prompts_from_bundle`,
:func:`~..dual_prompt.model.init_dual_prompt_from_bundle`); shapes need not match (the overlapping tokens and
layers are copied).

**Where things are.** ``config.py`` :class:`RPPConfig`; ``model.py`` the unshared q/k/v attention and
:class:`RPPPrompts`; ``losses.py`` :func:`rpp_loss`; ``data.py`` POMP's class subsets and the class-folder
source; ``train.py`` :func:`pretrain_prompts`, :func:`pretrain_bundle` and zero-shot evaluation; ``io.py`` the
bundle files and the generic start of deep prompts from a bundle. The world's class sources are in
:mod:`promptweave.prompt_modules.world.sources`; starting DCAR and Diff-Prompt from a bundle lives with them
(this package imports neither).
"""

from ..core.data import IMAGE_EXTENSIONS, ClassBatch, ClassSource
from .config import METHOD, QKV_FORMS, QKV_MODES, TOWERS, RPPConfig
from .data import FolderClassSource, read_class_map, sample_class_subset
from .io import (
    PretrainedPromptBundle,
    as_bundle,
    copy_prompt_tensors,
    init_deep_prompts_from_bundle,
    load_pretrained_prompts,
    save_pretrained_prompts,
)
from .losses import rpp_loss, soft_label_loss
from .model import LayerTokens, RPPPrompts, layer_input_from_storage, project_qkv, unshared_qkv_block
from .train import PretrainResult, accuracy, classify, pretrain_bundle, pretrain_prompts, teacher_class_features

__all__ = [
    "IMAGE_EXTENSIONS",
    "METHOD",
    "QKV_FORMS",
    "QKV_MODES",
    "TOWERS",
    "ClassBatch",
    "ClassSource",
    "FolderClassSource",
    "LayerTokens",
    "PretrainResult",
    "PretrainedPromptBundle",
    "RPPConfig",
    "RPPPrompts",
    "accuracy",
    "as_bundle",
    "classify",
    "copy_prompt_tensors",
    "init_deep_prompts_from_bundle",
    "layer_input_from_storage",
    "load_pretrained_prompts",
    "pretrain_bundle",
    "pretrain_prompts",
    "project_qkv",
    "read_class_map",
    "rpp_loss",
    "sample_class_subset",
    "save_pretrained_prompts",
    "soft_label_loss",
    "teacher_class_features",
    "unshared_qkv_block",
]
