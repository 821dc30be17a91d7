"""IPL training (Guo et al., CVPR 2023): stage 1 trains the latent mapper, stage 2 a PEFT LoRA on the generator.

Notation of the paper: ``G_s`` the frozen source generator, ``G_t`` its adapted copy (here: the same network
with LoRA adapters switched on), ``w`` the per-image latent code, ``F`` the latent mapper, ``E_I`` / ``E_T``
the frozen VLM's image / text encoders, ``N`` L2 normalisation.

* Prompt features (sec. 3.2): ``f(w, d) = E_T([SOS] F(w) tokens(d) [EOS]) + E_T(ctx_init d.)`` (the second term
  is the official code's base feature, ``IPLConfig.add_base_feature``).
* Stage 1 (sec. 3.2, eq. 2-3): ``L = L_contr + lambda * L_domain`` with the symmetric InfoNCE between
  ``E_I(G_s(w_i))`` and ``N(f(w_i, source))`` (logit scale of the VLM) and
  ``L_domain = mean_i 1 - cos(f(w_i, target), T(target))``, ``T(d)`` the mean template feature of ``d``.
* Stage 2 (sec. 3.3, eq. 4): ``L = mean_i 1 - cos(dI_i, dT_i)`` with
  ``dI_i = N(E_I(G_t(w_i))) - N(E_I(G_s(w_i)))`` and ``dT_i = N(f(w_i, target)) - N(f(w_i, source))``.
  NADA (Gal et al. 2022) is the same loop with one fixed ``dT = N(T(target) - T(source))`` and no mapper.
* The LoRA (PEFT ``LoraConfig``; B initialised to zero, so ``G_t = G_s`` at step 0) is trained with Adam and
  tracked by an EMA (decay 0.99); the EMA weights are the result. NADA's adaptive layer selection is
  :func:`select_layers`.

Every batch derives from ``seed`` and the step number and every trainer writes resumable checkpoints
(:mod:`~promptweave.prompt_modules.core.checkpointing`), so an interrupted run resumed from its checkpoint equals an
uninterrupted one on CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from ..core.artifacts import ArtifactError, meta_field, read_metadata
from ..core.checkpointing import load_training_state, save_training_state
from .config import IPLConfig
from .export import LoraWeights
from .generators import AdaptableGenerator
from .mapper import LatentMapper, TrainedMapper

Callback = Callable[[int, int, float], None]
PLACEHOLDER = "x"  # one BPE token per context slot; the mapper's vectors replace its embeddings


# ----- helpers ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Switch ``requires_grad`` off for every parameter of ``module`` for the block (restored afterwards)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def cosine_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``1 - cos(a, b)`` row-wise, with ``eps`` guarding zero vectors (``G_t = G_s`` exactly at step 0)."""
    dot = (a * b).sum(dim=-1)
    return 1.0 - dot / (a.norm(dim=-1).clamp_min(eps) * b.norm(dim=-1).clamp_min(eps))


def peak_memory_mb(device: torch.device | None = None) -> float:
    """Peak accelerator memory (CUDA) since the last reset, else the process's peak resident set size."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _step_seed(seed: int, stage: int, step: int) -> int:
    return (int(seed) * 1_000_003 + stage * 7_919_993 + step) % (2**62)


class PromptEncoder:
    """Text features of IPL prompts for one domain name with a frozen VLM (see the module docstring)."""

    def __init__(self, vlm: Any, domain: str, config: IPLConfig) -> None:
        self.vlm, self.domain, self.n_ctx = vlm, domain.strip(), config.n_ctx
        text = " ".join([PLACEHOLDER] * self.n_ctx) + " " + self.domain
        tokens = vlm.tokenize([text])
        with torch.no_grad():
            embeds = vlm.embed_tokens(tokens).float()
        self.prefix = embeds[:, :1].detach()  # [SOS]
        self.suffix = embeds[:, 1 + self.n_ctx :].detach()  # domain tokens, [EOS], padding
        self.eot = vlm.eot_index(tokens)
        with torch.no_grad():
            self.base = (
                vlm.encode_text([f"{config.ctx_init} {self.domain}."], normalize=False)
                if config.add_base_feature
                else None
            )
            template = vlm.encode_text([t.format(self.domain) for t in config.templates])
            self.template = F.normalize(template.mean(dim=0, keepdim=True), dim=-1)  # T(d), normalised

    def features(self, ctx: torch.Tensor) -> torch.Tensor:
        """Unnormalised ``f(w, d)`` for prompt vectors ``ctx`` ``[B, n_ctx, token_width]``."""
        b = ctx.shape[0]
        embeds = torch.cat(
            [self.prefix.expand(b, -1, -1), ctx.to(self.prefix.dtype), self.suffix.expand(b, -1, -1)], dim=1
        )
        feats = self.vlm.encode_text_embeddings(embeds, self.eot.expand(b), normalize=False)
        return feats + self.base if self.base is not None else feats


def nada_direction(vlm: Any, config: IPLConfig) -> torch.Tensor:
    """StyleGAN-NADA's fixed text direction ``N(mean_t N(E_T(t(target))) - N(E_T(t(source))))`` ``[1, E]``."""
    with torch.no_grad():
        src = vlm.encode_text([t.format(config.source_text.strip()) for t in config.templates])
        tgt = vlm.encode_text([t.format(config.target_text.strip()) for t in config.templates])
        return F.normalize((tgt - src).mean(dim=0, keepdim=True), dim=-1)


# ----- LoRA through PEFT --------------------------------------------------------------------------------------
class LoRAAdapter:
    """PEFT LoRA layers injected into ``root`` at ``targets`` (``inject_adapter_in_model``), one adapter.

    ``disabled()`` switches every adapter off for a block (the frozen source generator ``G_s``); ``state()`` /
    ``load_state()`` move the LoRA matrices as ``{"<module>.lora_A.weight", "<module>.lora_B.weight"}``.
    """

    ADAPTER = "default"

    def __init__(
        self, root: nn.Module, targets: Sequence[str], rank: int, alpha: float, dropout: float = 0.0, seed: int = 0
    ):
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        self.root, self.rank, self.alpha = root, int(rank), float(alpha)
        config = LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            target_modules=list(targets),
            lora_dropout=dropout,
            bias="none",
            init_lora_weights=True,
        )
        with torch.inference_mode(False), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # PEFT draws lora_A (Kaiming-uniform) from the global RNG
            inject_adapter_in_model(config, root, adapter_name=self.ADAPTER)
        self.layers: dict[str, LoraLayer] = {n: m for n, m in root.named_modules() if isinstance(m, LoraLayer)}
        missing = sorted(set(targets) - set(self.layers))
        if missing:
            raise ValueError(f"PEFT did not wrap these target layers: {missing[:5]}")
        for p in root.parameters():
            p.requires_grad_(False)
        for p in self.parameters():
            p.requires_grad_(True)

    def names(self) -> list[str]:
        return list(self.layers)

    def module_parameters(self, name: str) -> list[nn.Parameter]:
        layer = self.layers[name]
        return [layer.lora_A[self.ADAPTER].weight, layer.lora_B[self.ADAPTER].weight]

    def parameters(self) -> list[nn.Parameter]:
        return [p for name in self.layers for p in self.module_parameters(name)]

    def named_tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.layers:
            a, b = self.module_parameters(name)
            out[f"{name}.lora_A.weight"], out[f"{name}.lora_B.weight"] = a, b
        return out

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.named_tensors().items()}

    @torch.no_grad()
    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        own = self.named_tensors()
        if set(own) != set(state):
            raise ValueError("the LoRA state does not fit these adapter layers")
        for k, v in state.items():
            own[k].copy_(v.to(own[k].device, own[k].dtype))

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the base layers only (PEFT's public ``enable_adapters(False)``), then restore each layer's state.

        PEFT's toggle also switches ``requires_grad`` of the adapter weights (off, then on for the active
        adapter); the flags from before the block are put back, so a frozen (finished) LoRA stays frozen.
        """
        was_disabled = {n: layer.disable_adapters for n, layer in self.layers.items()}
        grads = [(p, p.requires_grad) for p in self.parameters()]
        for layer in self.layers.values():
            layer.enable_adapters(False)
        try:
            yield
        finally:
            for n, layer in self.layers.items():
                layer.enable_adapters(not was_disabled[n])
            for p, flag in grads:
                p.requires_grad_(flag)

    def weights(self, state: dict[str, torch.Tensor] | None = None) -> tuple[dict, dict]:
        state = self.state() if state is None else state
        down = {n: state[f"{n}.lora_A.weight"].float().cpu() for n in self.layers}
        up = {n: state[f"{n}.lora_B.weight"].float().cpu() for n in self.layers}
        return down, up


class _TensorBag(nn.Module):
    """Tensors under sanitised names, so that a training checkpoint holds only them (not the whole U-Net)."""

    def __init__(self, tensors: dict[str, torch.Tensor], as_parameters: bool) -> None:
        super().__init__()
        for name, tensor in tensors.items():
            key = name.replace(".", "__")
            if as_parameters:
                self.register_parameter(key, tensor)  # shares the Parameter object
            else:
                self.register_buffer(key, tensor)

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {k.replace("__", "."): v for k, v in self.state_dict().items()}


# ----- NADA adaptive layer selection --------------------------------------------------------------------------
def _offset_for(module: nn.Module, device: torch.device) -> torch.Tensor:
    base = getattr(module, "base_layer", module)
    if isinstance(base, nn.Conv2d):
        return torch.zeros(1, base.in_channels, 1, 1, device=device, requires_grad=True)
    if isinstance(base, nn.Linear):
        return torch.zeros(base.in_features, device=device, requires_grad=True)
    raise TypeError(f"layer selection supports Linear and Conv2d layers, not {type(base).__name__}")


def select_layers(
    generator: AdaptableGenerator, adapter: LoRAAdapter, vlm: Any, target: torch.Tensor, config: IPLConfig, seed: int
) -> list[str]:
    """NADA's adaptive layer selection (Gal et al. 2022, sec. 4.2), transposed to LoRA layers.

    NADA gives every generator layer its own copy of the W+ code, optimises those copies for a few steps on the
    global CLIP loss ``1 - cos(E_I(G_t(w)), T(target))`` and trains the ``k`` layers whose codes moved most. A
    LoRA'd layer has no code of its own, so each candidate layer gets a learnable offset added to its *input*
    (zeros, per channel), optimised the same way (SGD, ``auto_layer_iters`` steps, lr ``auto_layer_lr``); the
    score is the mean absolute offset. Returns the ``auto_layer_k`` chosen layer names.
    """
    names = adapter.names()
    k = min(config.auto_layer_k, len(names))
    if k <= 0 or k == len(names):
        return names
    device = generator.device
    offsets = {n: _offset_for(adapter.layers[n], device) for n in names}
    hooks = []
    for n in names:

        def hook(_module: nn.Module, args: tuple, _off: torch.Tensor = offsets[n]) -> tuple:
            return (args[0] + _off.to(args[0].dtype), *args[1:])

        hooks.append(adapter.layers[n].register_forward_pre_hook(hook))
    opt = torch.optim.SGD(list(offsets.values()), lr=config.auto_layer_lr)
    codes = generator.sample_codes(config.auto_layer_batch, seed)
    try:
        for _ in range(config.auto_layer_iters):
            feats = vlm.encode_image(generator.generate(codes))
            loss = (1.0 - feats @ target.to(feats.device).T).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        for h in hooks:
            h.remove()
        for p in adapter.parameters():
            p.grad = None
    scores = torch.stack([offsets[n].detach().abs().mean() for n in names])
    chosen = torch.topk(scores, k).indices.tolist()
    return [names[i] for i in sorted(chosen)]


# ----- stage 1 -----------------------------------------------------------------------------------------------
@dataclass
class MapperResult:
    trained: TrainedMapper
    losses: list[float]
    seconds_per_step: float = 0.0


def _check_resume(config: IPLConfig, path: Path, keys: Sequence[str]) -> None:
    """Refuse a checkpoint of other settings (read from its metadata, before any weight is loaded)."""
    extra = meta_field(read_metadata(path), "extra", {})
    saved = extra.get("config", {}) if isinstance(extra, dict) else {}
    mine = config.to_dict()
    diff = [k for k in keys if json.dumps(saved.get(k)) != json.dumps(mine.get(k))]
    if diff:
        raise ArtifactError(
            f"{path} is a checkpoint of another run (different {', '.join(diff)}): delete it or start a new run"
        )


STAGE1_KEYS = (
    "method",
    "source_text",
    "target_text",
    "n_ctx",
    "ctx_init",
    "templates",
    "add_base_feature",
    "mapper_hidden",
    "mapper_layers",
    "mapper_lr_mul",
    "mapper_steps",
    "mapper_batch",
    "mapper_lr",
    "lambda_domain",
    "lambda_source",
    "seed",
)
STAGE2_KEYS = (
    *STAGE1_KEYS,
    "steps",
    "batch_size",
    "lr",
    "betas",
    "ema_decay",
    "rank",
    "alpha",
    "lora_dropout",
    "auto_layer_k",
    "auto_layer_iters",
    "auto_layer_batch",
    "auto_layer_lr",
    "layer_select_every",
)


def train_mapper(
    generator: AdaptableGenerator,
    vlm: Any,
    config: IPLConfig,
    *,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 50,
    callback: Callback | None = None,
) -> MapperResult:
    """Stage 1: train the latent mapper F with the generator and the VLM frozen (paper eq. 2-3)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        mapper = LatentMapper(
            generator.latent_dim,
            vlm.token_width,
            config.n_ctx,
            config.mapper_hidden,
            config.mapper_layers,
            config.mapper_lr_mul,
        ).to(generator.device)
    optimizer = torch.optim.Adam(mapper.parameters(), lr=config.mapper_lr)
    losses: list[float] = []
    start = 0
    path = Path(checkpoint_path) if checkpoint_path else None
    if path is not None and path.is_file():
        _check_resume(config, path, STAGE1_KEYS)
        start, extra = load_training_state(path, mapper, optimizer, backbone=vlm.name)
        losses = [float(v) for v in extra.get("losses", [])][:start]
    elapsed, timed = 0.0, 0
    with frozen(vlm):
        source = PromptEncoder(vlm, config.source_text, config)
        target = PromptEncoder(vlm, config.target_text, config)
        labels = torch.arange(config.mapper_batch, device=vlm.device)
        mapper.train()
        for step in range(start, config.mapper_steps):
            t0 = time.perf_counter()
            codes = generator.sample_codes(config.mapper_batch, _step_seed(config.seed, 1, step))
            with torch.no_grad():
                images = generator.generate(codes)
                image_feats = vlm.encode_image(images)
            ctx = mapper(generator.latent_code(codes).to(generator.device))
            f_src = F.normalize(source.features(ctx), dim=-1)
            f_tgt = F.normalize(target.features(ctx), dim=-1)
            logits = vlm.logit_scale * image_feats @ f_src.T
            contrastive = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
            domain = cosine_distance(f_tgt, target.template.expand_as(f_tgt)).mean()
            if config.lambda_source > 0:
                domain = domain + config.lambda_source * cosine_distance(f_src, source.template.expand_as(f_src)).mean()
            loss = contrastive + config.lambda_domain * domain
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            elapsed += time.perf_counter() - t0
            timed += 1
            done = step + 1
            if path is not None and (done % checkpoint_every == 0) and done < config.mapper_steps:
                save_training_state(
                    path,
                    mapper,
                    optimizer,
                    done,
                    backbone=vlm.name,
                    extra={"losses": losses, "config": config.to_dict(), "stage": 1},
                )
            if callback is not None:
                callback(done, config.mapper_steps, losses[-1])
    mapper.eval()
    for p in mapper.parameters():
        p.requires_grad_(False)
    trained = TrainedMapper(mapper, vlm.name, generator.name, config.to_dict())
    return MapperResult(trained, losses, elapsed / max(timed, 1))


# ----- stage 2 -----------------------------------------------------------------------------------------------
@dataclass
class AdaptationResult:
    """Stage 2's outcome: the exported (EMA) LoRA, the adapter left in the generator, losses and costs."""

    lora: LoraWeights
    adapter: LoRAAdapter
    losses: list[float]
    mapper: TrainedMapper | None = None
    mapper_losses: list[float] = field(default_factory=list)
    selected_layers: list[str] = field(default_factory=list)
    seconds_per_step: float = 0.0
    mapper_seconds_per_step: float = 0.0
    peak_memory_mb: float = 0.0


def adapt_generator(
    generator: AdaptableGenerator,
    vlm: Any,
    config: IPLConfig,
    mapper: TrainedMapper | None = None,
    *,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 50,
    callback: Callback | None = None,
    use_ema: bool = True,
) -> AdaptationResult:
    """Stage 2: train a LoRA on ``generator`` with the image-specific (IPL) or fixed (NADA) directional loss.

    IPL needs the stage-1 ``mapper`` (its VLM and latent width are checked). On return the generator's LoRA
    holds the EMA weights (``use_ema``), i.e. ``generator.generate`` draws from the adapted model.
    """
    if config.method == "ipl":
        if mapper is None:
            raise ValueError("IPL stage 2 needs the latent mapper of stage 1 (train_mapper)")
        mapper.check_vlm(vlm)
        mapper.check_generator(generator.latent_dim)
    adapter = LoRAAdapter(
        generator.lora_root, generator.lora_targets, config.rank, config.alpha, config.lora_dropout, seed=config.seed
    )
    params = adapter.parameters()
    optimizer = torch.optim.Adam(params, lr=config.lr, betas=config.betas)
    bag = _TensorBag(adapter.named_tensors(), as_parameters=True)
    ema = _TensorBag(adapter.state(), as_parameters=False)
    losses: list[float] = []
    chosen = adapter.names()
    start = 0
    path = Path(checkpoint_path) if checkpoint_path else None
    if path is not None and path.is_file():
        _check_resume(config, path, STAGE2_KEYS)
        start, extra = load_training_state(path, bag, optimizer, backbone=generator.name, ema=ema)
        losses = [float(v) for v in extra.get("losses", [])][:start]
        chosen = list(extra.get("chosen", chosen))
    device = generator.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elapsed, timed = 0.0, 0
    with frozen(vlm):
        if config.method == "ipl":
            src_prompts = PromptEncoder(vlm, config.source_text, config)
            tgt_prompts = PromptEncoder(vlm, config.target_text, config)
            fixed = None
        else:
            fixed = nada_direction(vlm, config)
        target_template = PromptEncoder(vlm, config.target_text, config).template if config.auto_layer_k else None
        for step in range(start, config.steps):
            t0 = time.perf_counter()
            seed = _step_seed(config.seed, 2, step)
            if config.auto_layer_k and step % config.layer_select_every == 0:
                chosen = select_layers(generator, adapter, vlm, target_template, config, seed + 1)
            codes = generator.sample_codes(config.batch_size, seed)
            with torch.no_grad():
                with adapter.disabled():
                    src_feats = vlm.encode_image(generator.generate(codes))
                if fixed is None:
                    ctx = mapper.mapper(generator.latent_code(codes).to(next(mapper.mapper.parameters()).device))
                    d_text = F.normalize(tgt_prompts.features(ctx), dim=-1) - F.normalize(
                        src_prompts.features(ctx), dim=-1
                    )
                else:
                    d_text = fixed.expand(codes.shape[0], -1)
            tgt_feats = vlm.encode_image(generator.generate(codes))
            loss = cosine_distance(tgt_feats - src_feats, d_text).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if len(chosen) < len(adapter.layers):
                keep = {id(p) for n in chosen for p in adapter.module_parameters(n)}
                for p in params:
                    if id(p) not in keep:
                        p.grad = None  # Adam skips parameters without a gradient
            optimizer.step()
            with torch.no_grad():
                for key, value in bag.state_dict().items():
                    ema_t = getattr(ema, key)
                    ema_t.mul_(config.ema_decay).add_(value.detach(), alpha=1.0 - config.ema_decay)
            losses.append(float(loss.detach()))
            elapsed += time.perf_counter() - t0
            timed += 1
            done = step + 1
            if path is not None and done % checkpoint_every == 0 and done < config.steps:
                save_training_state(
                    path,
                    bag,
                    optimizer,
                    done,
                    backbone=generator.name,
                    ema=ema,
                    extra={"losses": losses, "config": config.to_dict(), "stage": 2, "chosen": chosen},
                )
            if callback is not None:
                callback(done, config.steps, losses[-1])
    final = ema.as_dict() if use_ema else adapter.state()
    adapter.load_state(final)
    for p in params:
        p.requires_grad_(False)
    down, up = adapter.weights(final)
    lora = LoraWeights(
        down=down,
        up=up,
        rank=config.rank,
        alpha=config.alpha,
        kind=generator.kind,
        naming=getattr(generator, "naming", "native"),
        base=generator.name,
        num_res_blocks=list(getattr(generator, "num_res_blocks", []) or []),
        info={
            "method": config.method,
            "source_text": config.source_text,
            "target_text": config.target_text,
            "steps": config.steps,
            "ema": use_ema,
        },
    )
    return AdaptationResult(
        lora=lora,
        adapter=adapter,
        losses=losses,
        mapper=mapper,
        selected_layers=chosen,
        seconds_per_step=elapsed / max(timed, 1),
        peak_memory_mb=peak_memory_mb(device),
    )


def run_adaptation(
    generator: AdaptableGenerator,
    vlm: Any,
    config: IPLConfig,
    mapper: TrainedMapper | None = None,
    *,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 50,
    callback: Callable[[str, int, int, float], None] | None = None,
) -> AdaptationResult:
    """Both stages (IPL) or stage 2 alone (NADA, or IPL with a given ``mapper``); ``callback(stage, step, total,
    loss)``. With ``checkpoint_dir``, stage checkpoints (``mapper.state.safetensors``, ``lora.state.safetensors``)
    and the finished mapper (``mapper.safetensors``) go there so that a rerun resumes; each stage's state file
    is removed once that stage has finished (the LoRA is the caller's to save)."""
    from .mapper import load_mapper, save_mapper

    folder = Path(checkpoint_dir) if checkpoint_dir else None
    mapper_losses: list[float] = []
    mapper_sps = 0.0
    if config.method == "ipl" and mapper is None:
        done_file = folder / "mapper.safetensors" if folder else None
        if done_file is not None and done_file.is_file():
            mapper = load_mapper(done_file, vlm)
            mapper_losses = [float(v) for v in mapper.config.get("extra", {}).get("losses", [])]
        else:
            stage1 = train_mapper(
                generator,
                vlm,
                config,
                checkpoint_path=folder / "mapper.state.safetensors" if folder else None,
                checkpoint_every=checkpoint_every,
                callback=(lambda s, t, v: callback("mapper", s, t, v)) if callback else None,
            )
            mapper, mapper_losses, mapper_sps = stage1.trained, stage1.losses, stage1.seconds_per_step
            if folder is not None:
                mapper.config = {**mapper.config, "extra": {**config.extra, "losses": mapper_losses}}
                save_mapper(mapper, folder / "mapper.safetensors")
                (folder / "mapper.state.safetensors").unlink(missing_ok=True)
    lora_state = folder / "lora.state.safetensors" if folder else None
    result = adapt_generator(
        generator,
        vlm,
        config,
        mapper if config.method == "ipl" else None,
        checkpoint_path=lora_state,
        checkpoint_every=checkpoint_every,
        callback=(lambda s, t, v: callback("lora", s, t, v)) if callback else None,
    )
    if lora_state is not None:  # finished: a rerun starts stage 2 afresh (same seed, same result)
        lora_state.unlink(missing_ok=True)
    result.mapper_losses, result.mapper_seconds_per_step = mapper_losses, mapper_sps
    return result
