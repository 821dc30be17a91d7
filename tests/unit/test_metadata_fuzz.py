"""Hostile metadata *values* in otherwise valid PromptWeave artifacts, through every loader (issue "hardening").

``test_artifact_fuzz`` breaks the safetensors header's structure; here the file is well formed and one of its
``promptweave.*`` metadata values is replaced: a whole value by any JSON (or non-JSON text), or one leaf inside a
stored config by a hostile scalar (huge or negative dimensions, NaN, a string, null, a list). Every loader must
then either load the file or answer with an :class:`ArtifactError` naming it, and never allocate what such a value
declares: each load runs under an address-space limit of 1 GiB above what the process uses.
"""

from __future__ import annotations

import json
import resource
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from promptweave.prompt_modules.adaptation.export import LoraWeights, load_lora_native, save_lora_native
from promptweave.prompt_modules.adaptation.io import load_mapper, save_mapper
from promptweave.prompt_modules.adaptation.mapper import LatentMapper, TrainedMapper
from promptweave.prompt_modules.core.artifacts import META_PREFIX, ArtifactError, read_safetensors
from promptweave.prompt_modules.core.learned_prompt import LearnedPrompt, LearnedPromptConfig
from promptweave.prompt_modules.core.vlm import VisionLanguageModel, load_vlm, save_vlm
from promptweave.prompt_modules.diff_prompt import DiTConfig, MaskVAEConfig, PromptConfig, load_bundle, save_bundle
from promptweave.prompt_modules.diff_prompt.dit import DiT
from promptweave.prompt_modules.diff_prompt.mask_vae import MaskVAE
from promptweave.prompt_modules.diff_prompt.model import DiffPrompt
from promptweave.prompt_modules.dual_prompt import DualPrompt, DualPromptConfig, load_dual_prompt, save_dual_prompt
from promptweave.prompt_modules.inversion import InverterConfig, PromptInverter, load_inverter, save_inverter
from promptweave.prompt_modules.inversion.vocabulary import Vocabulary
from promptweave.prompt_modules.pretraining import (
    RPPConfig,
    RPPPrompts,
    load_pretrained_prompts,
    save_pretrained_prompts,
)

#: Address space a load may add: building any of the dimensions the hostile values declare would exceed it.
MEMORY_BOUND_BYTES = 1 << 30


@contextmanager
def memory_bound(extra: int = MEMORY_BOUND_BYTES):
    """Limit the process's address space to what it uses now plus ``extra`` while the block runs: an allocation
    beyond it fails (a MemoryError or torch's "can't allocate memory"), which the tests count as a failure."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = psutil.Process().memory_info().vms + extra
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _artifacts(folder: Path) -> dict[str, tuple[Path, Callable[[Path], object]]]:
    """One small, honest artifact of every kind, and its loader."""
    vlm = VisionLanguageModel("tiny", seed=0)
    made: dict[str, tuple[Path, Callable[[Path], object]]] = {}

    prompt = folder / "learned.safetensors"
    LearnedPrompt(LearnedPromptConfig(n_ctx=2, widths={"clip_l": 8})).save(prompt)
    made["learned_prompt"] = (prompt, LearnedPrompt.load)
    made["dual_prompt"] = (save_dual_prompt(DualPrompt.for_vlm(vlm, DualPromptConfig(bank_size=0)),
                                            folder / "dual.safetensors"), load_dual_prompt)
    rpp = RPPPrompts.for_vlm(vlm, RPPConfig(n_text=2, n_visual=2, text_depth=1, visual_depth=1), seed=0)
    made["rpp"] = (save_pretrained_prompts(rpp, folder / "rpp.safetensors", vlm), load_pretrained_prompts)
    inverter = PromptInverter(InverterConfig(backbone="pixels", feature_dim=8, hidden=(16,)),
                              Vocabulary(["red", "star", "ring"]))
    made["inverter"] = (save_inverter(inverter, folder / "inverter.safetensors"), load_inverter)
    mapper = TrainedMapper(LatentMapper(latent_dim=16, token_width=8, n_ctx=2), "tiny", "gen", {"n_ctx": 2})
    made["mapper"] = (save_mapper(mapper, folder / "mapper.safetensors"), load_mapper)
    vae = MaskVAE(MaskVAEConfig(mask_size=32, block_out_channels=(8, 16, 16), norm_num_groups=8))
    dit = DiT(DiTConfig(hidden=32, depth=1, heads=2))
    model = DiffPrompt.for_vlm(vlm, vae, dit, PromptConfig(ddim_steps=4, adapter_channels=4, adapter_features=16,
                                                           head_hidden=16))
    made["diff_prompt"] = (save_bundle(folder / "bundle.safetensors", model=model), load_bundle)
    lora = LoraWeights(down={"layer": torch.randn(2, 8)}, up={"layer": torch.zeros(8, 2)}, rank=2, alpha=2.0)
    made["vlm"] = (save_vlm(vlm, folder / "vlm.safetensors"), load_vlm)
    made["lora_native"] = (save_lora_native(lora, folder / "lora.safetensors"), load_lora_native)
    return made


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    made = _artifacts(tmp_path_factory.mktemp("honest"))
    for path, load in made.values():
        load(path)  # every honest file loads
    return made


HOSTILE_SCALARS = st.sampled_from([2**40, 2**31, -1, 0, 10**30, 1e308, float("nan"), "x", "", None, [], {}, True])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


def _leaves(value: object, path: tuple = ()) -> list[tuple]:
    """Paths to every scalar inside a decoded JSON value."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _leaves(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _leaves(v, (*path, i))]
    return [path]


def _replace(value: object, path: tuple, new: object) -> object:
    if not path:
        return new
    copy = json.loads(json.dumps(value))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    return copy


def _encode(value: object) -> str:
    return json.dumps(value, allow_nan=True)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_loader_answers_a_hostile_metadata_value_with_an_artifact_error(artifacts, tmp_path, data):
    kind = data.draw(st.sampled_from(sorted(artifacts)), label="kind")
    honest, load = artifacts[kind]
    tensors, metadata = read_safetensors(honest)
    keys = sorted(k for k in metadata if k.startswith(META_PREFIX) and k != f"{META_PREFIX}method")
    key = data.draw(st.sampled_from(keys), label="key")
    try:
        decoded = json.loads(metadata[key])
    except json.JSONDecodeError:
        decoded = metadata[key]
    if data.draw(st.booleans(), label="whole value"):
        value = data.draw(JSON | st.text(max_size=12).map(lambda t: f"not json {t}"), label="value")
        raw = value if isinstance(value, str) and value.startswith("not json") else _encode(value)
    else:
        leaf = data.draw(st.sampled_from(_leaves(decoded) or [()]), label="leaf")
        raw = _encode(_replace(decoded, leaf, data.draw(HOSTILE_SCALARS, label="scalar")))
    path = tmp_path / f"hostile-{kind}.safetensors"
    save_file(tensors, str(path), metadata={**metadata, key: raw})
    try:
        with memory_bound():
            load(path)
    except ArtifactError as exc:
        assert path.name in str(exc), str(exc)


def test_a_declared_rank_or_alpha_that_does_not_fit_a_native_lora_is_refused(artifacts, tmp_path):
    honest, _ = artifacts["lora_native"]
    tensors, metadata = read_safetensors(honest)
    for key, value, message in ((f"{META_PREFIX}rank", "3", "stored rank 3 does not match"),
                                (f"{META_PREFIX}alpha", "NaN", "alpha nan is not a positive number"),
                                (f"{META_PREFIX}rank", '"two"', "malformed LoRA metadata")):
        path = tmp_path / "odd-lora.safetensors"
        save_file(tensors, str(path), metadata={**metadata, key: value})
        with pytest.raises(ArtifactError, match=f"odd-lora.safetensors: .*{message}"):
            load_lora_native(path)


def test_a_diff_prompt_bundle_declaring_huge_widths_is_refused_before_building(artifacts, tmp_path):
    honest, _ = artifacts["diff_prompt"]
    tensors, metadata = read_safetensors(honest)
    for key, field in ((f"{META_PREFIX}dit_config", "hidden"), (f"{META_PREFIX}vae_config", "latent_channels")):
        config = json.loads(metadata[key])
        config[field] = 1_000_000
        path = tmp_path / "huge-bundle.safetensors"
        save_file(tensors, str(path), metadata={**metadata, key: json.dumps(config)})
        with memory_bound(), pytest.raises(ArtifactError, match="huge-bundle.safetensors"):
            load_bundle(path)
    shutil.copy(honest, tmp_path / "copy.safetensors")
    assert load_bundle(tmp_path / "copy.safetensors").model is not None
