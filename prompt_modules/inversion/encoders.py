"""The image encoder an inverter reads, chosen from its backbone name: one choice for the nodes and the Python API.

An inverter's ``backbone`` (:class:`~.config.InverterConfig`) names the image encoder its head was trained on;
:func:`image_features` picks that encoder and computes its features (Croitoru et al. 2023, sec. 3: black-box
image encoders, and the generator's own U-Net encoder as the white box). The encoders that live in another
framework come in as callables: a ComfyUI ``CLIP_VISION`` as ``clip_vision(images) -> image embeddings`` and the
Stable Diffusion white box as ``unet_features(images) -> (name, features)`` (ComfyUI's LDM U-Net or a diffusers
pipeline's, built by the caller). A missing input is a :class:`MissingEncoderInput` that names it (``.input``),
so each caller reports it in its own words without reading the message.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .model import PIXELS, PixelEncoder, VLMImageEncoder, WorldGenEncoder

#: The encoder families: a backbone name (``vlm:<name>``, ``clip_vision:<dim>``, ``worldgen:<fingerprint>``,
#: ``sd-unet:<shape>``, ``pixels``) or the bare family (a training choice) selects one.
ENCODER_KINDS = (PIXELS, "vlm", "clip_vision", "worldgen", "sd_unet")


class UnknownImageEncoder(ValueError):
    """``backbone`` names no image encoder PromptWeave has (``.backbone``)."""

    def __init__(self, backbone: str) -> None:
        super().__init__(f"image encoder '{backbone}' is unknown; expected one of {ENCODER_KINDS}")
        self.backbone = backbone


class MissingEncoderInput(ValueError):
    """The image encoder of ``backbone`` needs an input that was not given. ``.input`` is the missing argument of
    :func:`image_features` (``"vlm"``, ``"clip_vision"``, ``"worldgen"`` or ``"unet_features"``), ``.kind`` the
    encoder family (:data:`ENCODER_KINDS`), as data for the caller's own message."""

    def __init__(self, input_name: str, backbone: str, kind: str, message: str) -> None:
        super().__init__(message)
        self.input, self.backbone, self.kind = input_name, backbone, kind


#: The pixel CNN's input size (PixelEncoder resizes to it), the size a ``pixels`` inverter's images are read at.
PIXEL_IMAGE_SIZE = int(inspect.signature(PixelEncoder).parameters["size"].default)
#: Stable Diffusion 1.x/2.x's base resolution: images for the white-box ``sd_unet`` encoder are read at it.
SD_IMAGE_SIZE = 512


def encoder_kind(backbone: str) -> str:
    """The encoder family (:data:`ENCODER_KINDS`) of a backbone name or a bare family name."""
    if backbone == PIXELS:
        return PIXELS
    for kind, prefix in (("vlm", "vlm:"), ("clip_vision", "clip_vision:"), ("worldgen", "worldgen:")):
        if backbone == kind or backbone.startswith(prefix):
            return kind
    if backbone == "sd_unet" or backbone.startswith("sd-unet:"):
        return "sd_unet"
    raise UnknownImageEncoder(backbone)


def image_features(
    backbone: str,
    images: torch.Tensor,
    *,
    vlm: Any | None = None,
    clip_vision: Callable[[torch.Tensor], torch.Tensor] | None = None,
    worldgen: Any | None = None,
    unet_features: Callable[[torch.Tensor], tuple[str, torch.Tensor]] | None = None,
    captions: Sequence[str] | None = None,
) -> tuple[str, torch.Tensor]:
    """``(encoder name, features)`` of RGB ``images`` ``[B, 3, H, W]`` in 0..1 for the encoder ``backbone`` names
    (the pixels themselves for ``pixels``: that inverter carries its own CNN). Compare the name with the
    inverter's ``backbone`` before inverting (:meth:`~.model.PromptInverter.check_backbone`).

    ``vlm``: the :class:`~promptweave.prompt_modules.core.vlm.VisionLanguageModel` of ``vlm:*`` (and the text
    tower of ``worldgen:*``); ``clip_vision``: images -> CLIP vision image embeddings ``[B, D]``; ``worldgen``:
    WorldGen, for its white box (``captions`` as context, the empty caption without); ``unet_features``: images
    -> ``(name, features)`` of a Stable Diffusion U-Net's encoder (:class:`~.model.UNetEncoder`,
    :class:`~.model.LDMUNetEncoder`). Raises :class:`MissingEncoderInput` when the needed one is ``None`` and
    :class:`UnknownImageEncoder` for a backbone of no known family.
    """
    kind = encoder_kind(backbone)
    if kind == PIXELS:
        return PIXELS, images
    if kind == "vlm":
        if vlm is None:
            raise MissingEncoderInput("vlm", backbone, kind, f"the '{backbone}' image encoder needs a VLM")
        encoder = VLMImageEncoder(vlm)
        return encoder.name, encoder(images)
    if kind == "clip_vision":
        if clip_vision is None:
            raise MissingEncoderInput(
                "clip_vision", backbone, kind, f"the '{backbone}' image encoder needs a CLIP vision model"
            )
        features = clip_vision(images).float().cpu()
        return f"clip_vision:{features.shape[1]}", features
    if kind == "worldgen":
        if worldgen is None or vlm is None:
            missing = "worldgen" if worldgen is None else "vlm"
            raise MissingEncoderInput(
                missing, backbone, kind, "the white-box 'worldgen' encoder needs WorldGen and WorldCLIP"
            )
        encoder = WorldGenEncoder(worldgen, vlm)
        return encoder.name, encoder(images, captions)
    if unet_features is None:
        raise MissingEncoderInput(
            "unet_features", backbone, kind, f"the white-box '{backbone}' encoder needs the generator's U-Net"
        )
    return unet_features(images)


def encoder_image_size(backbone: str, *, vlm: Any | None = None, clip_vision_size: int | None = None,
                       worldgen: Any | None = None, sd_size: int = SD_IMAGE_SIZE) -> int:
    """The side image files are read at for the encoder ``backbone`` names (a backbone name or a bare family):
    the VLM's ``image_size``, CLIP vision's (``clip_vision_size``), WorldGen's, SD's ``sd_size`` for the white box,
    else the pixel CNN's input; so training and captioning from files see the images in-graph inversion sees."""
    kind = encoder_kind(backbone)
    if kind == "vlm" and vlm is not None:
        return int(vlm.image_size)
    if kind == "clip_vision" and clip_vision_size is not None:
        return int(clip_vision_size)
    if kind == "worldgen" and worldgen is not None:
        return int(getattr(getattr(worldgen, "config", None), "image_size", 64))
    if kind == "sd_unet":
        return int(sd_size)
    return PIXEL_IMAGE_SIZE
