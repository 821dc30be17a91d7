"""Prompt inverters: an image encoder -> MLP head -> L2-normalised 384-d prompt embedding, plus a vocabulary head.

Image encoders (``name`` is the inverter's ``backbone``; an inverter refuses any other encoder):

* :class:`VLMImageEncoder` -- the image tower of a :class:`~..vlm.VisionLanguageModel` (open_clip / WorldCLIP),
  frozen (black box, as the paper's CLIP-feature models).
* ComfyUI ``CLIP_VISION`` outputs -- the node layer passes their ``image_embeds`` as features
  (``backbone="clip_vision:<dim>"``).
* :class:`PixelEncoder` -- raw pixels through a small CNN trained together with the head.
* :class:`UNetEncoder` -- white box: the encoder half (down blocks + mid block) of a diffusers
  ``UNet2DConditionModel`` on the VAE latent of the image at t=0 with a caption embedding as cross-attention
  context; each block's output is average-pooled and concatenated.
* :class:`LDMUNetEncoder` -- the same white box on a U-Net in the original LDM layout (``input_blocks``,
  ``middle_block``, ``time_embed``: ComfyUI's ``UNetModel``); it pools at the same points, so its name is the
  same ``sd-unet:<context dim>:<widths>`` as :class:`UNetEncoder`'s.
* :class:`WorldGenEncoder` -- white box for WorldGen: its denoiser on the image's latent code at t=0, context the
  WorldCLIP text feature of a caption; the 4-D activations of the denoiser's top-level blocks are pooled. Its
  name carries a fingerprint of the weights (``worldgen:<sha256 prefix>``): WorldGen releases share one
  config, so only the weights tell an inverter trained on WorldGen 2 from one for WorldGen 3.

The white-box encoders are kept frozen here (CPU budget): the paper fine-tunes the U-Net encoder, we train
only the head on its pooled multi-scale features; the features still come from the generator itself.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.artifacts import BackboneMismatchError
from .config import InverterConfig
from .dakl import DAKL
from .decode import PromptBank, compose_prompt, keywords
from .vocabulary import Vocabulary

PIXELS = "pixels"


def check_images(images: torch.Tensor, where: str = "images") -> torch.Tensor:
    """Float RGB images ``[B, 3, H, W]``; grayscale, RGBA and empty batches are refused with a clear message."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{where}: expected a batch of images [B, 3, H, W], got {shape}")
    if images.shape[0] == 0:
        raise ValueError(f"{where}: the image batch is empty")
    if images.shape[1] != 3:
        kind = {1: "grayscale", 2: "grayscale+alpha", 4: "RGBA"}.get(images.shape[1], f"{images.shape[1]}-channel")
        raise ValueError(f"{where}: {kind} images are not supported; convert them to RGB (3 channels)")
    return images.float()


class PixelEncoder(nn.Module):
    """A small trainable CNN on 64x64 RGB: 4 stride-2 conv blocks, global average pool -> ``dim``."""

    name = PIXELS

    def __init__(self, dim: int = 128, size: int = 64) -> None:
        super().__init__()
        self.size = size
        widths = (32, 64, 96, dim)
        layers: list[nn.Module] = []
        c_in = 3
        for w in widths:
            layers += [nn.Conv2d(c_in, w, 3, stride=2, padding=1), nn.BatchNorm2d(w), nn.GELU()]
            c_in = w
        self.net = nn.Sequential(*layers)
        self.dim = dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return self.net(x * 2.0 - 1.0).mean(dim=(2, 3))


class VLMImageEncoder:
    """Frozen image tower of a VisionLanguageModel; features are its normalised image embeddings."""

    def __init__(self, vlm, batch_size: int = 256) -> None:
        self.vlm, self.batch_size = vlm, batch_size
        self.name = f"vlm:{vlm.name}"
        self.dim = int(vlm.embed_dim)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, captions: Sequence[str] | None = None) -> torch.Tensor:
        images = check_images(images)
        out = [self.vlm.encode_image(images[i : i + self.batch_size]).float().cpu()
               for i in range(0, images.shape[0], self.batch_size)]
        return torch.cat(out)


class UNetEncoder:
    """White box for Stable Diffusion: pooled down-block and mid-block features of a diffusers U-Net at t=0.

    ``vae`` (a diffusers ``AutoencoderKL``/``AutoencoderTiny``) maps images to latents; without it the inputs
    must already be latents. ``context`` is the caption's text-encoder hidden states ``[B, L, cross_dim]``
    (or ``[1, L, cross_dim]``); without a caption a zero context is used.
    """

    def __init__(self, unet, vae=None, scaling_factor: float | None = None, batch_size: int = 16) -> None:
        self.unet, self.vae, self.batch_size = unet, vae, batch_size
        cfg = unet.config
        latent_channels = getattr(getattr(vae, "config", None), "latent_channels", None)
        if latent_channels is not None and int(cfg.in_channels) != int(latent_channels):
            raise ValueError(f"the U-Net takes {cfg.in_channels} input channels, not the VAE's {latent_channels} "
                             "(an inpainting U-Net?): use a text-to-image pipeline")
        self.cross_dim = int(cfg.cross_attention_dim)
        widths = list(cfg.block_out_channels)
        self.name = f"sd-unet:{self.cross_dim}:{'-'.join(str(w) for w in widths)}"
        self.dim = sum(widths) + widths[-1] * (unet.mid_block is not None)
        self.scaling = scaling_factor if scaling_factor is not None else float(
            getattr(getattr(vae, "config", None), "scaling_factor", 1.0) or 1.0
        )

    @torch.no_grad()
    def latents(self, images: torch.Tensor) -> torch.Tensor:
        images = check_images(images)
        if self.vae is None:
            raise ValueError("UNetEncoder without a VAE needs latents: call encode_latents()")
        enc = self.vae.encode(images * 2.0 - 1.0)
        lat = enc.latent_dist.mean if hasattr(enc, "latent_dist") else enc.latents
        return lat * self.scaling

    @torch.no_grad()
    def encode_latents(self, latents: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        unet = self.unet
        b = latents.shape[0]
        dtype = unet.conv_in.weight.dtype
        if context is None:
            context = torch.zeros(b, 1, self.cross_dim, dtype=dtype, device=latents.device)
        context = context.expand(b, -1, -1) if context.shape[0] == 1 else context
        t = torch.zeros(b, dtype=torch.long, device=latents.device)
        emb = unet.time_embedding(unet.time_proj(t).to(dtype))
        x = unet.conv_in(latents.to(dtype))
        feats = []
        for block in unet.down_blocks:
            if getattr(block, "has_cross_attention", False):
                x, _ = block(hidden_states=x, temb=emb, encoder_hidden_states=context)
            else:
                x, _ = block(hidden_states=x, temb=emb)
            feats.append(x.mean(dim=(2, 3)))
        if unet.mid_block is not None:
            if getattr(unet.mid_block, "has_cross_attention", False):
                x = unet.mid_block(x, emb, encoder_hidden_states=context)
            else:
                x = unet.mid_block(x, emb)
            feats.append(x.mean(dim=(2, 3)))
        return torch.cat(feats, dim=1).float().cpu()

    def __call__(self, images: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Features of ``images`` in chunks of ``batch_size`` (a per-image ``context`` is sliced along)."""
        out = []
        for i in range(0, images.shape[0], self.batch_size):
            ctx = context if context is None or context.shape[0] == 1 else context[i : i + self.batch_size]
            out.append(self.encode_latents(self.latents(images[i : i + self.batch_size]), ctx))
        return torch.cat(out)


class LDMUNetEncoder:
    """White box for Stable Diffusion in the LDM layout (ComfyUI's ``UNetModel``): at t=0, with the ``context``
    ``[1 or B, L, context_dim]`` as cross-attention input, the output of each resolution level (its res/attention
    blocks and its downsampler, i.e. where a diffusers down block ends) and of the middle block, each averaged
    over space and concatenated (Croitoru et al. 2023, sec. 3.2: the U-Net encoder as image encoder).

    ``to_latents(images)`` maps RGB ``[B, 3, H, W]`` in 0..1 to the latents the U-Net sees (VAE mean times the
    scale factor); ``None`` means :meth:`encode_latents` only. ``context`` defaults to zeros of one token.
    """

    def __init__(
        self,
        unet: nn.Module,
        context_dim: int,
        to_latents=None,
        context: torch.Tensor | None = None,
        batch_size: int = 16,
    ) -> None:
        for attr in ("input_blocks", "middle_block", "time_embed", "model_channels", "channel_mult", "num_res_blocks"):
            if not hasattr(unet, attr):
                raise ValueError(f"{type(unet).__name__} is not an LDM-layout U-Net: it has no '{attr}'")
        self.unet, self.to_latents, self.batch_size = unet, to_latents, batch_size
        self.cross_dim = int(context_dim)
        self.context = context
        widths = [int(unet.model_channels) * int(m) for m in unet.channel_mult]
        self.name = f"sd-unet:{self.cross_dim}:{'-'.join(str(w) for w in widths)}"
        self.level_ends, index = [], 0  # input_blocks[0] is conv_in
        for level, n_res in enumerate(unet.num_res_blocks):
            index += int(n_res) + (level < len(widths) - 1)  # + the downsampler, except on the last level
            self.level_ends.append(index)
        if self.level_ends[-1] != len(unet.input_blocks) - 1:
            raise ValueError(f"{len(unet.input_blocks)} input blocks do not match num_res_blocks {unet.num_res_blocks}")
        self.dim = sum(widths) + widths[-1] * (unet.middle_block is not None)

    def _time_embedding(self, b: int, device, dtype) -> torch.Tensor:
        half = int(self.unet.model_channels) // 2  # sinusoidal [cos | sin] at t=0, as the U-Net's own
        t = torch.zeros(b, 1, device=device)
        freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=device) / half)
        return self.unet.time_embed(torch.cat([torch.cos(t * freqs), torch.sin(t * freqs)], dim=1).to(dtype))

    @torch.no_grad()
    def encode_latents(self, latents: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        param = next(self.unet.parameters())
        context = context if context is not None else self.context
        out = []
        for i in range(0, latents.shape[0], self.batch_size):
            x = latents[i : i + self.batch_size].to(param.device, param.dtype)
            b = x.shape[0]
            ctx = context if context is not None else torch.zeros(1, 1, self.cross_dim)
            ctx = ctx.to(param.device, param.dtype)
            ctx = ctx.expand(b, -1, -1) if ctx.shape[0] == 1 else ctx[i : i + b]
            emb = self._time_embedding(b, param.device, param.dtype)
            feats = []
            for index, block in enumerate(self.unet.input_blocks):
                x = block(x, emb, ctx)
                if index in self.level_ends:
                    feats.append(x.mean(dim=(2, 3)))
            if self.unet.middle_block is not None:
                feats.append(self.unet.middle_block(x, emb, ctx).mean(dim=(2, 3)))
            out.append(torch.cat(feats, dim=1).float().cpu())
        return torch.cat(out)

    def __call__(self, images: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        images = check_images(images)
        if self.to_latents is None:
            raise ValueError("LDMUNetEncoder without to_latents needs latents: call encode_latents()")
        with torch.no_grad():
            latents = torch.cat([self.to_latents(images[i : i + self.batch_size])
                                 for i in range(0, images.shape[0], self.batch_size)])
        return self.encode_latents(latents, context)


class WorldGenEncoder:
    """White box for WorldGen: the encoder half of its denoiser (``unet.encode_features``: every down-path
    activation and the mid block) on the image's latent code ``worldgen.encode(images)`` at t=0, with the
    WorldCLIP token features of a caption as context (the empty caption when none is given); each activation is
    average-pooled over space and the results are concatenated."""

    def __init__(self, worldgen, vlm, batch_size: int = 128) -> None:
        self.worldgen, self.vlm, self.batch_size = worldgen, vlm, batch_size
        parts = [m for m in (getattr(worldgen, "autoencoder", None), worldgen.unet) if isinstance(m, nn.Module)]
        self.name = f"worldgen:{state_fingerprint(*parts)}"
        self.dim = int(self(torch.zeros(1, 3, 64, 64)).shape[1])

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, captions: Sequence[str] | None = None) -> torch.Tensor:
        images = check_images(images)
        out = []
        for i in range(0, images.shape[0], self.batch_size):
            chunk = images[i : i + self.batch_size]
            if captions is not None:
                context = self.worldgen.text_context(list(captions[i : i + len(chunk)]), self.vlm)
            else:
                context = self.worldgen.null_context(self.vlm).expand(len(chunk), -1, -1)
            out.append(worldgen_features(self.worldgen.unet, self.worldgen.encode(chunk), context).float().cpu())
        return torch.cat(out)


def worldgen_features(unet: nn.Module, latents: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """The WorldGen white-box features of latent codes: ``unet.encode_features`` at t=0, each activation averaged
    over space, concatenated ``[B, dim]``; differentiable (the U-Net fine-tuning of
    :mod:`promptweave.prompt_modules.world.inversion_finetune`)."""
    t = torch.zeros(latents.shape[0], dtype=torch.long, device=latents.device)
    return torch.cat([f.mean(dim=(2, 3)) for f in unet.encode_features(latents, t, context)], dim=1)


def state_fingerprint(*modules: nn.Module, length: int = 12) -> str:
    """sha256 prefix of the modules' state dicts (names, shapes, fp16-rounded values): the same for every load of
    one weights file, on any device."""
    digest = hashlib.sha256()
    for index, module in enumerate(modules):
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(f"{index}.{name}{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return digest.hexdigest()[:length]


def _mlp(cfg: InverterConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = cfg.feature_dim
    for h in cfg.hidden:  # Linear -> GELU -> BatchNorm -> Dropout, as the paper's head
        layers += [nn.Linear(d, h), nn.GELU(), nn.BatchNorm1d(h), nn.Dropout(cfg.dropout)]
        d = h
    layers.append(nn.Linear(d, cfg.target_dim))
    return nn.Sequential(*layers)


class PromptInverter(nn.Module):
    """Features (or pixels, for the ``pixels`` backbone) -> normalised prompt embedding + vocabulary logits."""

    def __init__(self, config: InverterConfig, vocabulary: Vocabulary) -> None:
        super().__init__()
        if config.vocab_size != len(vocabulary):
            config.vocab_size = len(vocabulary)
        self.config, self.vocabulary = config, vocabulary
        self.encoder = PixelEncoder(config.feature_dim) if config.backbone == PIXELS else None
        self.head = _mlp(config)
        self.vocab_head = nn.Linear(config.target_dim, len(vocabulary))
        self.register_buffer("calibration", torch.tensor([1.0, 0.0]))  # Platt a, b for keyword scores
        self.bank: PromptBank | None = None
        self.dakl: DAKL | None = None

    @property
    def backbone(self) -> str:
        return self.config.backbone

    def check_backbone(self, encoder_name: str) -> None:
        if encoder_name != self.backbone:
            raise BackboneMismatchError(
                f"this inverter was trained on the '{self.backbone}' image encoder, not '{encoder_name}': "
                f"use the encoder it was trained with, or train an inverter for '{encoder_name}'"
            )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.encoder is not None:
            x = self.encoder(check_images(x))
        elif x.ndim != 2 or x.shape[1] != self.config.feature_dim:
            raise ValueError(
                f"expected features [B, {self.config.feature_dim}] of '{self.backbone}', got {tuple(x.shape)}"
            )
        emb = F.normalize(self.head(x.float()), dim=-1)
        return emb, self.vocab_head(emb)

    @torch.no_grad()
    def predict(
        self, x: torch.Tensor, use_dakl: bool = True, batch_size: int = 512
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval-mode ``(embeddings [B, 384], calibrated keyword probabilities [B, V])`` (DAKL applied if fitted)."""
        was = self.training
        self.eval()
        try:
            embs, logits = zip(*(self(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)), strict=True)
        finally:
            self.train(was)
        emb, logit = torch.cat(embs), torch.cat(logits)
        if use_dakl and self.dakl is not None:
            emb = self.dakl.refine(emb)
        a, b = self.calibration.tolist()
        return emb, torch.sigmoid(a * logit + b)

    def invert(self, x: torch.Tensor, *, top_k: int = 10, threshold: float = 0.5, n_nearest: int = 3,
               use_dakl: bool = True) -> list[dict]:
        """Per image: ``embedding``, ``keywords`` [(word, score)], ``nearest`` [(prompt, cosine)], ``prompt``."""
        emb, probs = self.predict(x, use_dakl=use_dakl)
        kws = keywords(probs, self.vocabulary.words, top_k=top_k)
        nearest = self.bank.search(emb, k=n_nearest) if self.bank is not None else [[] for _ in kws]
        return [
            {"embedding": e, "keywords": kw, "nearest": nn_,
             "prompt": compose_prompt(nn_[0][0] if nn_ else None, kw, threshold)}
            for e, kw, nn_ in zip(emb, kws, nearest, strict=True)
        ]
