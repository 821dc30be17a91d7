"""IPL latent-mapper adaptation in ComfyUI: train the latent mapper, adapt a MODEL to a named domain as a LoRA.

The U-Net of the incoming MODEL is the generator (:class:`~..prompt_modules.adaptation.StableDiffusionGenerator`):
its attention projections get a PEFT LoRA, images come from a few differentiable DDIM steps on the source text's
conditioning decoded by the VAE, and the VLM (e.g. WorldCLIP, or any open_clip model you load) judges them.
The LoRA is saved to ``models/loras`` in kohya naming (ComfyUI's ``LoraLoader`` loads every tensor) and the
adapted MODEL is the incoming one with that file applied exactly as ``LoraLoaderModelOnly`` would.
"""

from __future__ import annotations

from pathlib import Path

import torch
from comfy_api.latest import io

from ..prompt_modules.adaptation import (
    IPLConfig,
    StableDiffusionGenerator,
    TrainedMapper,
    adapted_worldgen,
    kohya_state_dict,
    load_lora_native,
    load_mapper,
    run_adaptation,
    save_lora_comfyui,
    save_mapper,
    train_mapper,
)
from ..prompt_modules.core.artifacts import (
    ArtifactError,
    BackboneMismatchError,
    ConfigError,
    artifact_method,
)
from ..prompt_modules.core.plots import loss_curve_image
from ..prompt_modules.core.vlm import VisionLanguageModel, trainable_copy
from ._common import (
    NodeInputError,
    TrainingProgress,
    check_inputs,
    checkpointed_run,
    model_files,
    output_model_path,
    resolve_model_file,
    run_checkpoint,
    sd_unet,
    tensors_key,
)
from ._types import LatentMapperType, VLMType, WorldGenType

CATEGORY = "PromptWeave/adaptation"
METHODS = ["ipl", "nada"]


# ----- checks -------------------------------------------------------------------------------------------------
def _check_texts(node: str, source_text: str, target_text: str) -> tuple[str, str]:
    source, target = (source_text or "").strip(), (target_text or "").strip()
    if not target:
        raise NodeInputError(
            node,
            "target_text",
            "the target text is empty",
            "name the domain to adapt to, e.g. 'neon sign' or 'ukiyo-e print'",
        )
    if not source:
        raise NodeInputError(
            node, "source_text", "the source text is empty", "name what the model makes now, e.g. 'photo'"
        )
    if source.lower() == target.lower():
        raise NodeInputError(
            node, "target_text", "the target text equals the source text", "name a different target domain"
        )
    return source, target


def _check_mapper(node: str, mapper, vlm: VisionLanguageModel) -> TrainedMapper:
    try:
        mapper.check_vlm(vlm)
    except BackboneMismatchError as exc:
        raise NodeInputError(
            node,
            "vlm",
            f"the VLM does not match the latent mapper: {exc}",
            "connect the VLM the mapper was trained with, or train a mapper for this VLM",
        ) from None
    return mapper


def _writable_target(node: str, input_name: str, name: str, folder_key: str) -> Path:
    """Where the file will go; an empty name is refused here, unsafe names, missing models folders and folders
    that cannot be written by :func:`output_model_path`, before any training."""
    stem = (name or "").strip().removesuffix(".safetensors")
    if not stem:
        raise NodeInputError(node, input_name, "the file name is empty", "type a name such as 'neon-style'")
    return Path(output_model_path(node, input_name, stem, folder_key))


def _config(node: str, inputs: dict[str, str], **fields) -> IPLConfig:
    """``IPLConfig(**fields)``; a bad value is reported on the node input it came from: ``inputs`` maps the config
    fields that have another input name (e.g. ``mapper_batch`` -> ``batch_size``), a field passed in ``fields``
    is an input of its own name, and any other field is reported as ``settings``."""
    try:
        return IPLConfig(**fields)
    except ConfigError as exc:
        name = inputs.get(exc.field, exc.field if exc.field in fields else "settings")
        raise NodeInputError(node, name, str(exc), "change this input") from None


# ----- the SD generator from ComfyUI objects -----------------------------------------------------------------------
def _sd_generator(
    node: str, model, clip, vae, source_text: str, width: int, height: int, sample_steps: int
) -> StableDiffusionGenerator:
    import comfy.model_base
    import comfy.model_management
    import comfy.model_sampling

    base, unet = sd_unet(node, model, allow_sdxl=True)
    config = base.model_config.unet_config
    # the model's own sampling, or the one a node such as ModelSamplingDiscrete patched in
    sampling = model.get_model_object("model_sampling") if hasattr(model, "get_model_object") else None
    sampling = sampling if sampling is not None else base.model_sampling
    kinds = comfy.model_sampling
    # what the U-Net predicts: the prediction classes among the sampling's bases (the leaf class combines them)
    targets = {c for c in type(sampling).__mro__[1:] if issubclass(c, kinds.EPS)}
    sigmas = getattr(sampling, "sigmas", None)
    supported = (
        targets in ({kinds.EPS}, {kinds.EPS, kinds.V_PREDICTION})
        and isinstance(sampling, kinds.ModelSamplingDiscrete)
        and torch.is_tensor(sigmas) and sigmas.numel() == 1000  # the 1000-step discrete schedule (not LCM's 50)
    )
    prediction_type = "v_prediction" if isinstance(sampling, kinds.V_PREDICTION) else "epsilon"
    if not supported:
        raise NodeInputError(
            node, "model", f"{type(sampling).__name__} sampling is not supported (discrete epsilon and v-prediction "
            "are)",
            "use an SD1.x, SD2.x or SDXL checkpoint (epsilon or v-prediction)",
        )
    if clip is None:
        raise NodeInputError(node, "clip", "no CLIP is connected", "connect the CLIP output of Load Checkpoint")
    if vae is None or not hasattr(vae, "first_stage_model"):
        raise NodeInputError(node, "vae", "no VAE is connected", "connect the VAE output of Load Checkpoint")
    if width % 8 or height % 8:
        raise NodeInputError(node, "width", f"{width}x{height} is not a multiple of 8", "use multiples of 8")
    comfy.model_management.load_models_gpu([model])  # applies any patches (other LoRAs) to the weights
    cond = clip.encode_from_tokens_scheduled(clip.tokenize(source_text))
    context = cond[0][0]
    added_cond = None
    if isinstance(base, comfy.model_base.SDXL):  # (sd_unet let it through) its pooled embedding + size ids as y
        pooled = cond[0][1].get("pooled_output")
        if pooled is None:
            raise NodeInputError(node, "clip", "this CLIP gives no pooled output, which SDXL needs",
                                 "connect the CLIP of the same SDXL checkpoint")
        y = base.encode_adm(pooled_output=pooled, width=width, height=height, target_width=width,
                            target_height=height)
        added_cond = {"y": y}
    sigmas = sampling.sigmas.detach().float().cpu()
    alphas_cumprod = 1.0 / (1.0 + sigmas**2)
    device = comfy.model_management.get_torch_device()

    def unet_call(m, x, t, c, **added):
        return m(x, timesteps=t, context=c, **added).float()

    def decode_call(m, x0):
        raw = base.process_latent_out(x0)
        dtype = next(m.parameters()).dtype
        return (m.decode(raw.to(dtype)).float() + 1.0) * 0.5

    with torch.inference_mode(False):
        generator = StableDiffusionGenerator(
            unet,
            unet_call,
            vae.first_stage_model,
            decode_call,
            context.to(device),
            latent_size=(height // 8, width // 8),
            latent_channels=int(config.get("in_channels", 4)),
            sample_steps=sample_steps,
            naming="ldm",
            num_res_blocks=list(config["num_res_blocks"]),
            alphas_cumprod=alphas_cumprod,
            label=type(base).__name__.lower(),
            prediction_type=prediction_type,
            added_cond=added_cond,
        )
        generator.lora_root.to(device)  # the frozen U-Net keeps its dtype; the LoRA trains in fp32
        generator.decoder.to(device)
    return generator




def _plots(*curves: tuple[str, list[float]]) -> torch.Tensor:
    """One loss plot per ``(title, losses)`` that has steps, one below the other, as one IMAGE."""
    images = [loss_curve_image(c, title=title) for title, c in curves if c]
    return torch.cat(images or [loss_curve_image([])], dim=0).unsqueeze(0)


def _progress(total: int):
    """``callback(stage, step, stage_total, loss)`` of run_adaptation: one bar over both stages."""
    progress = TrainingProgress(total)
    state = {"stage": None, "last_total": 0}

    def on_step(stage: str, step: int, stage_total: int, loss: float) -> None:
        if state["stage"] not in (None, stage):
            progress.offset = state["last_total"]
        state["stage"], state["last_total"] = stage, stage_total
        progress(step, stage_total, loss)

    return on_step


# ----- nodes --------------------------------------------------------------------------------------------------------
def _common_inputs() -> list:
    return [
        io.Model.Input("model", tooltip="The diffusion model to adapt (SD1.x/SD2.x/SDXL U-Net; epsilon or v)."),
        io.Clip.Input("clip", tooltip="Its text encoder: encodes the source text as the U-Net's conditioning."),
        io.Vae.Input("vae", tooltip="Its VAE: decodes the sampled latents for the VLM to judge."),
        VLMType.Input(
            "vlm",
            tooltip="The frozen vision-language model whose text and image features guide the "
            "adaptation (e.g. WorldCLIP from Load World Models).",
        ),
        io.String.Input("source_text", default="photo", tooltip="What the model makes now, e.g. 'photo'."),
        io.String.Input(
            "target_text",
            default="neon sign",
            tooltip="The domain to adapt to, by name only, e.g. 'neon sign', 'ukiyo-e print'.",
        ),
    ]


def _sampling_inputs() -> list:
    return [
        io.Int.Input("width", default=512, min=64, max=2048, step=8, tooltip="Width of the training images."),
        io.Int.Input("height", default=512, min=64, max=2048, step=8, tooltip="Height of the training images."),
        io.Int.Input(
            "sample_steps",
            default=2,
            min=1,
            max=20,
            tooltip="Differentiable DDIM steps per training image (more: better images, slower).",
        ),
    ]


class TrainLatentMapper(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PWTrainLatentMapper",
            display_name="Train Latent Mapper (IPL)",
            category=CATEGORY,
            description="IPL stage 1 (Guo et al. 2023): trains the latent mapper that turns each image's starting "
            "noise into image-specific prompt vectors for the VLM (contrastive loss + lambda x domain loss), with "
            "the model frozen. Connect its output to Adapt Model; saved to models/promptweave when a name is set.",
            inputs=[
                *_common_inputs(),
                io.Int.Input("steps", default=300, min=1, max=100_000, tooltip="Mapper iterations (paper: 300)."),
                io.Int.Input(
                    "batch_size",
                    default=8,
                    min=2,
                    max=256,
                    tooltip="Images per iteration (paper: 32; each needs a short sampling run).",
                ),
                io.Float.Input(
                    "lambda_domain",
                    default=1.0,
                    min=0.0,
                    max=100.0,
                    step=0.1,
                    tooltip="Weight of the domain loss (paper: 1).",
                ),
                io.Int.Input("n_ctx", default=4, min=1, max=16, tooltip="Prompt vectors per image (paper: 4)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Seed of initialisation and batches."),
                *_sampling_inputs(),
                io.String.Input(
                    "save_name",
                    default="",
                    tooltip="File name in models/promptweave (no extension); empty: do not save.",
                ),
            ],
            outputs=[
                LatentMapperType.Output(display_name="mapper", tooltip="The trained latent mapper."),
                io.Image.Output(display_name="loss_plot", tooltip="Stage 1 loss per step."),
            ],
        )

    @classmethod
    @check_inputs
    def execute(
        cls,
        model,
        clip,
        vae,
        vlm,
        source_text: str,
        target_text: str,
        steps: int,
        batch_size: int,
        lambda_domain: float,
        n_ctx: int,
        seed: int,
        width: int = 512,
        height: int = 512,
        sample_steps: int = 2,
        save_name: str = "",
    ) -> io.NodeOutput:
        node = "PWTrainLatentMapper"
        source, target = _check_texts(node, source_text, target_text)
        out_path = _writable_target(node, "save_name", save_name, "promptweave") if save_name.strip() else None
        config = _config(
            node,
            {"mapper_steps": "steps", "mapper_batch": "batch_size"},
            source_text=source,
            target_text=target,
            n_ctx=n_ctx,
            mapper_steps=steps,
            mapper_batch=batch_size,
            lambda_domain=lambda_domain,
            seed=seed,
        )
        generator = _sd_generator(node, model, clip, vae, source, width, height, sample_steps)
        settings = [generator.name, vlm.name, config.to_dict(), width, height, sample_steps]
        run = run_checkpoint("mapper", settings, folder=True)
        ckpt = run / "mapper.state.safetensors"
        on_step = _progress(steps)
        with checkpointed_run(node, "save_name", run):
            with torch.inference_mode(False), torch.enable_grad():
                judge = trainable_copy(vlm, generator.device)
                try:
                    result = train_mapper(
                        generator,
                        judge,
                        config,
                        checkpoint_path=ckpt,
                        checkpoint_every=max(10, steps // 10),
                        callback=lambda s, t, v: on_step("mapper", s, t, v),
                    )
                except ArtifactError as exc:
                    raise NodeInputError(
                        node, "seed", f"the checkpoint {ckpt} does not fit this run: {exc}", f"delete {run}"
                    ) from None
            if out_path is not None:
                save_mapper(result.trained, out_path)
        return io.NodeOutput(result.trained, _plots(("latent mapper loss", result.losses)))


def _files_of(method: str, node: str, input_name: str) -> list[str]:
    """The files in models/promptweave whose metadata names ``method`` (for a node's combo input)."""
    names = []
    for name in model_files():
        try:
            path = resolve_model_file(node, input_name, name)
        except (ValueError, OSError):
            continue
        if artifact_method(path) == method:  # never raises for a file's content
            names.append(name)
    return names


def _mapper_files() -> list[str]:
    return _files_of("ipl_mapper", "PWLoadLatentMapper", "mapper_name")


class LoadLatentMapper(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PWLoadLatentMapper",
            display_name="Load Latent Mapper (IPL)",
            category=CATEGORY,
            description="Loads an IPL latent mapper saved by Train Latent Mapper from ComfyUI/models/promptweave.",
            inputs=[
                io.Combo.Input(
                    "mapper_name",
                    options=_mapper_files(),
                    tooltip="A latent mapper .safetensors written by Train Latent Mapper.",
                )
            ],
            outputs=[LatentMapperType.Output(display_name="mapper", tooltip="The latent mapper.")],
        )

    @classmethod
    @check_inputs
    def execute(cls, mapper_name: str) -> io.NodeOutput:
        path = resolve_model_file("PWLoadLatentMapper", "mapper_name", mapper_name)
        try:
            return io.NodeOutput(load_mapper(path))
        except ArtifactError as exc:
            raise NodeInputError(
                "PWLoadLatentMapper", "mapper_name", str(exc), "pick a file written by Train Latent Mapper"
            ) from None


class AdaptModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PWAdaptModel",
            display_name="Adapt Model to Domain (IPL LoRA)",
            category=CATEGORY,
            description="Zero-shot adaptation of the MODEL to a domain named by text (IPL, Guo et al. 2023): a "
            "LoRA on the U-Net's attention projections trained with the image-specific directional loss of the "
            "latent mapper (trained here first unless a mapper is connected); 'nada' uses one fixed text direction "
            "instead (StyleGAN-NADA). Saves the LoRA to models/loras (loads with LoraLoader) and outputs the "
            "adapted MODEL. Resumes from its checkpoint when run again with the same settings.",
            is_output_node=True,
            inputs=[
                *_common_inputs(),
                io.Combo.Input(
                    "method",
                    options=METHODS,
                    default="ipl",
                    tooltip="ipl: image-specific prompts (less mode collapse); nada: fixed direction.",
                ),
                io.Int.Input("steps", default=300, min=1, max=100_000, tooltip="LoRA training steps (paper: 300)."),
                io.Int.Input("rank", default=4, min=1, max=256, tooltip="LoRA rank."),
                io.Float.Input(
                    "lambda_domain",
                    default=1.0,
                    min=0.0,
                    max=100.0,
                    step=0.1,
                    tooltip="Weight of the mapper's domain loss (stage 1; paper: 1).",
                ),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Seed of initialisation and batches."),
                io.String.Input(
                    "lora_name",
                    default="pw-ipl-adapted",
                    tooltip="File name of the LoRA in models/loras (no extension).",
                ),
                LatentMapperType.Input(
                    "mapper", optional=True, tooltip="A trained latent mapper (else IPL trains one first)."
                ),
                io.Int.Input(
                    "mapper_steps",
                    default=300,
                    min=1,
                    max=100_000,
                    optional=True,
                    tooltip="Mapper iterations when no mapper is connected.",
                ),
                io.Int.Input(
                    "batch_size",
                    default=2,
                    min=1,
                    max=64,
                    optional=True,
                    tooltip="Images per LoRA step (paper: 2); the mapper uses max(4, 2 x this).",
                ),
                io.Float.Input(
                    "learning_rate",
                    default=0.0016,
                    min=1e-6,
                    max=1.0,
                    step=0.0001,
                    optional=True,
                    tooltip="Adam learning rate of the LoRA (paper: 0.0016).",
                ),
                io.Int.Input(
                    "adaptive_layers",
                    default=0,
                    min=0,
                    max=1000,
                    optional=True,
                    tooltip="NADA adaptive layer selection: train only this many layers per step (0 = all).",
                ),
                *_sampling_inputs(),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The MODEL with the adaptation LoRA applied."),
                io.String.Output(display_name="lora_path", tooltip="Where the LoRA was saved."),
                io.Image.Output(display_name="loss_plot", tooltip="Loss curves: mapper (if trained) and LoRA."),
            ],
        )

    @classmethod
    @check_inputs
    def execute(
        cls,
        model,
        clip,
        vae,
        vlm,
        source_text: str,
        target_text: str,
        method: str,
        steps: int,
        rank: int,
        lambda_domain: float,
        seed: int,
        lora_name: str,
        mapper=None,
        mapper_steps: int = 300,
        batch_size: int = 2,
        learning_rate: float = 0.0016,
        adaptive_layers: int = 0,
        width: int = 512,
        height: int = 512,
        sample_steps: int = 2,
    ) -> io.NodeOutput:
        import comfy.sd

        node = "PWAdaptModel"
        source, target = _check_texts(node, source_text, target_text)
        if method not in METHODS:
            raise NodeInputError(node, "method", f"unknown method '{method}'", f"use one of {METHODS}")
        if mapper is not None and method == "ipl":
            mapper = _check_mapper(node, mapper, vlm)
        lora_path = _writable_target(node, "lora_name", lora_name, "loras")
        config = _config(
            node,
            {"alpha": "rank", "mapper_batch": "batch_size", "lr": "learning_rate", "auto_layer_k": "adaptive_layers"},
            method=method,
            source_text=source,
            target_text=target,
            steps=steps,
            rank=rank,
            alpha=float(rank),
            lambda_domain=lambda_domain,
            seed=seed,
            mapper_steps=mapper_steps,
            mapper_batch=max(4, 2 * batch_size),
            batch_size=batch_size,
            lr=learning_rate,
            auto_layer_k=adaptive_layers,
        )
        generator = _sd_generator(node, model, clip, vae, source, width, height, sample_steps)
        if mapper is not None and method == "ipl":
            try:
                mapper.check_generator(generator.latent_dim)
            except BackboneMismatchError as exc:
                raise NodeInputError(node, "mapper", str(exc), "train the mapper at this width/height") from None
        settings = [
            generator.name,
            vlm.name,
            config.to_dict(),
            width,
            height,
            sample_steps,
            None if mapper is None else tensors_key(mapper.mapper.state_dict()),
        ]
        run = run_checkpoint("adapt", settings, folder=True)
        total = steps + (mapper_steps if method == "ipl" and mapper is None else 0)
        on_step = _progress(total)
        with checkpointed_run(node, "lora_name", run):
            with torch.inference_mode(False), torch.enable_grad():
                judge = trainable_copy(vlm, generator.device)
                try:
                    result = run_adaptation(
                        generator,
                        judge,
                        config,
                        mapper if method == "ipl" else None,
                        checkpoint_dir=run,
                        checkpoint_every=max(10, total // 10),
                        callback=on_step,
                    )
                except ArtifactError as exc:
                    raise NodeInputError(
                        node, "seed", f"a checkpoint in {run} does not fit this run: {exc}", f"delete {run}"
                    ) from None
            extra = {
                "vlm": vlm.name,
                "width": width,
                "height": height,
                "sample_steps": sample_steps,
                "model_class": type(model.model).__name__,
            }
            path = save_lora_comfyui(result.lora, lora_path, extra=extra)
        adapted, _ = comfy.sd.load_lora_for_models(model, None, kohya_state_dict(result.lora), 1.0, 0.0)
        plots = _plots(("latent mapper loss", result.mapper_losses), ("LoRA loss", result.losses))
        return io.NodeOutput(adapted, str(path), plots)


def _worldgen_lora_files() -> list[str]:
    """IPL LoRAs in models/promptweave: the native files of a WorldGen adaptation (SD LoRAs go to models/loras)."""
    return _files_of("ipl_lora", "PWApplyWorldGenLoRA", "lora_name")


class ApplyWorldGenLoRA(io.ComfyNode):
    """A WorldGen with an IPL LoRA merged into its decoder: sample the same seeds with and without it to see the
    adaptation (the LoraLoader of the world generator)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PWApplyWorldGenLoRA",
            display_name="Apply IPL LoRA to WorldGen",
            category=CATEGORY,
            description="Merges an IPL LoRA trained on WorldGen (a native LoRA in ComfyUI/models/promptweave) into a "
            "copy of WorldGen's decoder. The input WorldGen is unchanged, so the same seeds sampled before and after "
            "show what the adaptation did.",
            inputs=[
                WorldGenType.Input("worldgen", tooltip="From Load World Models."),
                io.Combo.Input("lora_name", options=_worldgen_lora_files(),
                               tooltip="A native IPL LoRA of WorldGen's decoder (e.g. ipl-sketch-worldgen-lora)."),
                io.Float.Input("strength", default=1.0, min=-2.0, max=2.0, step=0.05,
                               tooltip="How much of the LoRA to merge (1 = as trained, 0 = none)."),
            ],
            outputs=[WorldGenType.Output(display_name="worldgen", tooltip="The adapted copy of WorldGen.")],
        )

    @classmethod
    @check_inputs
    def execute(cls, worldgen, lora_name: str, strength: float = 1.0) -> io.NodeOutput:
        node = "PWApplyWorldGenLoRA"
        path = resolve_model_file(node, "lora_name", lora_name)
        fix = "pick a native IPL LoRA trained on this WorldGen (ipl-sketch-worldgen-lora.safetensors ships)"
        try:
            lora = load_lora_native(path)
            return io.NodeOutput(adapted_worldgen(worldgen, lora, strength))
        except (ArtifactError, ValueError) as exc:
            raise NodeInputError(node, "lora_name", str(exc), fix) from None


NODES: list[type[io.ComfyNode]] = [TrainLatentMapper, LoadLatentMapper, AdaptModel, ApplyWorldGenLoRA]
