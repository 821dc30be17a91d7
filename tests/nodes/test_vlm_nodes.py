"""PWLoadVLM in real ComfyUI (in-process): any CLIP from ComfyUI's model folders becomes PromptWeave's VLM."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from promptweave.headless import PACK_DIR

pytestmark = pytest.mark.comfyui
NODE = "PWLoadVLM"
DEFAULTS = {"clip_vision_name": "none", "open_clip_model": "", "activation": "auto", "clip_tower": "auto"}


@pytest.fixture(scope="module")
def tiny_clip_folder(comfy_base):
    """The tiny random-weight transformers CLIP folder the default models put in models/vlm
    (``testing.tiny.build_tiny_clip_folder``), with transformers' own model of it as the reference."""
    from transformers import CLIPModel

    from promptweave.testing.defaults import DEMO_CLIP_NAME

    folder = comfy_base / "models" / "vlm" / DEMO_CLIP_NAME
    return SimpleNamespace(folder=folder, model=CLIPModel.from_pretrained(folder).eval(), name=f"vlm/{DEMO_CLIP_NAME}")


def _load(comfy, **inputs):
    with torch.inference_mode():
        return comfy.nodes.NODE_CLASS_MAPPINGS[NODE].execute(**{**DEFAULTS, **inputs})[0]


def test_node_is_registered_with_docs_and_lists_the_vlm_folder(comfy, tiny_clip_folder):
    assert NODE in comfy.pack_node_ids()
    assert (PACK_DIR / "web" / "docs" / f"{NODE}.md").is_file()
    info = comfy.node_info(NODE)
    assert info["category"] == "PromptWeave/models" and info["output"] == ["PW_VLM"]
    assert tiny_clip_folder.name in info["input"]["required"]["clip_name"][1]["options"]


def test_a_transformers_clip_folder_loads_equal_to_transformers(comfy, tiny_clip_folder):
    vlm = _load(comfy, clip_name=tiny_clip_folder.name)
    config = tiny_clip_folder.model.config
    assert vlm.image_size == config.vision_config.image_size and vlm.embed_dim == config.projection_dim
    library = comfy.pack_module("prompt_modules.core.vlm").load_vlm(tiny_clip_folder.folder)
    assert vlm.name == library.name  # the fingerprinted name is the same whoever loads the weights
    texts = ["a red star", "a blue square"]
    with torch.no_grad():
        ours = vlm.encode_text(texts)
        tokens = vlm.tokenize(texts)
        reference = tiny_clip_folder.model.get_text_features(input_ids=tokens)
        reference = getattr(reference, "text_embeds", getattr(reference, "pooler_output", reference))
        reference = torch.nn.functional.normalize(reference, dim=-1)
    assert torch.nn.functional.cosine_similarity(ours, reference).min() > 0.9999


def test_the_loaded_vlm_drives_a_capability(comfy, tiny_clip_folder):
    """Rank Images (DCAR's retrieval) runs on the loaded CLIP: a VLM from any CLIP is a VLM for every node."""
    vlm = _load(comfy, clip_name=tiny_clip_folder.name)
    images = torch.rand(3, 40, 40, 3)
    with torch.inference_mode():
        out = comfy.nodes.NODE_CLASS_MAPPINGS["PWRankImages"].execute(vlm=vlm, images=images, text="a red star",
                                                                      top_k=2)
    assert out[0].shape == (2, 40, 40, 3)


def test_bad_choices_name_the_input(comfy, tiny_clip_folder):
    errors = comfy.pack_module("nodes._common")
    with pytest.raises(errors.NodeInputError, match="input 'clip_name'.*no CLIP is chosen"):
        _load(comfy, clip_name="none")
    with pytest.raises(errors.NodeInputError, match="input 'clip_name'.*not found"):
        _load(comfy, clip_name="vlm/absent-model")


def test_an_untrained_text_projection_is_refused_with_the_file_to_use(comfy, tiny_sd15_path):
    """SD1.5 checkpoints carry CLIP-L's text tower without a projection, and ComfyUI keeps the projection as it
    allocated it: zeros are refused (arbitrary leftover memory cannot be told from trained weights; see the docs)."""
    import importlib

    comfy_sd = importlib.import_module("comfy.sd")  # (the fixture named comfy is the headless ComfyUI)
    _, clip, _, _ = comfy_sd.load_checkpoint_guess_config(str(tiny_sd15_path), output_vae=False, output_clip=True)
    with torch.no_grad():
        clip.cond_stage_model.clip_l.transformer.text_projection.weight.zero_()
    errors = comfy.pack_module("nodes._common")
    with pytest.raises(errors.NodeInputError, match="input 'clip'.*no trained text projection.*clip_l.safetensors"):
        _load(comfy, clip_name="none", clip=clip)


def _run(comfy, node_id: str, **inputs):
    """Execute a node with ``inputs`` and every other widget at its default, as the frontend sends them."""
    info = comfy.node_info(node_id)
    args = {}
    for group in ("required", "optional"):
        for name, spec in info["input"].get(group, {}).items():
            if name not in inputs and len(spec) > 1 and "default" in spec[1]:
                args[name] = spec[1]["default"]
    args.update(inputs)
    with torch.inference_mode():  # ComfyUI runs every node under inference mode
        return comfy.nodes.NODE_CLASS_MAPPINGS[node_id].execute(**args)


def _pairs():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(4, 48, 48, 3, generator=generator)
    masks = torch.zeros(4, 48, 48)
    masks[:, 12:36, 12:36] = 1
    return images, masks, "a red star\na blue star\na red square\na blue square"


def test_every_capability_trains_and_runs_on_a_loaded_clip(comfy, tiny_clip_folder, tiny_sd15_path):
    """Inversion, Diff-Prompt, RPP and IPL's judge on a CLIP from models/vlm (DCAR: the test above and the
    any_clip workflow): the loaded CLIP is a VLM like WorldCLIP for every node, at its own resolution (32 px)."""
    vlm = _load(comfy, clip_name=tiny_clip_folder.name)
    images, masks, prompts = _pairs()

    inverter, _, _ = _run(comfy, "PWTrainPromptInverter", backbone="vlm", filename="pw-test-vlm-inverter",
                          images=images, prompts=prompts, vlm=vlm, vocab_size=8, epochs=1, batch_size=4,
                          hidden_width=16)
    assert inverter.backbone == f"vlm:{vlm.name}"
    inverted = _run(comfy, "PWPromptInversion", image=images[:1], inverter=inverter, vlm=vlm)
    assert isinstance(inverted[0], str) and inverted[0]

    model, bundle_path, _ = _run(comfy, "PWTrainDiffPrompt", vlm=vlm, stage="all", source="inputs", steps=1,
                                 batch_size=2, bundle_name="pw-test-vlm-diff", images=images, masks=masks,
                                 expressions=prompts)
    assert model.backbone == vlm.name
    mask = _run(comfy, "PWDiffPromptGround", vlm=vlm, diff_prompt=model, image=images[:1], text="the red star")[0]
    assert mask.shape[-2:] == (48, 48)

    bundle, _, summary = _run(comfy, "PWPretrainPrompts", vlm=vlm, source="world", steps=1, batch_size=2,
                              n_text=2, n_visual=2, depth=1, classes_per_step=4, save_name="")
    assert bundle.backbone == vlm.name and vlm.name in summary

    import importlib

    comfy_sd = importlib.import_module("comfy.sd")  # (the fixture named comfy is the headless ComfyUI)
    sd_model, clip, vae, _ = comfy_sd.load_checkpoint_guess_config(str(tiny_sd15_path), output_vae=True,
                                                                   output_clip=True)
    mapper = _run(comfy, "PWTrainLatentMapper", model=sd_model, clip=clip, vae=vae, vlm=vlm, steps=1,
                  batch_size=2, n_ctx=2, width=64, height=64, sample_steps=1, save_name="")[0]
    assert mapper.backbone == vlm.name  # the loaded CLIP judged the adaptation


def test_comfyui_clip_vision_loader_and_a_clip_l_file_give_the_library_vit_l(comfy, comfy_base):
    """The "use your own CLIP" workflows' route at real shapes: ComfyUI's own Load CLIP Vision recognises the
    24-layer ViT-L/14 file of the default models, and PWLoadVLM pairs its CLIP_VISION with the clip_l-layout text
    encoder into the VLM the library loads from the same two files (same fingerprint, same image features)."""
    from promptweave.testing.defaults import DEMO_CLIP_L_TEXT_NAME, DEMO_CLIP_L_VISION_NAME

    models = comfy_base / "models"
    with torch.inference_mode():
        clip_vision = comfy.nodes.NODE_CLASS_MAPPINGS["CLIPVisionLoader"]().load_clip(DEMO_CLIP_L_VISION_NAME)[0]
    vlm = _load(comfy, clip_name=DEMO_CLIP_L_TEXT_NAME, clip_vision=clip_vision)
    library = comfy.pack_module("prompt_modules.core.vlm").load_vlm(
        models / "text_encoders" / DEMO_CLIP_L_TEXT_NAME, vision=models / "clip_vision" / DEMO_CLIP_L_VISION_NAME
    )
    assert vlm.name == library.name and vlm.name.startswith("clip:ViT-L-14-quickgelu:")
    assert vlm.image_size == 224 and len(vlm.visual.transformer.resblocks) == 24 and vlm.embed_dim == 768
    images = torch.rand(1, 3, 96, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, reference = vlm.encode_image(images), library.encode_image(images)
        comfy_embeds = clip_vision.encode_image(images.permute(0, 2, 3, 1))["image_embeds"].float()
    assert torch.nn.functional.cosine_similarity(ours, reference).min() > 0.9999
    # ComfyUI's own tower on the same image (its own resize and crop): the same model, not just the same shapes
    comfy_embeds = torch.nn.functional.normalize(comfy_embeds, dim=-1)
    assert torch.nn.functional.cosine_similarity(ours, comfy_embeds).min() > 0.99
