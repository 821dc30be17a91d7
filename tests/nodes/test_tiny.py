"""Tiny models on demand: the SD1.x checkpoint real ComfyUI loads, the diffusers pipeline, the CLI."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from promptweave.prompt_modules.core.tokenizer_files import clip_merges, clip_vocab
from promptweave.testing.tiny import (
    SD15_LATENT_SCALE,
    SD15_UNET_CONFIG,
    build_tiny_pipeline,
    build_tiny_sd15,
    diffusers_unet_key_to_ldm,
    diffusers_unet_to_ldm,
    main,
    tiny_autoencoder,
)

REPO = Path(__file__).resolve().parents[2]
SENTENCES = ["a photo of a cat", "A RED Car, parked!", "naïve café 123, highly-detailed: 8k", ""]
#: diffusers' default UNet2DConditionModel arguments are the full SD1.5 UNet apart from these
SD15_FULL_UNET = {"block_out_channels": (320, 640, 1280, 1280), "cross_attention_dim": 768, "attention_head_dim": 8}


def comfyui_dir() -> Path | None:
    """The ComfyUI test install: $COMFYUI_DIR, the path in .venv/comfyui-dir, or .cache/ComfyUI."""
    candidates = []
    if os.environ.get("COMFYUI_DIR"):
        candidates.append(Path(os.environ["COMFYUI_DIR"]))
    marker = REPO / ".venv" / "comfyui-dir"
    if marker.is_file():
        candidates.append(Path(marker.read_text().strip()))
    candidates.append(REPO / ".cache" / "ComfyUI")
    return next((c for c in candidates if (c / "comfy" / "sd.py").is_file()), None)


def meta_unet_keys(**config: object) -> list[str]:
    """State-dict keys of a diffusers UNet2DConditionModel, built on the meta device (no memory, no time)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return list(UNet2DConditionModel(**config).state_dict())


@pytest.fixture(scope="session")
def sd15_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny_sd15") / "tiny_sd15.safetensors"
    start = time.perf_counter()
    build_tiny_sd15(path, seed=0)
    print(f"\nbuilt {path.name}: {path.stat().st_size / 2**20:.1f} MiB in {time.perf_counter() - start:.1f} s")
    return path


@pytest.fixture(scope="session")
def pipeline_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny_pipeline") / "pipe", seed=0)


# ----- diffusers -> LDM key mapping (no ComfyUI needed) --------------------------------------------------------


def test_mapping_of_the_full_sd15_unet() -> None:
    keys = meta_unet_keys(**SD15_FULL_UNET)
    up_blocks = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    mapped = diffusers_unet_to_ldm(dict.fromkeys(keys), {"layers_per_block": 2, "up_block_types": up_blocks})
    assert len(mapped) == len(keys) == 686
    for key in [  # well-known keys of every SD1.x checkpoint
        "input_blocks.0.0.weight",
        "time_embed.0.weight",
        "time_embed.2.bias",
        "out.0.weight",
        "out.2.bias",
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "input_blocks.3.0.op.weight",
        "input_blocks.4.0.skip_connection.weight",
        "input_blocks.11.0.out_layers.3.weight",
        "middle_block.0.emb_layers.1.weight",
        "middle_block.1.proj_in.weight",
        "middle_block.2.in_layers.2.bias",
        "output_blocks.0.0.skip_connection.weight",
        "output_blocks.2.1.conv.weight",
        "output_blocks.5.2.conv.weight",
        "output_blocks.8.2.conv.weight",
        "output_blocks.11.1.transformer_blocks.0.ff.net.2.weight",
    ]:
        assert key in mapped, key


def test_mapping_rejects_unknown_keys() -> None:
    # SDXL's added (pooled text + size ids) embedding is mapped since issue 34; other stray keys are refused
    assert diffusers_unet_key_to_ldm("add_embedding.linear_1.weight", 1, set()) == "label_emb.0.0.weight"
    assert diffusers_unet_key_to_ldm("add_embedding.linear_2.bias", 1, set()) == "label_emb.0.2.bias"
    with pytest.raises(KeyError):
        diffusers_unet_key_to_ldm("add_embedding.linear_3.weight", 1, set())
    with pytest.raises(KeyError):
        diffusers_unet_key_to_ldm("down_blocks.0.resnets.0.weird.weight", 1, set())


def test_tiny_autoencoder_layout() -> None:
    vae = tiny_autoencoder()
    assert sum(p.numel() for p in vae.parameters()) == pytest.approx(2.4e6, rel=0.02)
    assert vae["taesd_decoder"][1].weight.shape == (64, 4, 3, 3)
    latent = vae["taesd_encoder"](torch.rand(1, 3, 64, 64))
    assert latent.shape == (1, 4, 8, 8)
    assert vae["taesd_decoder"](latent).shape == (1, 3, 64, 64)


# ----- the SD1.x checkpoint ------------------------------------------------------------------------------------


def test_sd15_file_layout(sd15_path: Path) -> None:
    size = sd15_path.stat().st_size / 2**20
    assert 280 < size < 300
    with safe_open(str(sd15_path), framework="pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
        dtypes = {k: f.get_slice(k).get_dtype() for k in keys}
    unet = [k for k in keys if k.startswith("model.diffusion_model.")]
    clip = [k for k in keys if k.startswith("cond_stage_model.transformer.text_model.")]
    vae = [k for k in keys if k.startswith("first_stage_model.")]
    assert len(unet) + len(clip) + len(vae) == len(keys)
    assert len(unet) == len(meta_unet_keys(**SD15_UNET_CONFIG))
    assert len(clip) == 4 + 12 * 16
    assert "first_stage_model.taesd_decoder.1.weight" in vae and "first_stage_model.taesd_encoder.0.weight" in vae
    assert all(dtypes[k] == "F16" for k in unet + clip)
    assert meta["promptweave.method"] == "tiny-sd15" and meta["promptweave.seed"] == "0"
    assert [p.name for p in sd15_path.parent.iterdir()] == [sd15_path.name]  # atomic: no temporary left


COMFY_CHECK = r"""
import json, logging, sys
comfy_dir, ckpt, out_json, out_tensors = sys.argv[1:5]
sys.path.insert(0, comfy_dir)
import comfy.cli_args
comfy.cli_args.args.cpu = True
messages = []
class Collect(logging.Handler):
    def emit(self, record):
        messages.append(record.getMessage())
logging.getLogger().addHandler(Collect())
logging.getLogger().setLevel(logging.DEBUG)
import torch
import comfy.sd, comfy.utils
from safetensors.torch import save_file

model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(ckpt, output_vae=True, output_clip=True)
sd = comfy.utils.load_torch_file(ckpt)
def under(prefix):
    return {k[len(prefix):] for k in sd if k.startswith(prefix)}
unet_config = {k: v for k, v in model.model.model_config.unet_config.items() if k != "dtype"}
sd15 = dict(num_res_blocks=[2] * 4, channel_mult=[1, 2, 4, 4], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
            transformer_depth_output=[1] * 9 + [0] * 3, transformer_depth_middle=1)
latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
image = vae.decode(latent)
cond = clip.encode_from_tokens(clip.tokenize("a photo of a cat"))
with torch.no_grad():
    eps = model.model.diffusion_model(latent, torch.tensor([500.0]), context=cond.float())
save_file({"latent": latent, "image": image.float().contiguous(), "eps": eps.float().contiguous()}, out_tensors)
json.dump({
    "model_config": type(model.model.model_config).__name__,
    "unet_config": unet_config,
    "vae": type(vae.first_stage_model).__name__,
    "vae_scale": float(vae.first_stage_model.vae_scale),
    "clip": type(clip.cond_stage_model).__name__,
    "cond_shape": list(cond.shape),
    "unet_key_diff": sorted(set(model.model.diffusion_model.state_dict()) ^ under("model.diffusion_model.")),
    "vae_key_diff": sorted(set(vae.first_stage_model.state_dict()) ^ under("first_stage_model.")),
    "map_detected": comfy.utils.unet_to_diffusers(unet_config),
    "map_sd15": comfy.utils.unet_to_diffusers(sd15),
    "messages": messages,
}, open(out_json, "w"))
"""


@pytest.fixture(scope="session")
def comfy_result(sd15_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    comfy = comfyui_dir()
    if comfy is None:
        pytest.skip("no ComfyUI test install (set COMFYUI_DIR, write .venv/comfyui-dir, or use .cache/ComfyUI)")
    work = tmp_path_factory.mktemp("comfy_check")
    script = work / "check.py"
    script.write_text(COMFY_CHECK)
    out_json, out_tensors = work / "result.json", work / "tensors.safetensors"
    proc = subprocess.run(
        [sys.executable, str(script), str(comfy), str(sd15_path), str(out_json), str(out_tensors)],
        cwd=comfy,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out_json.read_text())
    result["tensors"] = load_file(str(out_tensors))
    return result


@pytest.mark.comfyui
@pytest.mark.slow
def test_comfyui_detects_sd15(comfy_result: dict) -> None:
    assert comfy_result["model_config"] == "SD15"
    cfg = comfy_result["unet_config"]
    assert (cfg["model_channels"], cfg["context_dim"], cfg["use_linear_in_transformer"]) == (320, 768, False)
    assert cfg["channel_mult"] == [1] and cfg["num_res_blocks"] == [1]
    assert comfy_result["clip"] == "SD1ClipModel" and comfy_result["cond_shape"] == [1, 77, 768]
    assert comfy_result["vae"] == "TAESD"
    assert comfy_result["vae_scale"] == pytest.approx(SD15_LATENT_SCALE)


@pytest.mark.comfyui
@pytest.mark.slow
def test_comfyui_loads_every_key(comfy_result: dict) -> None:
    assert comfy_result["unet_key_diff"] == []
    assert comfy_result["vae_key_diff"] == []
    bad = (
        "unet missing",
        "unet unexpected",
        "missing vae keys",
        "leftover vae keys",
        "left over keys",
        "clip unexpected",
        "could not detect",
        "not a checkpoint",
    )
    problems = [m for m in comfy_result["messages"] if m.lower().startswith(bad)]
    assert problems == []
    # ComfyUI itself treats these two as expected for SD1 checkpoints (original CLIP-L files lack them)
    clip_missing = [m for m in comfy_result["messages"] if m.startswith("clip missing")]
    assert all("logit_scale" in m or "text_projection" in m for m in clip_missing)
    assert all(len(ast.literal_eval(m.split(":", 1)[1].strip())) <= 2 for m in clip_missing)


@pytest.mark.comfyui
@pytest.mark.slow
def test_key_mapping_agrees_with_comfyui(comfy_result: dict) -> None:
    """Our diffusers -> LDM renaming equals ComfyUI's unet_to_diffusers map, key by key, for the tiny UNet
    and for the full SD1.5 UNet."""
    cases = [
        (meta_unet_keys(**SD15_UNET_CONFIG), 1, {0}, comfy_result["map_detected"]),
        (meta_unet_keys(**SD15_FULL_UNET), 2, {1, 2, 3}, comfy_result["map_sd15"]),
    ]
    for keys, layers, with_attention, theirs in cases:
        ours = {k: diffusers_unet_key_to_ldm(k, layers, with_attention) for k in keys}
        assert {k: v for k, v in ours.items() if theirs.get(k) != v} == {}


@pytest.mark.comfyui
@pytest.mark.slow
def test_comfyui_decodes_and_denoises(comfy_result: dict, sd15_path: Path) -> None:
    tensors = comfy_result["tensors"]
    image, eps = tensors["image"], tensors["eps"]
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()
    assert eps.shape == (1, 4, 8, 8) and torch.isfinite(eps).all()
    # our own TAESD module with the file's weights decodes to the same pixels as ComfyUI's
    vae = tiny_autoencoder()
    weights = {
        k.removeprefix("first_stage_model."): v.float()
        for k, v in load_file(str(sd15_path)).items()
        if k.startswith("first_stage_model.taesd_")
    }
    vae.load_state_dict(weights)
    with torch.no_grad():
        ours = vae["taesd_decoder"](tensors["latent"] * SD15_LATENT_SCALE).clamp(0, 1).movedim(1, -1)
    assert torch.allclose(ours, image, atol=1e-4)
    assert 0.3 < image.mean() < 0.7 and image.std() > 0.05  # mid-grey noise, not a blank image


# ----- the diffusers pipeline ----------------------------------------------------------------------------------


def test_pipeline_renders(pipeline_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        pipe = StableDiffusionPipeline.from_pretrained(pipeline_path)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.safety_checker is None
    out = pipe(
        "a photo of a cat",
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    assert out.images.shape == (1, 64, 64, 3)
    assert torch.isfinite(torch.from_numpy(out.images)).all()


def _check_ids(tokenizer: object) -> None:
    reference = open_clip.tokenize(SENTENCES)
    ids = torch.tensor(tokenizer(SENTENCES, padding="max_length", max_length=77, truncation=True).input_ids)
    for row, ref in zip(ids, reference, strict=True):
        end = int(ref.argmax()) + 1
        assert row[:end].tolist() == ref[:end].tolist()
        assert (row[end:] == 49407).all()  # SD pads with <|endoftext|>, open_clip with 0


def test_pipeline_tokenizer_ids_equal_open_clip(pipeline_path: Path, tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(pipeline_path / "tokenizer")
    assert tokenizer.model_max_length == 77
    _check_ids(tokenizer)
    # the plain vocab.json + merges.txt (what transformers 4.x reads) give the same ids
    vocab, merges = pipeline_path / "tokenizer" / "vocab.json", pipeline_path / "tokenizer" / "merges.txt"
    _check_ids(CLIPTokenizer(vocab=str(vocab), merges=str(merges)))


def test_tokenizer_files_are_the_standard_clip_files() -> None:
    vocab, merges = clip_vocab(), clip_merges()
    assert len(vocab) == 49408 and len(merges) == 48894
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    comfy = comfyui_dir()
    if comfy is not None:  # ComfyUI ships the same files as comfy/sd1_tokenizer
        folder = comfy / "comfy" / "sd1_tokenizer"
        assert json.loads((folder / "vocab.json").read_text(encoding="utf-8")) == vocab
        lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
        assert [tuple(line.split()) for line in lines] == merges


def test_pipeline_build_is_deterministic_and_replaces_atomically(pipeline_path: Path, tmp_path: Path) -> None:
    target = tmp_path / "pipe"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    build_tiny_pipeline(target, seed=0)
    assert not (target / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]
    name = "unet/diffusion_pytorch_model.safetensors"
    a, b = load_file(str(pipeline_path / name)), load_file(str(target / name))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    build_tiny_pipeline(target, seed=1)
    c = load_file(str(target / name))
    assert not torch.equal(a["conv_in.weight"], c["conv_in.weight"])


# ----- command line, hygiene -----------------------------------------------------------------------------------


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "vlm.safetensors"
    assert main(["vlm", str(out), "--seed", "2"]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out
    assert main(["vlm", str(tmp_path / "absent" / "x.safetensors")]) == 1
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bogus", str(out)])


@pytest.mark.parametrize(
    "module", ["testing/tiny.py", "prompt_modules/core/vlm.py", "prompt_modules/core/tokenizer_files.py"]
)
def test_no_comfyui_imports(module: str) -> None:
    tree = ast.parse((REPO / module).read_text(encoding="utf-8"))
    names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0]
    comfy_owned = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes", "execution", "server", "utils"}
    assert not [n for n in names if n.split(".")[0] in comfy_owned]
