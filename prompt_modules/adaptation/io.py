"""Files of an IPL run: the latent mapper (one safetensors file) and the metadata check of training checkpoints.

:func:`save_mapper` / :func:`load_mapper`: one safetensors file, ``promptweave.method = "ipl_mapper"``,
backbone = the VLM's name, plus ``token_width``, ``latent_dim``, ``n_ctx``, the generator's fingerprint and the
run's :class:`~.config.IPLConfig`. The LoRA files (native, ComfyUI/kohya and diffusers naming) are
:mod:`.export`'s. Training checkpoints are :mod:`~promptweave.prompt_modules.core.checkpointing`'s format;
:func:`check_checkpoint` refuses one of another run before any weight is read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.artifacts import (
    MALFORMED_METADATA_ERRORS,
    ArtifactError,
    BackboneMismatchError,
    base_metadata,
    build_fitting,
    check_method,
    meta_field,
    read_metadata,
    read_safetensors,
    save_safetensors_atomic,
)
from .config import IPLConfig
from .mapper import LatentMapper, TrainedMapper

METHOD = "ipl_mapper"


def save_mapper(trained: TrainedMapper, path: str | os.PathLike[str]) -> Path:
    """One safetensors file with the mapper weights and its shape, VLM, generator and config metadata."""
    metadata = base_metadata(
        METHOD,
        trained.backbone,
        shape=trained.mapper.shape_dict(),
        token_width=trained.token_width,
        latent_dim=trained.latent_dim,
        n_ctx=trained.mapper.n_ctx,
        generator=trained.generator,
        config=trained.config,
    )
    return save_safetensors_atomic(path, trained.mapper.state_dict(), metadata)


def load_mapper(path: str | os.PathLike[str], vlm: Any | None = None) -> TrainedMapper:
    """Read a :func:`save_mapper` file; with ``vlm``, refuse one trained for another VLM or token width."""
    path = Path(path)
    tensors, metadata = read_safetensors(path)
    check_method(metadata, METHOD, path)
    shape = meta_field(metadata, "shape")
    if not isinstance(shape, dict):
        raise ArtifactError(f"{path}: missing promptweave.shape metadata")
    try:
        mapper = build_fitting(path, lambda: LatentMapper(**shape), tensors)
        mapper.load_state_dict(tensors)
    except MALFORMED_METADATA_ERRORS as exc:
        raise ArtifactError(f"{path} does not fit its mapper shape: {exc}") from None
    config = meta_field(metadata, "config", {})
    trained = TrainedMapper(
        mapper.eval(),
        str(meta_field(metadata, "backbone")),
        str(meta_field(metadata, "generator", "")),
        config if isinstance(config, dict) else {},
    )
    if vlm is not None:
        try:
            trained.check_vlm(vlm)
        except BackboneMismatchError as exc:
            raise BackboneMismatchError(f"{path}: {exc}") from None
    return trained


def check_checkpoint(config: IPLConfig, path: Path, keys: Sequence[str]) -> dict[str, Any]:
    """The ``extra`` metadata of the training checkpoint at ``path``; a checkpoint of other settings (any of
    ``keys`` differs from ``config``) is refused, read from its metadata before any weight is loaded."""
    extra = meta_field(read_metadata(path), "extra", {})
    extra = extra if isinstance(extra, dict) else {}
    saved = extra.get("config", {})
    mine = config.to_dict()
    diff = [k for k in keys if json.dumps(saved.get(k)) != json.dumps(mine.get(k))]
    if diff:
        raise ArtifactError(
            f"{path} is a checkpoint of another run (different {', '.join(diff)}): delete it or start a new run"
        )
    return extra
