"""Prompt inverter files: one safetensors file per inverter (Reverse Stable Diffusion, Croitoru et al. 2023).

The file holds the head's weights and keyword calibration, the prompt bank's embeddings (fp16) and DAKL's
centroids when fitted; its metadata carry ``promptweave.method = "prompt_inversion"``, the image encoder it was
trained on (``promptweave.backbone``), the :class:`~.config.InverterConfig`, the vocabulary and the bank's
prompts. An inverter is refused with any other image encoder.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.artifacts import (
    MALFORMED_METADATA_ERRORS,
    ArtifactError,
    BackboneMismatchError,
    base_metadata,
    build_fitting,
    check_method,
    meta_field,
    read_safetensors,
    save_safetensors_atomic,
)
from .config import InverterConfig
from .dakl import DAKL
from .decode import PromptBank
from .model import PromptInverter
from .vocabulary import Vocabulary

METHOD = "prompt_inversion"


def save_inverter(inverter: PromptInverter, path: str | os.PathLike[str], **extra_meta: object) -> Path:
    """One safetensors file: weights, calibration, optional prompt bank and DAKL, config/vocabulary metadata."""
    tensors = dict(inverter.state_dict())
    meta_bank: list[str] = []
    if inverter.bank is not None:
        tensors["bank.embeddings"] = inverter.bank.embeddings.half()
        meta_bank = inverter.bank.texts
    if inverter.dakl is not None:
        tensors.update(inverter.dakl.state())
    meta = base_metadata(
        METHOD, inverter.backbone, config=inverter.config.to_dict(), vocabulary=inverter.vocabulary.words,
        bank=meta_bank, feature_dim=inverter.config.feature_dim, target_dim=inverter.config.target_dim,
        **extra_meta,
    )
    return save_safetensors_atomic(path, tensors, meta)


def load_inverter(path: str | os.PathLike[str], backbone: str | None = None) -> PromptInverter:
    """Load an inverter; with ``backbone`` given, one trained for another image encoder is refused."""
    tensors, metadata = read_safetensors(path)
    check_method(metadata, METHOD, path)
    found = str(meta_field(metadata, "backbone"))
    if backbone is not None and found != backbone:
        raise BackboneMismatchError(f"{path} is an inverter for the '{found}' image encoder, not '{backbone}'")
    try:
        config = InverterConfig.from_dict(meta_field(metadata, "config"))
        vocab = Vocabulary(meta_field(metadata, "vocabulary") or [])
        own = {k: v for k, v in tensors.items() if not k.startswith(("bank.", "dakl."))}
        inverter = build_fitting(path, lambda: PromptInverter(config, vocab), own)
        inverter.load_state_dict(own)
    except MALFORMED_METADATA_ERRORS as exc:
        raise ArtifactError(f"{path} is not a usable prompt inverter: {str(exc)[:300]}") from None
    texts = meta_field(metadata, "bank") or []
    if texts and "bank.embeddings" in tensors:
        inverter.bank = PromptBank(list(texts), tensors["bank.embeddings"].float())
    inverter.dakl = DAKL.from_state(tensors)
    return inverter.eval()
