"""The learned-prompt primitive: ``n_ctx`` context vectors of a text encoder's token width.

Every PromptWeave method learns some form of continuous prompt (CoOp-style context vectors, IPL's
image-specific prompts, DCAR's dual prompts, RPP's pretrained prompts). This module holds the shared,
backbone-neutral piece: a small ``nn.Module`` with one ``[n_ctx, width]`` matrix per text encoder
(``clip_l`` for SD1.x, ``clip_l`` + ``clip_g`` for SDXL, ``text`` for our own VLMs), spliced into a tokenised
prompt either right after the start token (``prefix``, CoOp, Zhou et al. 2022, eq. 2) or where the
``placeholder`` string stands in the text.

Files use the textual-inversion layout ComfyUI reads (``{"clip_l": [n, 768]}``, ``{"clip_g": [n, 1280]}``)
plus PromptWeave metadata, so a learned prompt is also a valid embedding for ComfyUI's ``embedding:`` syntax.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from .artifacts import (
    MALFORMED_METADATA_ERRORS,
    ArtifactError,
    BackboneMismatchError,
    base_metadata,
    check_method,
    meta_field,
    read_safetensors,
    save_safetensors_atomic,
)

METHOD = "learned_prompt"
Position = Literal["prefix", "placeholder"]
#: ComfyUI tokenizer keys ("l", "g") to textual-inversion keys.
COMFY_TO_TI_KEY = {"l": "clip_l", "g": "clip_g"}


@dataclass
class LearnedPromptConfig:
    """Shape and placement of a learned prompt.

    ``widths`` maps each text encoder (``clip_l``, ``clip_g``, ``text``) to its token width.
    ``backbone`` names the model family the vectors were learned for (``sd1``, ``sdxl``, ``worldclip`` ...);
    ``any`` means the vectors were not learned against a particular backbone (e.g. random or imported).
    """

    n_ctx: int = 4
    widths: dict[str, int] = field(default_factory=lambda: {"clip_l": 768})
    backbone: str = "sd1"
    position: Position = "prefix"
    placeholder: str = "<pw>"
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.n_ctx < 1:
            raise ValueError(f"n_ctx must be at least 1, got {self.n_ctx}")
        if not self.widths or any(w < 1 for w in self.widths.values()):
            raise ValueError(f"widths must name at least one encoder with a positive width, got {self.widths}")
        if self.position not in ("prefix", "placeholder"):
            raise ValueError(f"position must be 'prefix' or 'placeholder', got {self.position!r}")
        if not self.placeholder.strip():
            raise ValueError("placeholder must be a non-empty string")


class LearnedPrompt(nn.Module):
    """``n_ctx`` learnable context vectors per text encoder (the CoOp context ``[V]_1 ... [V]_M``)."""

    def __init__(self, config: LearnedPromptConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config
        self.vectors = nn.ParameterDict(
            {
                name: nn.Parameter(torch.randn(config.n_ctx, width, generator=generator) * config.init_std)
                for name, width in config.widths.items()
            }
        )

    @classmethod
    def from_token_ids(cls, ids: torch.Tensor, tables: dict[str, torch.Tensor]) -> LearnedPrompt:
        """A hard prompt (as in PEZ): each encoder's own embeddings of vocabulary token ``ids``, one vector per id;
        ``tables`` maps encoder names (``clip_l``/``clip_g``) to their token-embedding tables."""
        widths = {k: int(t.shape[1]) for k, t in tables.items()}
        prompt = cls(LearnedPromptConfig(n_ctx=len(ids), widths=widths, backbone="any"))
        for key, table in tables.items():
            prompt.init_from_token_embeddings(key, table.detach()[ids.to(table.device)].float().cpu())
        return prompt

    @property
    def n_ctx(self) -> int:
        return self.config.n_ctx

    def widths(self) -> dict[str, int]:
        return {name: int(v.shape[1]) for name, v in self.vectors.items()}

    def forward(self, encoder: str) -> torch.Tensor:
        """The ``[n_ctx, width]`` vectors for one text encoder."""
        if encoder not in self.vectors:
            raise KeyError(f"learned prompt has no vectors for encoder {encoder!r} (has {sorted(self.vectors)})")
        return self.vectors[encoder]

    @torch.no_grad()
    def init_from_token_embeddings(self, encoder: str, embeddings: torch.Tensor) -> None:
        """Initialise from the token embeddings of a phrase (CoOp's "a photo of a" initialisation)."""
        rows = embeddings.reshape(-1, embeddings.shape[-1])
        target = self.vectors[encoder]
        if rows.shape[1] != target.shape[1]:
            raise BackboneMismatchError(
                f"init embeddings have width {rows.shape[1]}, {encoder} needs {target.shape[1]}"
            )
        count = min(rows.shape[0], target.shape[0])
        target[:count] = rows[:count].to(target.dtype)

    def check_widths(self, available: dict[str, int], where: str = "this text encoder") -> None:
        """Refuse to be used with text encoders whose names or widths do not match, with a clear message."""
        mine = self.widths()
        missing = [name for name in available if name not in mine]
        if missing:
            raise BackboneMismatchError(
                f"{where} has text encoder(s) {sorted(available)} but the learned prompt only has {sorted(mine)} "
                f"(trained for backbone '{self.config.backbone}'). "
                + ("An SDXL CLIP needs a prompt with clip_g vectors: use one trained for SDXL."
                   if "clip_g" in missing else "Use a prompt trained for this model.")
            )
        for name, width in available.items():
            if mine[name] != width:
                raise BackboneMismatchError(
                    f"learned prompt {name} vectors have width {mine[name]} but {where} expects {width} "
                    f"(prompt trained for backbone '{self.config.backbone}'): use a prompt trained for this model."
                )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save in textual-inversion layout with PromptWeave metadata (atomic)."""
        meta = base_metadata(
            METHOD,
            self.config.backbone,
            n_ctx=self.config.n_ctx,
            widths=self.widths(),
            position=self.config.position,
            placeholder=self.config.placeholder,
        )
        save_safetensors_atomic(path, {k: v.detach().float() for k, v in self.vectors.items()}, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str], backbone: str | None = None) -> LearnedPrompt:
        """Load a learned prompt, or a plain textual-inversion ``{"clip_l": ...}`` safetensors file.

        With ``backbone`` given, a file learned for another backbone is refused.
        """
        tensors, metadata = read_safetensors(path)
        if metadata.get("promptweave.method") is not None:
            check_method(metadata, METHOD, path)
        vectors = {k: v for k, v in tensors.items() if v.ndim == 2}
        if not vectors:
            raise BackboneMismatchError(f"{path} holds no [n, width] prompt vectors (keys: {sorted(tensors)})")
        counts = {v.shape[0] for v in vectors.values()}
        if len(counts) != 1:
            raise BackboneMismatchError(f"{path}: encoders disagree on the number of vectors {counts}")
        file_backbone = str(meta_field(metadata, "backbone", "any"))
        if backbone is not None and file_backbone not in ("any", backbone):
            raise BackboneMismatchError(
                f"{path} was learned for backbone '{file_backbone}', not '{backbone}': use a prompt trained for it"
            )
        try:  # the stored config as the file gives it (no tensor is allocated from it: sizes come from the tensors)
            config = LearnedPromptConfig(
                n_ctx=counts.pop(),
                widths={k: int(v.shape[1]) for k, v in vectors.items()},
                backbone=file_backbone,
                position=str(meta_field(metadata, "position", "prefix")),  # type: ignore[arg-type]
                placeholder=str(meta_field(metadata, "placeholder", "<pw>")),
            )
        except MALFORMED_METADATA_ERRORS as exc:
            raise ArtifactError(f"{path} holds an invalid learned prompt ({exc}): retrain or re-save it") from None
        if config.n_ctx < 1 or any(w < 1 for w in config.widths.values()):
            raise ArtifactError(f"{path} holds empty prompt vectors {dict(config.widths)} x {config.n_ctx}: retrain it")
        prompt = cls(config)
        with torch.no_grad():
            for name, value in vectors.items():
                prompt.vectors[name].copy_(value.float())
        return prompt


# --- splicing into tokenised prompts -------------------------------------------------------------------


def isolate_placeholder(text: str, placeholder: str) -> str:
    """Put spaces around every ``placeholder`` so it tokenises the same as on its own.

    CLIP's BPE merges punctuation runs (``<pw>,`` ends in the token ``>,``), so without this the
    placeholder's token ids could not be found in the tokenised text.
    """
    return re.sub(r"\s*" + re.escape(placeholder) + r"\s*", f" {placeholder} ", text).strip()



def find_subsequence(seq: Sequence[int], sub: Sequence[int]) -> int:
    """Index of the first occurrence of ``sub`` in ``seq``, or -1."""
    n = len(sub)
    for i in range(len(seq) - n + 1):
        if list(seq[i : i + n]) == list(sub):
            return i
    return -1


def splice_into_token_chunk(
    chunk: Sequence[tuple],
    vectors: torch.Tensor,
    *,
    marker_ids: Sequence[int],
    end_id: int,
    position: Position,
) -> list[tuple]:
    """Insert one ``(vector, weight)`` entry per row of ``vectors`` into a ComfyUI token chunk.

    ``chunk`` is one 77-entry list of ``(token_id, weight)`` tuples as ``clip.tokenize`` returns it.
    With ``position="placeholder"`` the entries of ``marker_ids`` are replaced; with ``"prefix"`` the vectors
    go right after the start token. Padding after the end token is trimmed (or added) so the chunk keeps
    its length. Raises ``ValueError`` when the text leaves no room for the vectors.
    """
    ids = [entry[0] if isinstance(entry[0], int) else None for entry in chunk]
    if position == "placeholder":
        start = find_subsequence(ids, marker_ids)
        if start < 0:
            raise ValueError("the text does not contain the placeholder")
        removed = len(marker_ids)
        weight = chunk[start][1]
    else:
        start, removed, weight = 1, 0, 1.0
    rows = [(vectors[i], weight) for i in range(vectors.shape[0])]
    out = list(chunk[:start]) + rows + list(chunk[start + removed :])
    surplus = len(out) - len(chunk)
    if surplus > 0:
        ids_out = [entry[0] if isinstance(entry[0], int) else None for entry in out]
        end_at = ids_out.index(end_id) if end_id in ids_out else len(out)
        room = len(out) - 1 - end_at
        if room < surplus:
            raise ValueError(
                f"the text is too long to add {vectors.shape[0]} learned vectors in one {len(chunk)}-token chunk: "
                "shorten the text"
            )
        out = out[: len(out) - surplus]
    elif surplus < 0:
        out = out + [out[-1]] * (-surplus)
    return out


@contextlib.contextmanager
def replace_embedding_rows(
    embedding: nn.Module, positions: torch.Tensor, vectors: torch.Tensor
) -> Iterator[None]:
    """While active, rows ``positions`` of every sequence the embedding layer outputs become ``vectors``.

    This lets any Hugging Face CLIP text encoder run on a prompt with learned vectors in it, with the
    encoder's own position embeddings, causal mask and end-token pooling left untouched.
    """

    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[:, positions] = vectors.to(dtype=output.dtype, device=output.device)
        return output

    handle = embedding.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def input_ids_with_slots(
    ids: Sequence[int], *, n_ctx: int, marker_ids: Sequence[int], end_id: int, position: Position
) -> tuple[list[int], list[int]]:
    """Make room for ``n_ctx`` vectors in a padded id sequence; returns the new ids and the slot positions.

    Slots hold the start id as a stand-in and are overwritten by :func:`replace_embedding_rows`; padding is
    trimmed so the length stays fixed.
    """
    entries = [(i, 1.0) for i in ids]
    stand_in = torch.zeros(n_ctx, 1)
    spliced = splice_into_token_chunk(
        entries, stand_in, marker_ids=marker_ids, end_id=end_id, position=position
    )
    filler = ids[0]
    new_ids, slots = [], []
    for index, (token, _weight) in enumerate(spliced):
        if isinstance(token, torch.Tensor):
            slots.append(index)
            new_ids.append(filler)
        else:
            new_ids.append(int(token))
    return new_ids, slots


@torch.no_grad()
def encode_prompt_for_pipeline(
    prompt: LearnedPrompt,
    text: str,
    tokenizer,
    text_encoder: nn.Module,
    encoder_key: str = "clip_l",
) -> torch.Tensor:
    """``prompt_embeds`` for a diffusers ``StableDiffusionPipeline`` with the learned vectors spliced in.

    ``tokenizer`` is the pipeline's ``CLIPTokenizer`` and ``text_encoder`` its ``CLIPTextModel``; the result is
    the encoder's last hidden state ``[1, 77, width]``, as ``StableDiffusionPipeline.encode_prompt`` makes it.
    """
    vectors = prompt(encoder_key)
    width = text_encoder.get_input_embeddings().weight.shape[1]
    prompt.check_widths({encoder_key: int(width)}, where="the pipeline's text encoder")
    cfg = prompt.config
    text = isolate_placeholder(text, cfg.placeholder)
    ids = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    marker = tokenizer(cfg.placeholder, add_special_tokens=False).input_ids
    position: Position = "placeholder" if cfg.placeholder in text else "prefix"
    new_ids, slots = input_ids_with_slots(
        ids, n_ctx=cfg.n_ctx, marker_ids=marker, end_id=tokenizer.eos_token_id, position=position
    )
    device = text_encoder.get_input_embeddings().weight.device
    input_ids = torch.tensor([new_ids], device=device)
    with replace_embedding_rows(text_encoder.get_input_embeddings(), torch.tensor(slots), vectors):
        return text_encoder(input_ids)[0]
