"""Property-based tests (hypothesis): every node's ``execute`` driven with random and hostile inputs.

Every node of every ``NODES`` list is called, in the real ComfyUI (in-process) and under inference mode as
ComfyUI runs it, with a valid baseline of tiny models in which one or two inputs are replaced by random or
hostile values: odd shapes, dtypes, NaN/inf, empty batches, huge sizes, out-of-range numbers, unknown combo
values, NUL bytes, lone surrogates (undecodable text), objects of the wrong custom type, ``None``.

The property: the node returns an output valid for its schema (right kinds, finite tensors), or raises a
``ValueError`` whose message names the node and one of its inputs (``NodeInputError``'s "<node>: input
'<name>': ..."). Any other exception (a torch ``RuntimeError``, ``IndexError``, ``TypeError``, ...) fails.

Inputs are found from each node's own schema, so a new node is covered automatically; a node with an input
type that has no strategy here fails :func:`test_every_input_type_has_a_strategy`. Numbers that set the
amount of work (steps, batch sizes, image sizes) are drawn in range only up to a small cap (``CHEAP``);
beyond the range they are drawn freely.

Profiles: ``ci`` (default; derandomised, so CI tests the same examples every run, no shrinking, failing
examples printed as reproduction blobs) and ``dev`` (random, shrinking, ten times the examples), chosen with
``HYPOTHESIS_PROFILE=dev``; ``PW_PROPERTY_SCALE=N`` multiplies the number of examples.
"""

from __future__ import annotations

import os
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, example, given, note, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from promptweave.headless import PACK_DIR
from promptweave.testing.caption_demo import write_caption_demo_folder
from promptweave.testing.defaults import DEFAULT_PROMPT_NAME, TINY_SD15_NAME

pytestmark = pytest.mark.comfyui

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=list(HealthCheck),
)
settings.register_profile("dev", deadline=None, print_blob=True, suppress_health_check=list(HealthCheck))
set_hypothesis_home_dir(str(PACK_DIR / ".cache" / "hypothesis"))  # its caches (and dev's examples): git-ignored
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
SCALE = int(os.environ.get("PW_PROPERTY_SCALE", 10 if PROFILE == "dev" else 1))  # examples x this

# every node id in the pack's sources, found without importing ComfyUI (for the test parameters)
NODE_IDS = sorted(
    {m for path in (PACK_DIR / "nodes").glob("nodes_*.py") for m in re.findall(r'node_id="(\w+)"', path.read_text())}
)
TRAINING = {
    "PWTrainDualPrompt",
    "PWTrainPromptInverter",
    "PWTrainLatentMapper",
    "PWAdaptModel",
    "PWTrainDiffPrompt",
    "PWPretrainPrompts",
}
EXAMPLES = {node_id: (6 if node_id in TRAINING else 20) for node_id in NODE_IDS}
EXAMPLES.update({"PWAdaptModel": 4, "PWTrainLatentMapper": 4, "PWWorldGenSample": 12})

# in-range values of inputs that set the amount of work are drawn from [min, cap]
CHEAP = {
    "steps": 2,
    "epochs": 1,
    "mapper_steps": 1,
    "batch_size": 4,
    "sample_steps": 1,
    "ddim_steps": 2,
    "width": 72,
    "height": 72,
    "hidden_width": 16,
    "vocab_size": 30,
    "classes_per_step": 8,
    "n_text": 4,
    "n_visual": 4,
    "n_ctx": 4,
    "depth": 2,
    "rank": 2,
    "top_k": 6,
    "adaptive_layers": 4,
}
NAN, INF = float("nan"), float("inf")


# ----- hostile values per input type ---------------------------------------------------------------------------
def _filled(shape, value=0.5, dtype=torch.float32) -> torch.Tensor:
    return torch.full(shape, value, dtype=dtype)


def _huge(shape) -> torch.Tensor:
    """A zero-stride view of an absurd size (no memory behind it): copying it must never be attempted."""
    return torch.zeros((1,) * len(shape)).expand(*shape)


def _hostile_images(mask: bool = False):
    """IMAGE ``[B, H, W, C]`` (or MASK ``[B, H, W]``) values of every kind of wrong."""

    def img(b, h, w, c=3, value=0.5, dtype=torch.float32):
        return _filled((b, h, w) if mask else (b, h, w, c), value, dtype)

    def with_nan(value):
        t = torch.rand((2, 16, 16) if mask else (2, 16, 16, 3))
        t[0, 3, 5] = value
        return t

    wrong_rank = [_filled((16, 16, 3)), _filled((1, 1, 16, 16, 3)), _filled(()), _filled((16,))]
    if mask:
        wrong_rank = [_filled((1, 16, 16, 1)), _filled((16,)), _filled(()), _filled((1, 1, 16, 16))]
    fixed = [
        None,
        "image",
        3,
        [[0.5]],
        np.zeros((1, 16, 16) if mask else (1, 16, 16, 3), dtype=np.float32),
        *wrong_rank,
        img(0, 16, 16),
        img(1, 0, 16),
        img(1, 16, 0),
        img(1, 16, 16, dtype=torch.uint8, value=255),
        img(1, 16, 16, dtype=torch.bool, value=1),
        img(1, 16, 16, dtype=torch.int64, value=1),
        img(1, 16, 16, dtype=torch.float16),
        img(1, 16, 16, dtype=torch.float64),
        img(1, 16, 16, dtype=torch.bfloat16),
        img(1, 16, 16, dtype=torch.complex64),
        with_nan(NAN),
        with_nan(INF),
        with_nan(-INF),
        img(1, 16, 16, value=1e30),
        img(1, 16, 16, value=-5.0),
        img(1, 1, 1),
        img(1, 2, 3),
        img(3, 7, 13),
        img(1, 640, 480),
        torch.rand(2, 3, 16, 16)[:, 0] if mask else torch.rand(2, 3, 16, 16).permute(0, 2, 3, 1),  # strided view
        torch.empty((1, 16, 16) if mask else (1, 16, 16, 3), device="meta"),
        torch.zeros((1, 16, 16) if mask else (1, 16, 16, 3)).to_sparse(),
        _huge((1, 100_000, 100_000) if mask else (1, 100_000, 100_000, 3)),
        _huge((100_000, 512, 512) if mask else (100_000, 512, 512, 3)),
    ]
    if not mask:
        fixed += [img(1, 16, 16, 1), img(1, 16, 16, 2), img(1, 16, 16, 4), img(1, 16, 16, 5), img(1, 16, 16, 0)]
    random_shapes = st.tuples(st.integers(0, 3), st.integers(0, 40), st.integers(0, 40), st.integers(0, 5)).map(
        lambda s: torch.rand(s[:3] if mask else s)
    )
    return st.one_of(st.sampled_from(fixed), random_shapes)


BAD_TEXTS = [
    "",
    "   ",
    "\n\n\t",
    "\x00",
    "a\x00b",
    "\ud800",  # lone surrogate: cannot be encoded as UTF-8
    "caf\udce9 \udcff\udcfe",  # undecodable bytes as os.fsdecode keeps them (surrogateescape)
    "\u202e\u200b\ufeff",
    "🐱" * 50,
    "<pw>" * 300,
    "x" * 100_000,
    "a red star\n" * 500,
    "a\n" * 5000,  # a batch of 5,000
    "../../../../etc/passwd",
    "/etc/passwd",
    "C:\\Windows\\system32\\con",
    "CON",
    "nul.txt",
    "~",
    ".",
    "..",
    "a/../../b",
]
WRONG_SCALARS = [None, b"\xff\xfe", ["a"], {"a": 1}, object()]


def string_values(spec):
    return st.one_of(st.sampled_from(BAD_TEXTS + WRONG_SCALARS + [0, 1.5]), st.text(max_size=40))


def int_values(spec):
    lo = spec.min if spec.min is not None else -(2**63)
    hi = spec.max if spec.max is not None else 2**63 - 1
    cap = min(hi, lo + CHEAP[spec.id]) if spec.id in CHEAP else hi
    hostile = [lo - 1, hi + 1, -1, 2**31, 2**63, -(2**63), 10**400, True, 1.5, NAN, INF, "3", None, np.int64(-7)]
    return st.one_of(st.integers(lo, cap), st.sampled_from(hostile))


def float_values(spec):
    lo = spec.min if spec.min is not None else -1e30
    hi = spec.max if spec.max is not None else 1e30
    hostile = [NAN, INF, -INF, lo - 1, hi + 1, 1e308, -0.0, 10**400, np.float32("nan"), None, "0.5", True]
    return st.one_of(st.floats(lo, hi, allow_nan=False), st.sampled_from(hostile))


def bool_values(spec):
    return st.sampled_from([True, False, None, "false", 0, 2, NAN, "yes"])


def combo_values(ctx):
    def values(spec):
        options = [o for o in (spec.options or []) if isinstance(o, str)]
        return st.one_of(
            st.sampled_from(options or ["x"]),
            st.sampled_from(ctx.model_file_names + BAD_TEXTS + WRONG_SCALARS + ["missing.safetensors", "ALL", 0]),
            st.text(max_size=20),
        )

    return values


def object_values(ctx, io_type):
    """A custom or model type: every other kind of object the graph can carry, junk, and objects of the right
    type that do not fit the rest of the baseline (another VLM, a prompt of another width, ...)."""

    def values(spec):
        others = [obj for kind, obj in ctx.objects.items() if kind != io_type]
        junk = [None, "vlm", 0, torch.zeros(2, 3), object(), SimpleNamespace(name="tiny", token_width=64)]
        return st.sampled_from(others + junk + ctx.variants.get(io_type, []))

    return values


def worst_value(spec):
    """The one value of each type tried in every input on every run (explicit examples, whatever the seed)."""
    kind = _io_type(spec)
    if kind in ("IMAGE", "MASK"):
        return _huge((100_000, 512, 512) if kind == "MASK" else (100_000, 512, 512, 3))
    worst = {"STRING": "<pw>" * 300, "COMBO": "../" * 90 + "x", "INT": 2**63, "FLOAT": NAN, "BOOLEAN": "false"}
    return worst.get(kind)  # models and custom types: None


def value_strategies(ctx) -> dict:
    strategies = {
        "IMAGE": lambda spec: _hostile_images(),
        "MASK": lambda spec: _hostile_images(mask=True),
        "STRING": string_values,
        "INT": int_values,
        "FLOAT": float_values,
        "BOOLEAN": bool_values,
        "COMBO": combo_values(ctx),
    }
    for io_type in ctx.objects:
        strategies[io_type] = object_values(ctx, io_type)
    return strategies


# ----- the tiny world every node runs in ---------------------------------------------------------------------------
def _node(comfy, node_id):
    return comfy.nodes.NODE_CLASS_MAPPINGS[node_id]


def _world_images(n: int = 4) -> tuple[torch.Tensor, list[str]]:
    from promptweave.prompt_modules.world import render_batch

    batch = render_batch([2_000_000_000 + k for k in range(n)])
    return batch["image"].permute(0, 2, 3, 1).contiguous().float(), list(batch["caption"])


def _bow_embedder(texts):
    import hashlib

    out = torch.zeros(len(texts), 384)
    for row, text in enumerate(texts):
        for w in text.lower().split():
            out[row, int(hashlib.md5(w.encode()).hexdigest(), 16) % 384] += 1.0
    return torch.nn.functional.normalize(out + 1e-6, dim=-1)


@pytest.fixture(scope="module")
def ctx(comfy, comfy_base):
    """Tiny models of every kind the nodes consume, their saved files, and a valid baseline per node."""
    torch.set_num_threads(1)
    mod = SimpleNamespace(
        nodes=comfy.pack_module("nodes"),
        vlm=comfy.pack_module("prompt_modules.core.vlm"),
        dp=comfy.pack_module("prompt_modules.dual_prompt"),
        diff=comfy.pack_module("prompt_modules.diff_prompt"),
        lp=comfy.pack_module("prompt_modules.core.learned_prompt"),
        ipl=comfy.pack_module("prompt_modules.adaptation"),
        pp=comfy.pack_module("prompt_modules.pretraining"),
        ws=comfy.pack_module("prompt_modules.world.sources"),
    )
    folder = comfy_base / "models" / "promptweave"
    images, captions = _world_images(4)
    masks = (images[..., 0] > 0.5).float()
    vlm = mod.vlm.VisionLanguageModel("tiny", seed=0)
    dcfg = mod.dp.DualPromptConfig(n_text=2, n_visual=2, text_depth=2, visual_depth=2, bank_size=8)
    dual = mod.dp.train_dual_prompt(
        vlm, mod.ws.WorldSource(config=dcfg), dcfg, steps=1, batch_size=2, progress=False, bank_batches=1
    ).dual
    mod.dp.save_dual_prompt(dual, folder / "pw-prop-dual.safetensors")
    src = mod.diff.TensorGroundingSource(images.permute(0, 3, 1, 2), masks, captions)
    vae_cfg = mod.diff.MaskVAEConfig(mask_size=32, block_out_channels=(8, 16, 16))
    dvae = mod.diff.train_mask_vae(src, vae_cfg, steps=1, batch_size=2, progress=False).model
    dit_cfg = mod.diff.DiTConfig(hidden=32, depth=1, heads=2)
    dit = mod.diff.train_dit(vlm, dvae, src, dit_cfg, steps=1, batch_size=2, progress=False).model
    pcfg = mod.diff.PromptConfig(ddim_steps=2, adapter_channels=4, adapter_features=16, head_hidden=16)
    diff = mod.diff.train_prompts(vlm, dvae, dit, src, pcfg, steps=1, batch_size=2, progress=False).model.eval()
    mod.diff.save_bundle(folder / "pw-prop-diff.safetensors", model=diff)
    latent = mod.ipl.LatentMapper(latent_dim=4 * 8 * 8, token_width=vlm.token_width, n_ctx=2, hidden=16, layers=1)
    mapper = mod.ipl.TrainedMapper(latent, vlm.name, "test", {})
    mod.ipl.save_mapper(mapper, folder / "pw-prop-mapper.safetensors")
    with torch.inference_mode():  # what the loader nodes make, made as ComfyUI runs them
        model, clip, vae = _node(comfy, "CheckpointLoaderSimple")().load_checkpoint(TINY_SD15_NAME)
        worldclip, worldgen = _node(comfy, "PWLoadWorldModels").execute()
        learned = _node(comfy, "PWLoadLearnedPrompt").execute(prompt_name=DEFAULT_PROMPT_NAME)[0]
        inverter = _node(comfy, "PWLoadPromptInverter").execute(inverter_name="inverter-pixels-world.safetensors")[0]
        rpp = _node(comfy, "PWPretrainPrompts").execute(
            vlm=vlm,
            source="world",
            path="",
            steps=1,
            batch_size=2,
            learning_rate=0.002,
            seed=0,
            n_text=2,
            n_visual=2,
            depth=1,
            qkv_prompts="unshared",
            soft_label_weight=1.0,
            temperature=1.0,
            classes_per_step=8,
            save_name="pw-prop-rpp",
        )[0]
    other_vlm = mod.vlm.VisionLanguageModel(mod.vlm.VLMConfig(name="other"), seed=1)
    variants = {  # the right type, but not fitting the rest of the baseline
        "PW_VLM": [other_vlm],
        "PW_LEARNED_PROMPT": [
            mod.lp.LearnedPrompt(mod.lp.LearnedPromptConfig(n_ctx=2, widths={"clip_l": 1024}, backbone="sd2"))
        ],
        "PW_DUAL_PROMPT": [
            mod.dp.DualPrompt.for_vlm(vlm, mod.dp.DualPromptConfig(n_text=0, n_visual=2, coupling=False)),  # no text
            mod.dp.DualPrompt.for_vlm(vlm, dcfg),  # untrained: no vocabulary projection
        ],
        "PW_LATENT_MAPPER": [
            mod.ipl.TrainedMapper(mod.ipl.LatentMapper(4 * 16 * 16, vlm.token_width, 2, 16, 1), vlm.name, "test", {}),
            mod.ipl.TrainedMapper(mod.ipl.LatentMapper(256, 32, 2, 16, 1), "other", "test", {}),
        ],
    }
    objects = {
        "MODEL": model,
        "CLIP": clip,
        "VAE": vae,
        "CLIP_VISION": SimpleNamespace(encode_image=None),  # no CLIP vision model exists here: junk only
        "PW_VLM": vlm,
        "PW_WORLDGEN": worldgen,
        "PW_LEARNED_PROMPT": learned,
        "PW_DUAL_PROMPT": dual,
        "PW_PROMPT_INVERTER": inverter,
        "PW_PROMPT_EMBEDDING": torch.nn.functional.normalize(torch.randn(2, 384), dim=-1),
        "PW_LATENT_MAPPER": mapper,
        "PW_DIFF_PROMPT": diff,
        "PW_PRETRAINED_PROMPTS": rpp,
    }
    three = images[:3]
    pairs = "\n".join(captions)
    captions_folder = comfy_base / "input" / "pw-prop-captions"  # Caption Folder writes only inside input/
    write_caption_demo_folder(captions_folder)
    baselines = {
        "PWLoadLearnedPrompt": dict(prompt_name=DEFAULT_PROMPT_NAME),
        "PWApplyLearnedPrompt": dict(clip=clip, learned_prompt=learned),
        "PWWorldGenSample": dict(worldgen=worldgen, worldclip=worldclip, steps=1),
        "PWLoadPromptInverter": dict(inverter_name="inverter-pixels-world.safetensors"),
        "PWPromptInversion": dict(image=three, inverter=inverter, clip=clip),
        "PWCaptionFolder": dict(folder=captions_folder.name, inverter=inverter, batch_size=4),
        "PWTrainPromptInverter": dict(
            backbone="pixels",
            filename="pw-prop-inverter",
            dataset_folder="",
            images=images,
            prompts=pairs,
            vocab_size=30,
            epochs=1,
            batch_size=4,
            hidden_width=16,
            checkpoint_every=200,
        ),
        "PWTrainLatentMapper": dict(
            model=model,
            clip=clip,
            vae=vae,
            vlm=vlm,
            steps=1,
            batch_size=2,
            n_ctx=2,
            width=64,
            height=64,
            sample_steps=1,
            save_name="",
        ),
        "PWLoadLatentMapper": dict(mapper_name="pw-prop-mapper.safetensors"),
        "PWApplyWorldGenLoRA": dict(worldgen=worldgen, lora_name="ipl-sketch-worldgen-lora.safetensors"),
        "PWAdaptModel": dict(
            model=model,
            clip=clip,
            vae=vae,
            vlm=vlm,
            method="nada",
            steps=1,
            rank=2,
            lora_name="pw-prop-lora",
            mapper_steps=1,
            batch_size=1,
            width=64,
            height=64,
            sample_steps=1,
        ),
        "PWLoadDualPrompt": dict(prompt_name="pw-prop-dual.safetensors"),
        "PWTrainDualPrompt": dict(vlm=vlm, steps=1, batch_size=2, n_text=2, n_visual=2, depth=1, save_name=""),
        "PWRankImages": dict(vlm=vlm, images=three, dual_prompt=dual, top_k=2),
        "PWRankTexts": dict(vlm=vlm, images=three, dual_prompt=dual),
        "PWDualPromptConditioning": dict(clip=clip, dual_prompt=dual),
        "PWLoadDiffPrompt": dict(bundle_name="pw-prop-diff.safetensors"),
        "PWDiffPromptGround": dict(vlm=vlm, diff_prompt=diff, image=three),
        "PWDiffPromptConditioning": dict(clip=clip, vlm=vlm, diff_prompt=diff, image=three),
        "PWTrainDiffPrompt": dict(
            vlm=vlm,
            stage="vae",
            source="inputs",
            steps=1,
            batch_size=2,
            bundle_name="pw-prop-diff-train",
            images=images,
            masks=(images[..., 0] > 0.5).float(),
            expressions=pairs,
        ),
        "PWPretrainPrompts": dict(
            vlm=vlm,
            steps=1,
            batch_size=2,
            n_text=2,
            n_visual=2,
            depth=1,
            classes_per_step=8,
            save_name="",
        ),
        "PWLoadPretrainedPrompts": dict(prompt_name="pw-prop-rpp.safetensors"),
        "PWLoadVLM": dict(clip_name="vlm/pw-demo-clip"),  # the random CLIP folder install_default_models puts there
    }
    model_file_names = sorted(p.name for p in folder.glob("*.safetensors"))
    classes = {cls.define_schema().node_id: cls for module in mod.nodes.NODE_MODULES for cls in module.NODES}
    result = SimpleNamespace(
        comfy=comfy,
        mod=mod,
        objects=objects,
        variants=variants,
        baselines=baselines,
        model_file_names=model_file_names,
        classes=classes,
        schemas={node_id: cls.GET_SCHEMA() for node_id, cls in classes.items()},
    )
    result.strategies = value_strategies(result)
    with pytest.MonkeyPatch.context() as patch:  # MiniLM is tested by the library tests; a stand-in here
        patch.setattr(comfy.pack_module("prompt_modules.inversion.targets"), "_DEFAULT", _bow_embedder)
        yield result


def _node_classes(ctx) -> dict:
    return ctx.classes


def _schema(ctx, node_id):
    return ctx.schemas[node_id]


def _io_type(spec) -> str:
    return str(spec.get_io_type())


def _baseline(ctx, node_id: str) -> dict:
    """Every input of the node: its default, the cheapest in-range number, or a tiny model; then overrides."""
    values = {}
    for spec in _schema(ctx, node_id).inputs:
        kind = _io_type(spec)
        if kind in ("INT", "FLOAT"):
            value = spec.default if spec.default is not None else spec.min
            if spec.id in CHEAP and spec.min is not None:
                value = min(value, spec.min + CHEAP[spec.id])
            values[spec.id] = value
        elif kind in ("STRING", "BOOLEAN"):
            values[spec.id] = spec.default if spec.default is not None else ""
        elif kind == "COMBO":
            values[spec.id] = spec.default if spec.default is not None else (spec.options or [""])[0]
        elif not spec.optional and kind in ctx.objects:
            values[spec.id] = ctx.objects[kind]
    values.update(ctx.baselines.get(node_id, {}))
    return values


# ----- the property ------------------------------------------------------------------------------------------------
def _check_output(schema, output) -> None:
    args = output.args if hasattr(output, "args") else tuple(output)
    assert len(args) == len(schema.outputs), f"{len(args)} outputs for {len(schema.outputs)} declared"
    for spec, value in zip(schema.outputs, args, strict=True):
        kind = _io_type(spec)
        if kind in ("IMAGE", "MASK"):
            assert isinstance(value, torch.Tensor) and value.ndim == (4 if kind == "IMAGE" else 3), kind
            assert value.dtype.is_floating_point and value.numel() > 0 and torch.isfinite(value).all(), kind
            if kind == "IMAGE":  # RGB, or RGBA (and float16 ...) where a node passes the images it got through
                assert value.shape[-1] in (3, 4), value.shape
        elif kind == "STRING":
            assert isinstance(value, str)
            value.encode("utf-8")  # the UI and the JSON history must be able to carry it
        elif kind == "INT":
            assert isinstance(value, int)
        elif kind == "CONDITIONING" and value is not None:
            assert isinstance(value, list) and value and torch.isfinite(value[0][0]).all()
        elif kind == "PW_PROMPT_EMBEDDING":
            assert isinstance(value, torch.Tensor) and torch.isfinite(value).all()


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)} {value.dtype} stride={value.stride()}"
    text = repr(value)
    return text if len(text) < 120 else text[:117] + "..."


def run_node(ctx, node_id: str, kwargs: dict, hostile: set[str]) -> None:
    """Call the node; pass on a valid output, or on a ValueError that names the node and one of its inputs.

    The input named need not be a hostile one: a valid value can clash with another input (an RGB image with a
    mask of another size, backbone 'vlm' with no VLM connected), and the message then names the other side.
    """
    cls = _node_classes(ctx)[node_id]
    schema = _schema(ctx, node_id)
    inputs = {spec.id for spec in schema.inputs} | {"(none)"}
    try:
        with torch.inference_mode():  # as ComfyUI's executor runs every node
            output = cls.execute(**kwargs)
    except ValueError as exc:
        message = str(exc)
        assert node_id in message or schema.display_name in message, f"the error does not name the node: {message!r}"
        named = set(re.findall(r"input '([^']+)'", message))
        assert named & inputs, f"the error names no input of {node_id} (hostile: {sorted(hostile)}): {message!r}"
        return
    _check_output(schema, output)


def _hostile_kwargs(ctx, node_id: str):
    specs = {spec.id: spec for spec in _schema(ctx, node_id).inputs}

    def values(keys):
        return st.fixed_dictionaries({k: ctx.strategies[_io_type(specs[k])](specs[k]) for k in keys})

    keys = st.lists(st.sampled_from(sorted(specs)), min_size=1, max_size=2, unique=True)
    return keys.flatmap(values)


# ----- tests -------------------------------------------------------------------------------------------------------
def test_every_node_is_covered(ctx):
    assert set(_node_classes(ctx)) == set(NODE_IDS) and NODE_IDS
    assert set(_node_classes(ctx)) <= set(ctx.comfy.pack_node_ids())


def test_every_input_type_has_a_strategy(ctx):
    missing = {
        f"{node_id}.{spec.id}: {_io_type(spec)}"
        for node_id in NODE_IDS
        for spec in _schema(ctx, node_id).inputs
        if _io_type(spec) not in ctx.strategies
    }
    assert not missing, f"no hostile-value strategy for {sorted(missing)}: add one to value_strategies()"


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_baseline_runs(ctx, node_id):
    """The baseline every hostile example starts from is valid: the node returns a valid output for it."""
    cls = _node_classes(ctx)[node_id]
    with torch.inference_mode():
        output = cls.execute(**_baseline(ctx, node_id))
    _check_output(cls.GET_SCHEMA(), output)


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_hostile_inputs(ctx, node_id):
    if not _schema(ctx, node_id).inputs:
        pytest.skip(f"{node_id} has no inputs")
    base = _baseline(ctx, node_id)

    @settings(settings.get_profile(PROFILE), max_examples=EXAMPLES.get(node_id, 10) * SCALE)
    @given(_hostile_kwargs(ctx, node_id))
    def check(overrides):
        note(f"{node_id}: " + ", ".join(f"{k}={_describe(v)}" for k, v in overrides.items()))
        run_node(ctx, node_id, {**base, **overrides}, set(overrides))

    for spec in _schema(ctx, node_id).inputs:  # and, every run, the worst value of its type in each input
        check = example({spec.id: worst_value(spec)})(check)
    check()


def test_the_property_catches_unclear_errors(ctx):
    """The checker itself: a raw torch error, or a ValueError that names no input, is a failure."""
    with pytest.raises(AssertionError, match="does not name the node"):
        with pytest.MonkeyPatch.context() as patch:
            cls = _node_classes(ctx)["PWRankTexts"]
            patch.setattr(cls, "execute", classmethod(lambda c, **kw: (_ for _ in ()).throw(ValueError("bad"))))
            run_node(ctx, "PWRankTexts", {}, {"texts"})
    with pytest.raises(RuntimeError):
        with pytest.MonkeyPatch.context() as patch:
            cls = _node_classes(ctx)["PWRankTexts"]
            patch.setattr(cls, "execute", classmethod(lambda c, **kw: torch.zeros(2) @ torch.zeros(3)))
            run_node(ctx, "PWRankTexts", {}, {"texts"})
