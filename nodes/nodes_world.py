"""Nodes for the procedural world's backbones: load WorldCLIP + WorldGen, sample images from WorldGen."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..prompt_modules.core.artifacts import ArtifactError
from ..prompt_modules.world.models import load_world_models
from ..prompt_modules.world.worldgen import DEFAULT_GUIDANCE
from ._common import NodeInputError, check_inputs, text_lines
from ._types import VLMType, WorldGenType


class LoadWorldModels(io.ComfyNode):
    """The shipped world backbones: WorldCLIP (a VLM) and WorldGen (a small text-to-image generator)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PWLoadWorldModels",
            display_name="Load World Models",
            category="PromptWeave/world",
            description="Loads WorldCLIP and WorldGen, the small models PromptWeave trains on its procedural "
            "shapes world and ships with the pack. They run every example workflow offline on a CPU.",
            inputs=[],
            outputs=[
                VLMType.Output(display_name="worldclip", tooltip="WorldCLIP, a small CLIP for the world."),
                WorldGenType.Output(display_name="worldgen", tooltip="WorldGen, the world's text-to-image model."),
            ],
        )

    @classmethod
    @check_inputs
    def execute(cls) -> io.NodeOutput:
        try:
            worldclip, worldgen = load_world_models()
        except ArtifactError as exc:
            raise NodeInputError("PWLoadWorldModels", "(none)", str(exc), "reinstall the pack") from None
        return io.NodeOutput(worldclip, worldgen)


class WorldGenSample(io.ComfyNode):
    """Text -> IMAGE with WorldGen (latent diffusion with DDIM sampling and classifier-free guidance)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PWWorldGenSample",
            display_name="WorldGen Sample",
            category="PromptWeave/world",
            description="Generates world scenes from text with WorldGen (Rombach et al. 2022 latent diffusion, "
            "DDIM sampling, classifier-free guidance). One image per line of text.",
            inputs=[
                WorldGenType.Input("worldgen", tooltip="From Load World Models."),
                VLMType.Input("worldclip", tooltip="WorldCLIP, whose text features condition WorldGen."),
                io.String.Input(
                    "text", multiline=True, default="a large red five-point star on a pale blue background",
                    tooltip="One prompt per line; each line gives one image.",
                ),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=True,
                             tooltip="Random seed; the same seed gives the same images."),
                io.Int.Input("steps", default=20, min=1, max=200, tooltip="DDIM steps."),
                io.Float.Input("guidance", default=DEFAULT_GUIDANCE, min=0.0, max=20.0, step=0.1,
                               tooltip="Classifier-free guidance scale (1 = none; the default, chosen on the val "
                               "split, gives WorldGen's most recognisable shapes)."),
            ],
            outputs=[io.Image.Output(tooltip="The generated images, 64x64.")],
        )

    @classmethod
    @check_inputs
    def execute(cls, worldgen, worldclip, text: str, seed: int, steps: int, guidance: float) -> io.NodeOutput:
        prompts = text_lines("PWWorldGenSample", "text", text)
        if not prompts:
            raise NodeInputError("PWWorldGenSample", "text", "the text is empty", "write at least one prompt line")
        try:
            images = worldgen.sample(prompts, worldclip, steps=steps, guidance=guidance, seed=seed)
        except ArtifactError as exc:
            raise NodeInputError(
                "PWWorldGenSample", "worldclip", str(exc), "use WorldCLIP from Load World Models"
            ) from None
        return io.NodeOutput(images.permute(0, 2, 3, 1).clamp(0, 1).to(torch.float32).cpu())


NODES: list[type[io.ComfyNode]] = [LoadWorldModels, WorldGenSample]
