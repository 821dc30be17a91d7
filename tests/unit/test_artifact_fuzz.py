"""Hostile safetensors headers through every reader of the artifact layer (issue "hardening", findings 1, 2, 4).

Each generated file is a valid 8-byte length followed by a header of any JSON structure (wrong types, nesting,
offsets, dtypes, metadata values, encodings) and some data bytes. Every reader must answer with an
:class:`ArtifactError` naming the file, and ``artifact_method`` (what the node option lists call) must never
raise at all. A PromptWeave artifact holding NaN or inf is refused.
"""

from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from promptweave.prompt_modules.core.artifacts import (
    ArtifactError,
    artifact_method,
    read_metadata,
    read_safetensors,
    read_safetensors_keys,
)
from promptweave.prompt_modules.core.learned_prompt import LearnedPrompt, LearnedPromptConfig

JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
JSON = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6),
                                                                                               inner, max_size=3),
                    max_leaves=12)
ENTRY = st.fixed_dictionaries({}, optional={
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "Q4", ""]) | JSON,
    "shape": st.lists(st.integers(-3, 2**40), max_size=4) | JSON,
    "data_offsets": st.lists(st.integers(-5, 2**40), min_size=0, max_size=3) | JSON,
})
HEADER = (
    JSON
    | st.dictionaries(st.text(min_size=1, max_size=10), ENTRY, max_size=4)
    | st.builds(lambda entries, meta: {**entries, "__metadata__": meta},
                st.dictionaries(st.text(min_size=1, max_size=10), ENTRY, max_size=3),
                st.dictionaries(st.text(max_size=8), JSON, max_size=3))
)
READERS = (read_safetensors, read_metadata, read_safetensors_keys)


def _write(path, header, data: bytes) -> None:
    head = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=HEADER, data=st.binary(max_size=64))
def test_every_reader_answers_a_hostile_header_with_an_artifact_error(tmp_path, header, data):
    path = tmp_path / "hostile.safetensors"
    _write(path, header, data)
    method = artifact_method(path)  # never raises
    assert method is None or isinstance(method, str)
    for reader in READERS:
        try:
            reader(path)
        except ArtifactError as exc:
            assert str(path) in str(exc)


@pytest.mark.parametrize("head", [b"\xff\xfe not json", b"[" * 100_000 + b"]" * 100_000, b'{"a": {"dtype": "F32"'])
def test_undecodable_and_deeply_nested_headers_are_artifact_errors(tmp_path, head):
    path = tmp_path / "bad.safetensors"
    _write(path, head, b"")
    for reader in READERS:
        with pytest.raises(ArtifactError, match="bad.safetensors"):
            reader(path)
    assert artifact_method(path) is None


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_learned_prompt_holding_nan_or_inf_is_refused_naming_the_tensor(tmp_path, value):
    prompt = LearnedPrompt(LearnedPromptConfig(n_ctx=2, widths={"clip_l": 8}))
    path = tmp_path / "prompt.safetensors"
    prompt.save(path)
    tensors, metadata = read_safetensors(path)
    name = next(iter(tensors))
    tensors[name][0, 0] = value
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(ArtifactError, match=f"prompt.safetensors: tensor '{name}' holds NaN or infinite"):
        LearnedPrompt.load(path)
    plain = tmp_path / "not-ours.safetensors"  # a user's file (no promptweave metadata) is read as it is
    save_file({"w": torch.tensor([float("nan")])}, str(plain))
    assert torch.isnan(read_safetensors(plain)[0]["w"]).all()


def test_a_save_removes_stale_temporary_files_of_killed_saves_and_nothing_else(tmp_path):
    """A process killed mid-save leaves ``.NAME.XXXXXXXX.tmp``; the next save into the folder removes it once it is
    older than STALE_TEMP_SECONDS (a younger one may be another writer's), and never touches other files."""
    import os
    import time

    from promptweave.prompt_modules.core.artifacts import STALE_TEMP_SECONDS, atomic_write_bytes

    old = time.time() - STALE_TEMP_SECONDS - 60
    stale = [tmp_path / ".prompt.safetensors.ab12cd_9.tmp", tmp_path / ".pw-write-test.k2j4h6g8"]
    fresh = tmp_path / ".other.safetensors.zz99yy88.tmp"
    keep = [tmp_path / ".hidden.tmp", tmp_path / "notes.tmp", tmp_path / "model.safetensors"]
    for path in [*stale, fresh, *keep]:
        path.write_bytes(b"x")
    for path in [*stale, *keep]:
        os.utime(path, (old, old))
    atomic_write_bytes(tmp_path / "new.safetensors", b"data")
    assert not any(p.exists() for p in stale) and fresh.exists() and all(p.exists() for p in keep)
    assert (tmp_path / "new.safetensors").read_bytes() == b"data"


def test_atomic_writes_from_many_threads_keep_the_umask_permissions(tmp_path):
    """Caption Folder writes from several threads; reading the umask means setting it for a moment, so without
    taking turns one writer could read another's temporary value and give its file the wrong permissions."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    from promptweave.prompt_modules.core.artifacts import atomic_write_bytes

    old = os.umask(0o077)
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: atomic_write_bytes(tmp_path / f"{i}.txt", str(i).encode()), range(200)))
    finally:
        os.umask(old)
    assert {p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {0o600}
    assert all((tmp_path / f"{i}.txt").read_text() == str(i) for i in range(200))


@pytest.mark.parametrize(("metadata", "tensor"), [
    ({"promptweave.position": "sideways"}, torch.zeros(2, 8)),
    ({"promptweave.placeholder": ""}, torch.zeros(2, 8)),
    ({}, torch.zeros(0, 8)),
])
def test_a_learned_prompt_with_an_invalid_stored_config_names_the_file(tmp_path, metadata, tensor):
    path = tmp_path / "odd.safetensors"
    save_file({"clip_l": tensor}, str(path), metadata={"promptweave.method": "learned_prompt", **metadata})
    with pytest.raises(ArtifactError, match="odd.safetensors holds (an invalid learned prompt|empty prompt vectors)"):
        LearnedPrompt.load(path)


def test_declared_dimensions_are_checked_against_the_tensors_before_anything_is_built(tmp_path):
    """Issue "hardening", finding 3: metadata that declares huge widths (a few-KB file asking for gigabytes) is
    refused from a meta-device build, before any memory is allocated, naming the file."""
    import json as _json
    import resource

    from promptweave.prompt_modules.core.vlm import VisionLanguageModel
    from promptweave.prompt_modules.dual_prompt import DualPrompt, DualPromptConfig, load_dual_prompt, save_dual_prompt

    vlm = VisionLanguageModel("tiny", seed=0)
    path = tmp_path / "dual.safetensors"
    save_dual_prompt(DualPrompt.for_vlm(vlm, DualPromptConfig()), path)
    tensors, metadata = read_safetensors(path)
    widths = _json.loads(metadata["promptweave.widths"])
    widths["text"] = 4_000_000  # 4e6 x 77 tokens x 4 bytes ~ 1.2 GB per prompt if it were built
    hostile = tmp_path / "hostile-dual.safetensors"
    save_file(tensors, str(hostile), metadata={**metadata, "promptweave.widths": _json.dumps(widths)})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ArtifactError, match="hostile-dual.safetensors: its stored configuration does not match"):
        load_dual_prompt(hostile)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing big was allocated
    assert load_dual_prompt(path) is not None  # the honest file still loads
