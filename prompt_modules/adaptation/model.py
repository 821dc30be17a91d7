"""IPL's networks around the frozen VLM and generator (Guo et al., CVPR 2023): the prompt encoder and the LoRA.

Notation of the paper: ``G_s`` the frozen source generator, ``G_t`` its adapted copy (here: the same network
with LoRA adapters switched on), ``w`` the per-image latent code, ``F`` the latent mapper (:mod:`.mapper`),
``E_T`` the frozen VLM's text encoder, ``N`` L2 normalisation.

* Prompt features (sec. 3.2, eq. 1): ``f(w, d) = E_T([SOS] F(w) tokens(d) [EOS]) + E_T(ctx_init d.)`` (the second
  term is the official code's base feature, ``IPLConfig.add_base_feature``), and ``T(d)`` the normalised mean
  template feature of ``d``: :class:`PromptEncoder`.
* ``G_t``: a PEFT LoRA (``LoraConfig``; B initialised to zero, so ``G_t = G_s`` at step 0) injected into the
  generator's target layers, switched off for ``G_s``: :class:`LoRAAdapter`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from .config import IPLConfig
from .data import base_prompt, placeholder_prompt, template_prompts


class PromptEncoder:
    """Text features of IPL prompts for one domain name with a frozen VLM (see the module docstring)."""

    def __init__(self, vlm: Any, domain: str, config: IPLConfig) -> None:
        self.vlm, self.domain, self.n_ctx = vlm, domain.strip(), config.n_ctx
        tokens = vlm.tokenize([placeholder_prompt(self.domain, self.n_ctx)])
        with torch.no_grad():
            embeds = vlm.embed_tokens(tokens).float()
        self.prefix = embeds[:, :1].detach()  # [SOS]
        self.suffix = embeds[:, 1 + self.n_ctx :].detach()  # domain tokens, [EOS], padding
        self.eot = vlm.eot_index(tokens)
        with torch.no_grad():
            self.base = (
                vlm.encode_text([base_prompt(config.ctx_init, self.domain)], normalize=False)
                if config.add_base_feature
                else None
            )
            template = vlm.encode_text(template_prompts(self.domain, config.templates))
            self.template = F.normalize(template.mean(dim=0, keepdim=True), dim=-1)  # T(d), normalised

    def features(self, ctx: torch.Tensor) -> torch.Tensor:
        """Unnormalised ``f(w, d)`` for prompt vectors ``ctx`` ``[B, n_ctx, token_width]``."""
        b = ctx.shape[0]
        embeds = torch.cat(
            [self.prefix.expand(b, -1, -1), ctx.to(self.prefix.dtype), self.suffix.expand(b, -1, -1)], dim=1
        )
        feats = self.vlm.encode_text_embeddings(embeds, self.eot.expand(b), normalize=False)
        return feats + self.base if self.base is not None else feats


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
        for layer in self.layers.values():  # fp32 LoRA (and Adam state) on an fp16 / bf16 model, as PEFT's
            layer.lora_A[self.ADAPTER].float()  # autocast_adapter_dtype does; PEFT casts the input to it
            layer.lora_B[self.ADAPTER].float()
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
