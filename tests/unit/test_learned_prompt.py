"""Unit tests of the learned-prompt primitive and of safetensors artifacts (no ComfyUI needed)."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from promptweave.prompt_modules.core.artifacts import ArtifactError, BackboneMismatchError, read_metadata
from promptweave.prompt_modules.core.learned_prompt import (
    LearnedPrompt,
    LearnedPromptConfig,
    input_ids_with_slots,
    replace_embedding_rows,
    splice_into_token_chunk,
)

END, START, PAD = 49407, 49406, 0


def make_prompt(n_ctx=4, widths=None, backbone="sd1", seed=0) -> LearnedPrompt:
    config = LearnedPromptConfig(n_ctx=n_ctx, widths=widths or {"clip_l": 768}, backbone=backbone)
    return LearnedPrompt(config, torch.Generator().manual_seed(seed))


def chunk(ids, length=77, pad=END):
    """A ComfyUI-style token chunk: start, ids, end, padding."""
    body = [START, *ids, END]
    return [(t, 1.0) for t in body + [pad] * (length - len(body))]


def test_shapes_and_forward():
    prompt = make_prompt(n_ctx=3, widths={"clip_l": 768, "clip_g": 1280})
    assert prompt("clip_l").shape == (3, 768)
    assert prompt("clip_g").shape == (3, 1280)
    assert prompt.widths() == {"clip_l": 768, "clip_g": 1280}
    assert sum(p.numel() for p in prompt.parameters()) == 3 * (768 + 1280)
    with pytest.raises(KeyError, match="clip_x"):
        prompt("clip_x")


@pytest.mark.parametrize("bad", [{"n_ctx": 0}, {"widths": {}}, {"widths": {"clip_l": 0}}, {"position": "middle"}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        LearnedPromptConfig(**bad)


def test_seeded_init_is_deterministic():
    assert torch.equal(make_prompt(seed=3)("clip_l"), make_prompt(seed=3)("clip_l"))
    assert not torch.equal(make_prompt(seed=3)("clip_l"), make_prompt(seed=4)("clip_l"))


def test_save_load_round_trip_and_metadata(tmp_path):
    prompt = make_prompt(widths={"clip_l": 768, "clip_g": 1280}, backbone="sdxl")
    path = tmp_path / "p.safetensors"
    prompt.save(path)
    meta = read_metadata(path)
    assert meta["promptweave.method"] == "learned_prompt"
    assert meta["promptweave.backbone"] == "sdxl"
    assert meta["promptweave.version"]
    assert meta["promptweave.n_ctx"] == "4"
    loaded = LearnedPrompt.load(path, backbone="sdxl")
    for key in ("clip_l", "clip_g"):
        assert torch.equal(loaded(key), prompt(key))
    assert loaded.config.backbone == "sdxl"
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    assert path.stat().st_mode & 0o044 == 0o044, "artifacts are readable by the group and others (umask 022)"


def test_textual_inversion_layout_is_what_comfyui_reads(tmp_path):
    path = tmp_path / "p.safetensors"
    make_prompt().save(path)
    from safetensors.torch import load_file

    assert set(load_file(path)) == {"clip_l"}  # ComfyUI's embedding loader reads this key


def test_plain_textual_inversion_file_is_accepted(tmp_path):
    path = tmp_path / "ti.safetensors"
    save_file({"clip_l": torch.randn(2, 768)}, path)
    loaded = LearnedPrompt.load(path)
    assert loaded.n_ctx == 2 and loaded.config.backbone == "any"


def test_mismatched_backbone_is_refused(tmp_path):
    path = tmp_path / "p.safetensors"
    make_prompt(backbone="sd1").save(path)
    with pytest.raises(BackboneMismatchError, match="learned for backbone 'sd1', not 'sdxl'"):
        LearnedPrompt.load(path, backbone="sdxl")


def test_width_and_encoder_mismatch_are_refused():
    prompt = make_prompt()
    prompt.check_widths({"clip_l": 768})
    with pytest.raises(BackboneMismatchError, match="width 768 but .* expects 1024"):
        prompt.check_widths({"clip_l": 1024})
    with pytest.raises(BackboneMismatchError, match="SDXL CLIP needs a prompt with clip_g"):
        prompt.check_widths({"clip_l": 768, "clip_g": 1280})


def test_other_artifact_type_is_refused(tmp_path):
    from promptweave.prompt_modules.core.artifacts import base_metadata, save_safetensors_atomic

    path = tmp_path / "lora.safetensors"
    save_safetensors_atomic(path, {"clip_l": torch.zeros(2, 768)}, base_metadata("ipl_lora", "sd1"))
    with pytest.raises(ArtifactError, match="'ipl_lora' artifact; expected a 'learned_prompt'"):
        LearnedPrompt.load(path)


def test_corrupt_truncated_pickle_and_missing_files_are_reported(tmp_path):
    good = tmp_path / "good.safetensors"
    make_prompt().save(good)
    data = good.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(ArtifactError, match="truncated"):
        LearnedPrompt.load(tmp_path / "trunc.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(ArtifactError, match="corrupt safetensors header"):
        LearnedPrompt.load(tmp_path / "garbage.safetensors")
    (tmp_path / "weights.pt").write_bytes(pickle.dumps({"clip_l": [1.0, 2.0]}))
    with pytest.raises(ArtifactError, match="safetensors"):
        LearnedPrompt.load(tmp_path / "weights.pt")
    with pytest.raises(ArtifactError, match="not found"):
        LearnedPrompt.load(tmp_path / "absent.safetensors")


def test_save_into_missing_or_readonly_folder_writes_nothing(tmp_path, monkeypatch):
    with pytest.raises(ArtifactError, match="does not exist"):
        make_prompt().save(tmp_path / "absent" / "p.safetensors")
    folder = tmp_path / "ro"
    folder.mkdir()
    # CI runs as root, which may write anywhere: make the folder read-only as far as the check can see.
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(ArtifactError, match="not writable"):
        make_prompt().save(folder / "p.safetensors")
    assert list(folder.iterdir()) == []


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    import promptweave.prompt_modules.core.artifacts as artifacts

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(artifacts.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        make_prompt().save(tmp_path / "p.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_splice_prefix_keeps_length_and_text():
    vectors = torch.randn(4, 8)
    out = splice_into_token_chunk(chunk([11, 12, 13]), vectors, marker_ids=[99], end_id=END, position="prefix")
    assert len(out) == 77
    assert out[0][0] == START
    assert all(torch.equal(out[1 + i][0], vectors[i]) for i in range(4))
    assert [t for t, _ in out[5:9]] == [11, 12, 13, END]


def test_splice_placeholder_replaces_marker_and_keeps_weight():
    vectors = torch.randn(2, 8)
    tokens = chunk([11, 98, 99, 12])
    tokens[2] = (98, 1.3)
    out = splice_into_token_chunk(tokens, vectors, marker_ids=[98, 99], end_id=END, position="placeholder")
    assert len(out) == 77
    assert out[1][0] == 11
    assert torch.equal(out[2][0], vectors[0]) and out[2][1] == 1.3
    assert torch.equal(out[3][0], vectors[1])
    assert [t for t, _ in out[4:6]] == [12, END]


def test_splice_with_pad_token_other_than_end_and_too_long_text():
    out = splice_into_token_chunk(chunk([5] * 10, pad=PAD), torch.randn(4, 8), marker_ids=[9], end_id=END,
                                  position="prefix")
    assert [t for t, _ in out[15:17]] == [END, PAD] and len(out) == 77
    with pytest.raises(ValueError, match="too long"):
        splice_into_token_chunk(chunk([5] * 74), torch.randn(4, 8), marker_ids=[9], end_id=END, position="prefix")
    with pytest.raises(ValueError, match="placeholder"):
        splice_into_token_chunk(chunk([5]), torch.randn(4, 8), marker_ids=[9], end_id=END, position="placeholder")


def test_input_ids_with_slots_and_embedding_hook():
    ids = [START, 11, 98, 12, END] + [END] * 72
    new_ids, slots = input_ids_with_slots(ids, n_ctx=3, marker_ids=[98], end_id=END, position="placeholder")
    assert len(new_ids) == 77 and slots == [2, 3, 4]
    assert new_ids[1] == 11 and new_ids[5:7] == [12, END]
    embedding = torch.nn.Embedding(50000, 8)
    vectors = torch.randn(3, 8)
    with replace_embedding_rows(embedding, torch.tensor(slots), vectors):
        out = embedding(torch.tensor([new_ids]))
    assert torch.equal(out[0, 2:5], vectors)
    assert torch.equal(out[0, 1], embedding.weight[11])
    assert torch.equal(embedding(torch.tensor([new_ids]))[0, 2], embedding.weight[START])  # hook removed


def test_placeholder_is_isolated_from_punctuation():
    from promptweave.prompt_modules.core.learned_prompt import isolate_placeholder

    assert isolate_placeholder("a painting of <pw>, soft", "<pw>") == "a painting of <pw> , soft"
    assert isolate_placeholder("(<pw>:1.2) cat", "<pw>") == "( <pw> :1.2) cat"
    assert isolate_placeholder("no marker", "<pw>") == "no marker"


@pytest.mark.parametrize(
    "name",
    ["", "  ", "../evil", "a/../../evil", "/etc/passwd", "C:\\\\x", "a\\\\b", "nul\x00byte", "CON", "com1.txt",
     "ok/./x", "trailing ", "a//b", "\x1b[31m"],
)
def test_unsafe_names_are_refused(tmp_path, name):
    from promptweave.prompt_modules.core.artifacts import UnsafeNameError, safe_child_path

    with pytest.raises(UnsafeNameError):
        safe_child_path(tmp_path, name)


def test_safe_names_stay_inside_and_symlinks_cannot_escape(tmp_path):
    from promptweave.prompt_modules.core.artifacts import UnsafeNameError, safe_child_path

    assert safe_child_path(tmp_path, "styles/neon") == (tmp_path / "styles" / "neon.safetensors").resolve()
    assert safe_child_path(tmp_path, "x.safetensors").name == "x.safetensors"
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (tmp_path / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafeNameError, match="outside"):
        safe_child_path(tmp_path, "link/x")


def test_from_token_ids_is_each_encoders_own_embeddings_of_the_ids():
    tables = {"clip_l": torch.randn(50, 8), "clip_g": torch.randn(50, 12)}
    prompt = LearnedPrompt.from_token_ids(torch.tensor([3, 7, 7]), tables)
    assert prompt.n_ctx == 3 and prompt.widths() == {"clip_l": 8, "clip_g": 12}
    for key, table in tables.items():
        assert torch.equal(prompt(key).detach(), table[[3, 7, 7]])
