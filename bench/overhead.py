"""Benchmark ``overhead``: what each PromptWeave conditioning path costs over plain CLIPTextEncode.

Every conditioning node ends in an SD1.x text-encoder pass; what differs is the work before it. Timed per
call, one image and one prompt, one CPU thread, against a random CLIP-L of the real shape
(:mod:`.sd_text_encoder`), on the first scene of the split:

- ``clip_text_encode``: tokenize and encode the prompt (ComfyUI's CLIPTextEncode);
- ``learned_prompt`` (the bold **PromptWeave** row): 8 learned vectors spliced into the encode
  (``PWLearnedPromptConditioning``, the path the dual-prompt and Diff-Prompt conditionings end in);
- ``dual_prompt``: DCAR's text context read as vocabulary tokens, then spliced (``PWDualPromptConditioning``);
- ``diff_prompt``: Diff-Prompt generates its prompt tokens for the image and expression (DDIM over mask
  latents on WorldCLIP, then the adapters), then they are spliced (``PWDiffPromptConditioning``);
- ``inversion``: the prompt inverter predicts a prompt from the image's WorldCLIP feature, which is then
  encoded (``PWPromptInversion``'s conditioning output).

Metrics per row: ``ms_per_call`` and ``rel_clip_text_encode`` (its time over ``clip_text_encode``'s). The
modules are built from their default configurations (untrained but for the shipped inverter): time does not
depend on the weights. Needs ComfyUI's SD1 tokenizer files and the shipped WorldCLIP; without them the run
stops with a message that names what is missing.
"""

from __future__ import annotations

import dataclasses

import torch

from ..prompt_modules.core.artifacts import ArtifactError
from ..prompt_modules.core.learned_prompt import LearnedPrompt, LearnedPromptConfig, encode_prompt_for_pipeline
from ..prompt_modules.diff_prompt import DiffPrompt, DiT, DiTConfig, MaskVAE, MaskVAEConfig, PromptConfig
from ..prompt_modules.dual_prompt import DualPrompt
from ..prompt_modules.inversion import VLMImageEncoder, load_inverter
from ..prompt_modules.world.dataset import render_batch
from ..prompt_modules.world.models import WEIGHTS_DIR, load_worldclip
from ..prompt_modules.world.scene import split_seed_range
from .harness import TaskResult
from .sd_text_encoder import plain_encode, sd1_text_encoder, seconds_per_call

INVERTER_FILE = "inverter-worldclip.safetensors"
N_LEARNED = 8


def run(seed: int, split: str, quick: bool) -> TaskResult:
    torch.set_num_threads(1)
    reps = 3 if quick else 20
    clip_l = sd1_text_encoder(seed)
    if clip_l is None:
        raise SystemExit("overhead: ComfyUI's SD1 tokenizer files were not found; run `make setup` (or set "
                         "COMFYUI_DIR) first")
    try:
        vlm = load_worldclip().requires_grad_(False)
        inverter = load_inverter(WEIGHTS_DIR / INVERTER_FILE, backbone=f"vlm:{vlm.name}")
    except ArtifactError as exc:
        raise SystemExit(f"overhead: the shipped world models are needed ({exc})") from None
    tokenizer, encoder = clip_l
    table = encoder.get_input_embeddings().weight

    start = split_seed_range(split).start
    scene = render_batch(range(start, start + 1))
    image, caption, expression = scene["image"], str(scene["clean_caption"][0]), str(scene["ref_text"][0])

    widths = {"clip_l": int(table.shape[1])}
    learned = LearnedPrompt(LearnedPromptConfig(n_ctx=N_LEARNED, widths=widths, backbone="any"),
                            generator=torch.Generator().manual_seed(seed))
    dual = DualPrompt.for_vlm(vlm, seed=seed).eval()
    dual.project_to_vocabulary(vlm)
    vae = MaskVAE(MaskVAEConfig())
    dit = DiT(dataclasses.replace(DiTConfig(), cond_dim=vlm.embed_dim, latent_channels=vae.config.latent_channels,
                                  latent_size=vae.config.latent_size))  # the shapes train_dit gives it
    diff = DiffPrompt.for_vlm(vlm, vae, dit, PromptConfig(), seed=seed).eval()
    image_encoder = VLMImageEncoder(vlm)

    def diff_prompt_path() -> None:
        ids = diff.text_prompt_token_ids(vlm, image, [expression], generator=torch.Generator().manual_seed(seed))
        prompt = LearnedPrompt.from_token_ids(ids[0], {"clip_l": table})
        encode_prompt_for_pipeline(prompt, caption, tokenizer, encoder)

    def inversion_path() -> None:
        prompt = inverter.invert(image_encoder(image), top_k=8)[0]["prompt"]
        plain_encode(tokenizer, encoder, prompt or " ")

    paths = {
        "clip_text_encode": lambda: plain_encode(tokenizer, encoder, caption),
        "learned_prompt": lambda: encode_prompt_for_pipeline(learned, caption, tokenizer, encoder),
        "dual_prompt": lambda: encode_prompt_for_pipeline(
            dual.sd_learned_prompt({"clip_l": table}), caption, tokenizer, encoder
        ),
        "diff_prompt": diff_prompt_path,
        "inversion": inversion_path,
    }
    ms = {name: 1000.0 * seconds_per_call(fn, reps) for name, fn in paths.items()}
    rows = {name: {"ms_per_call": v, "rel_clip_text_encode": v / ms["clip_text_encode"]} for name, v in ms.items()}
    method = rows.pop("learned_prompt")
    notes = {
        "backbone": vlm.name,
        "reps": reps,
        "threads": 1,
        "text_encoder": "random CLIP-L (SD1.x shape), ComfyUI sd1_tokenizer",
        "learned_tokens": N_LEARNED,
        "diff_prompt_ddim_steps": diff.config.ddim_steps,
        "inverter": INVERTER_FILE,
        "caption": caption,
        "expression": expression,
    }
    return TaskResult(metrics=method, baselines=rows, notes=notes)
