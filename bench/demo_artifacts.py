"""The demo's trained world artifacts, each trained with its benchmark's recipe on the shipped WorldCLIP / WorldGen.

``python -m promptweave.bench.demo_artifacts [--out weights] [--only rpp,dcar,ipl,grounding]`` trains what is
missing in ``--out`` (a finished file is kept, so a rerun resumes after the last finished artifact; each
training run also resumes from its checkpoint in ``--work``, default ``out/demo-artifacts``) and writes each
artifact's command, training time and val figures to ``--work/<name>.json`` (BENCHMARKS.md, "Demo artifacts").

- ``rpp``: RPP prompts, the ``pretraining`` benchmark's recipe (``RPPConfig()``, 300 steps, batch 32, 64 classes
  per step, lr 2e-3, 16 shots, the seen categories), file :data:`RPP_FILE`.
- ``dcar``: a DCAR dual prompt, the ``retrieval`` benchmark's recipe (depth 2, 200 steps, batch 32, lr 3e-3),
  file :data:`DCAR_FILE`.
- ``ipl``: WorldGen's decoder adapted to one unseen style (:data:`IPL_STYLE`) with IPL, the ``adaptation``
  benchmark's recipe (mapper 300 steps batch 32, LoRA 300 steps batch 2, lr 0.005, 2/3 of the layers per step),
  files :data:`IPL_MAPPER_FILE` (latent mapper) and :data:`IPL_LORA_FILE` (native LoRA on WorldGen's decoder).
- ``grounding``: a Diff-Prompt bundle, the ``grounding`` benchmark's recipe at :data:`GROUNDING_SIZES` (a third
  of its steps, so that it trains in about half an hour), file :data:`DIFF_PROMPT_FILE`; its tensors of 1024 or
  more values are stored as float16 (half the size; loaders read them back into float32).

The demo scenes the tests and BENCHMARKS measure these files on are fixed by rule here too (:func:`demo_scenes`,
:func:`ranking_candidates`, :func:`adaptation_captions`), never picked by their result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..headless import PACK_DIR
from ..prompt_modules.core.artifacts import SHIPPED_WEIGHTS_DIR, read_safetensors, save_safetensors_atomic

RPP_FILE = "rpp-world.safetensors"
DCAR_FILE = "dcar-world.safetensors"
DIFF_PROMPT_FILE = "diff-prompt-world.safetensors"
IPL_STYLE = "sketch"
IPL_MAPPER_FILE = f"ipl-{IPL_STYLE}-mapper.safetensors"
IPL_LORA_FILE = f"ipl-{IPL_STYLE}-worldgen-lora.safetensors"
FILES = {
    "rpp": (RPP_FILE,),
    "dcar": (DCAR_FILE,),
    "ipl": (IPL_MAPPER_FILE, IPL_LORA_FILE),
    "grounding": (DIFF_PROMPT_FILE,),
}
#: (vae_steps, dit_steps, prompt_steps, batch_size): the grounding benchmark's full run. Trained on rendered scenes
#: only it grounds the demo scenes well (mean mask IoU 0.555) but WorldGen's generated scenes badly; with half of
#: each batch from generated images (:data:`GROUNDING_GENERATED`) it does both (0.59; BENCHMARKS.md, "Demo artifacts").
GROUNDING_SIZES = (1500, 3000, 1500, 32)
#: The share of each grounding batch taken from the generated pool (``--grounding-generated``) for the shipped bundle.
GROUNDING_GENERATED = 0.5
#: Generated grounding samples (``--grounding-generated``): the pool's size and WorldGen's DDIM steps (the demo's
#: 20, at its default guidance). About 0.3 s per WorldGen image on one busy thread, and 60% of the train scenes
#: give a sample, so 2,048 samples took 936 s (3,440 scenes drawn, 3,328 images generated).
GENERATED_POOL = 2048
GENERATED_STEPS = 20
SEED = 0
HALF_MIN_NUMEL = 1024
COMMAND = "python -m promptweave.bench.demo_artifacts"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


# ----- rules that fix the demo scenes ---------------------------------------------------------------------------
def demo_scenes(n: int = 16):
    """Grounding demo scenes: the first ``n`` samples of the val split's grounding evaluation set (a scene and one
    unique referring expression of one of its objects, with its true mask and box)."""
    from ..prompt_modules.world.sources import evaluation_set

    return evaluation_set("val", n)


def _ranking_captions() -> tuple[str, ...]:
    from ..prompt_modules.world.vocabulary import FAMILY_MEMBERS

    firsts = [members[0] for members in list(FAMILY_MEMBERS.values())[:4]]
    return tuple(f"a large red {category} on a white background" for category in firsts)


#: The ranking demo: one WorldGen image per caption (seed 0), each caption in turn the description. The rule: the
#: first category of each of the world's first four shape families, all red (five-point star, square, left arrow,
#: circle), so that only the shape tells them apart.
RANKING_CAPTIONS: tuple[str, ...] = _ranking_captions()


def adaptation_captions(n: int = 8) -> list[str]:
    """Captions of the first ``n`` single-object flat val scenes: the adaptation demo's source prompts."""
    from ..prompt_modules.world.zero_shot import single_object_scenes

    return [scene.caption for scene in single_object_scenes("val", n, style="flat")]


def red_pixels(image: torch.Tensor) -> torch.Tensor:
    """Where an image ``[3, H, W]`` in 0..1 is red (R >= 0.5, G and B < 0.4): the demo scene's named object is the
    only red thing in it, so this stands in for its true mask on a WorldGen scene."""
    r, g, b = image[0], image[1], image[2]
    return (r >= 0.5) & (g < 0.4) & (b < 0.4)


# ----- measuring ------------------------------------------------------------------------------------------------
@torch.no_grad()
def ranking_top_picks(vlm, dual, images: torch.Tensor, texts) -> list[int]:
    """Index of the best image for each text, as PWRankImages ranks them (``rank_images``)."""
    from ..prompt_modules.dual_prompt.model import rank_images

    return [int(rank_images(vlm, images, text, dual)[1][0]) for text in texts]


@torch.no_grad()
def grounding_ious(vlm, model, data, seed: int = 0) -> dict[str, list[float]]:
    """Per-sample mask IoU and box IoU of a Diff-Prompt model on a grounding batch: the mask the node outputs
    (threshold 0.5, kept inside the predicted box, :meth:`GroundingOutput.masks_at`)."""
    from ..prompt_modules.diff_prompt import box_iou

    out = model(vlm, data.images, list(data.texts), generator=torch.Generator().manual_seed(seed))
    size = data.masks.shape[-1]
    pred = out.masks_at(size, size) > 0.5
    target = data.masks > 0.5
    inter = (pred & target).flatten(1).sum(1).float()
    union = (pred | target).flatten(1).sum(1).float().clamp(min=1)
    boxes = box_iou(out.boxes.float().cpu(), data.boxes)  # paired boxes
    return {"mask_iou": (inter / union).tolist(), "box_iou": boxes.tolist()}


@torch.no_grad()
def style_scores(vlm, images: torch.Tensor, style: str) -> dict[str, float]:
    """WorldCLIP's zero-shot probability of ``style`` among the world's style phrases (mean over images) and
    the fraction of images whose nearest style is ``style``."""
    from ..prompt_modules.world.vocabulary import STYLE_PHRASES, STYLES
    from ..prompt_modules.world.zero_shot import style_prompts

    prompts = style_prompts()
    img = F.normalize(vlm.encode_image(images), dim=-1)
    txt = F.normalize(vlm.encode_text(prompts), dim=-1)
    probs = (100.0 * img @ txt.T).softmax(dim=-1)
    k = STYLES.index(style)
    assert STYLE_PHRASES[style] in prompts[k], (prompts, style)
    return {"prob": float(probs[:, k].mean()), "top1": float((probs.argmax(dim=1) == k).float().mean())}


# ----- training -------------------------------------------------------------------------------------------------
def train_rpp(out: Path, work: Path) -> dict:
    from ..prompt_modules.pretraining import RPPConfig, pretrain_prompts, save_pretrained_prompts
    from ..prompt_modules.world.models import load_worldclip
    from ..prompt_modules.world.sources import WorldClassSource, world_classes
    from .pretraining import HELD_OUT_CATEGORIES, SEEN_CATEGORIES, ZERO_SHOT_TEMPLATE, eval_set

    steps, batch_size, k, lr, shots = 300, 32, 64, 2e-3, 16
    vlm = load_worldclip()
    classes = world_classes(SEEN_CATEGORIES, held_out=False)
    config = RPPConfig()
    config.classes_per_step = k
    t0 = time.perf_counter()
    res = pretrain_prompts(vlm, WorldClassSource(classes, shots=shots), config, steps=steps, batch_size=batch_size,
                           lr=lr, seed=SEED, checkpoint_path=work / "rpp.state.safetensors", progress=False)
    seconds = time.perf_counter() - t0
    recipe = {"steps": steps, "batch_size": batch_size, "classes_per_step": k, "lr": lr, "shots": shots,
              "seed": SEED, "benchmark": "pretraining"}
    save_pretrained_prompts(res.rpp, out / RPP_FILE, vlm, class_names=res.class_names,
                            info={"steps": res.steps_done, "recipe": recipe})
    from ..prompt_modules.pretraining import accuracy, classify, load_pretrained_prompts

    rpp = load_pretrained_prompts(out / RPP_FILE).rpp
    figures = {}
    for name, cats in (("heldout", HELD_OUT_CATEGORIES), ("seen", SEEN_CATEGORIES)):
        cls = world_classes(cats, held_out=False)
        images, labels = eval_set("val", 500, cls)
        names = [c.name for c in cls]
        figures[f"val_{name}_acc"] = accuracy(classify(vlm, images, names, rpp, template=ZERO_SHOT_TEMPLATE), labels)
        figures[f"val_{name}_acc_zero_shot"] = accuracy(classify(vlm, images, names, None, template=ZERO_SHOT_TEMPLATE),
                                                        labels)
    (work / "rpp.state.safetensors").unlink(missing_ok=True)
    return {"recipe": recipe, "train_seconds": round(seconds, 1), "val": figures}


def train_dcar(out: Path, work: Path) -> dict:
    from ..prompt_modules.dual_prompt import (
        DualPromptConfig,
        encode_gallery,
        load_dual_prompt,
        save_dual_prompt,
        train_dual_prompt,
    )
    from ..prompt_modules.world.models import load_worldclip
    from ..prompt_modules.world.sources import WorldSource
    from .retrieval import eval_set, recalls

    steps, batch_size, lr = 200, 32, 3e-3
    vlm = load_worldclip()
    config = DualPromptConfig(text_depth=2, visual_depth=2)
    t0 = time.perf_counter()
    res = train_dual_prompt(vlm, WorldSource(config=config), config, steps=steps, batch_size=batch_size, lr=lr,
                            seed=SEED, checkpoint_path=work / "dcar.state.safetensors", progress=False)
    seconds = time.perf_counter() - t0
    save_dual_prompt(res.dual, out / DCAR_FILE)
    dual = load_dual_prompt(out / DCAR_FILE, vlm)
    images, _captions, gallery = eval_set("val", 500)
    figures = {}
    for name, d in (("dcar", dual), ("zero_shot", None)):
        img, txt = encode_gallery(vlm, d, images, gallery)
        r = recalls(img @ txt.T, 500)
        figures[f"val_i2t_r1_{name}"], figures[f"val_t2i_r1_{name}"] = r["i2t_r1"], r["t2i_r1"]
    gen_images = ranking_images(vlm)
    picks = ranking_top_picks(vlm, dual, gen_images, RANKING_CAPTIONS)
    figures["ranking_demo_top_picks"] = picks
    (work / "dcar.state.safetensors").unlink(missing_ok=True)
    return {"recipe": {"steps": steps, "batch_size": batch_size, "lr": lr, "depth": 2, "seed": SEED,
                       "benchmark": "retrieval"}, "train_seconds": round(seconds, 1), "val": figures}


@torch.no_grad()
def ranking_images(vlm, gen=None) -> torch.Tensor:
    """The ranking demo's candidates: WorldGen's images of :data:`RANKING_CAPTIONS` (seed 0, 20 steps, the
    default guidance), as PWWorldGenSample makes them."""
    from ..prompt_modules.world.models import load_worldgen
    from ..prompt_modules.world.worldgen import DEFAULT_GUIDANCE

    gen = gen or load_worldgen()
    return gen.sample(list(RANKING_CAPTIONS), vlm, steps=20, guidance=DEFAULT_GUIDANCE, seed=0).float()


def train_ipl(out: Path, work: Path) -> dict:
    from ..prompt_modules.adaptation import (
        IPLConfig,
        WorldGenGenerator,
        adapted_worldgen,
        load_lora_native,
        run_adaptation,
        sample_worldgen_latents,
        save_lora_native,
        save_mapper,
    )
    from ..prompt_modules.world.models import load_world_models
    from ..prompt_modules.world.zero_shot import single_object_scenes
    from .adaptation import (
        SOURCE_STYLE,
        SOURCE_TEXT,
        STAGE2_LR,
        STYLE_TEXTS,
        layer_selection_k,
        measure,
        source_content,
        style_prototypes,
    )

    s = {"n_pool": 256, "gen_steps": 20, "steps": 300, "mapper_steps": 300, "mapper_batch": 32, "batch_size": 2}
    vlm, gen = load_world_models()
    t0 = time.perf_counter()
    pool_scenes = list(single_object_scenes("train", s["n_pool"], style=SOURCE_STYLE))
    pool = sample_worldgen_latents(gen, vlm, [sc.caption for sc in pool_scenes], steps=s["gen_steps"], seed=1)
    generator = WorldGenGenerator(gen, pool)
    config = IPLConfig(method="ipl", source_text=SOURCE_TEXT, target_text=STYLE_TEXTS[IPL_STYLE],
                       ctx_init="a picture of a", steps=s["steps"], mapper_steps=s["mapper_steps"],
                       mapper_batch=s["mapper_batch"], batch_size=s["batch_size"], lr=STAGE2_LR["ipl"],
                       auto_layer_k=layer_selection_k(len(generator.lora_targets)), seed=SEED)
    (work / "ipl").mkdir(parents=True, exist_ok=True)
    result = run_adaptation(generator, vlm, config, checkpoint_dir=work / "ipl")
    seconds = time.perf_counter() - t0
    recipe = {**s, "lr": STAGE2_LR["ipl"], "auto_layer_k": config.auto_layer_k, "seed": SEED, "style": IPL_STYLE,
              "source_text": SOURCE_TEXT, "target_text": STYLE_TEXTS[IPL_STYLE], "benchmark": "adaptation"}
    save_mapper(result.mapper, out / IPL_MAPPER_FILE)
    save_lora_native(result.lora, out / IPL_LORA_FILE, extra={"worldgen": gen.config.name, "recipe": recipe})
    lora = load_lora_native(out / IPL_LORA_FILE)
    # val figures as the adaptation benchmark measures them (64 single-object flat val scenes, latents seed 0)
    eval_scenes = list(single_object_scenes("val", 64, style=SOURCE_STYLE))
    latents = sample_worldgen_latents(gen, vlm, [sc.caption for sc in eval_scenes], steps=s["gen_steps"], seed=0)
    base = WorldGenGenerator(gen)
    source_images = base.generate(latents)
    adapted_gen = adapted_worldgen(gen, lora)
    with torch.no_grad():
        adapted_images = WorldGenGenerator(adapted_gen).generate(latents)
    protos = style_prototypes(vlm, 64)
    src = source_content(vlm, source_images)
    figures = {"source": measure(vlm, source_images, src, protos, IPL_STYLE),
               "ipl": measure(vlm, adapted_images, src, protos, IPL_STYLE),
               "style_prob_source": style_scores(vlm, source_images, IPL_STYLE),
               "style_prob_ipl": style_scores(vlm, adapted_images, IPL_STYLE)}
    import shutil

    shutil.rmtree(work / "ipl", ignore_errors=True)
    return {"recipe": recipe, "train_seconds": round(seconds, 1), "val": figures}


def halve_large_tensors(path: Path, extra: dict) -> None:
    """Re-save ``path`` with its float32 tensors of :data:`HALF_MIN_NUMEL` or more values as float16."""
    tensors, metadata = read_safetensors(path)
    small = {k: v for k, v in tensors.items()}
    for k, v in tensors.items():
        if v.dtype == torch.float32 and v.numel() >= HALF_MIN_NUMEL:
            small[k] = v.half()
    metadata = dict(metadata)
    for key, value in extra.items():
        metadata[f"promptweave.{key}"] = json.dumps(value)
    save_safetensors_atomic(path, small, metadata)


def train_grounding(out: Path, work: Path, sizes: tuple[int, ...] = GROUNDING_SIZES, roundtrip: float = 0.0,
                    generated: float = GROUNDING_GENERATED, generated_pool: int = GENERATED_POOL) -> dict:
    """The Diff-Prompt bundle; with ``roundtrip`` > 0 that fraction of each training batch's scenes is passed through
    WorldGen's autoencoder first (:class:`WorldGroundingSource`'s ``roundtrip``), so that the grounder also sees the
    look of WorldGen's images, which the demo workflow grounds. With ``generated`` > 0 that fraction of each batch
    comes from a pool of ``generated_pool`` WorldGen images of train scenes with colour-segmented masks of an object
    whose colour is unique in its scene (:func:`load_or_generate_pool`, cached in ``work``; Diff-Prompt trained on
    generated images too)."""
    from ..prompt_modules.diff_prompt import DiTConfig, MaskVAEConfig, load_diff_prompt, save_bundle, train_diff_prompt
    from ..prompt_modules.world.models import load_worldclip, load_worldgen
    from ..prompt_modules.world.sources import WorldGroundingSource, evaluation_set, load_or_generate_pool
    from .grounding import evaluate

    vae_steps, dit_steps, prompt_steps, batch_size = sizes
    vlm = load_worldclip().requires_grad_(False)
    roundtrip_fn = None
    if roundtrip > 0:
        gen = load_worldgen().requires_grad_(False)

        def roundtrip_fn(x):
            return gen.decode(gen.encode(x))

    pool = None
    if generated > 0:
        t_pool = time.perf_counter()
        pool_path = work / f"grounding-generated-pool-{generated_pool}-seed{SEED}.safetensors"
        log(f"grounding: generated pool of {generated_pool} samples ({pool_path})")

        logged = [0]

        def progress(kept: int, tried: int, n: int) -> None:
            if kept == n or kept >= logged[0] + 256:
                logged[0] = kept
                log(f"generated pool {kept}/{n} ({tried} scenes drawn)")

        pool = load_or_generate_pool(pool_path, lambda: load_worldgen().requires_grad_(False), vlm, generated_pool,
                                     seed=SEED, steps=GENERATED_STEPS, callback=progress)
        pool_seconds = round(time.perf_counter() - t_pool, 1)
    source = WorldGroundingSource("train", size=64, roundtrip=roundtrip_fn, roundtrip_fraction=max(roundtrip, 0.0),
                                  generated=pool, generated_fraction=max(generated, 0.0))
    folder = work / ("grounding-" + "-".join(map(str, sizes)) + (f"-roundtrip{roundtrip:g}" if roundtrip > 0 else "")
                     + (f"-generated{generated:g}-pool{generated_pool}" if generated > 0 else ""))
    folder.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def callback(step: int, total: int, loss: float) -> None:
        if step % 50 == 0 or step == total:
            log(f"grounding step {step}/{total} loss {loss:.4f}")

    t0 = time.perf_counter()
    run = train_diff_prompt(
        vlm, source, stages=("vae", "dit", "prompt"),
        vae_config=MaskVAEConfig(), dit_config=DiTConfig(), vae_steps=vae_steps, dit_steps=dit_steps,
        prompt_steps=prompt_steps, batch_size=batch_size, seed=SEED,
        checkpoint_paths={stage: folder / f"{stage}.state.safetensors" for stage in ("vae", "dit", "prompt")},
        bundle_path=folder / "bundle.safetensors", callback=callback, progress=False,
    )
    timings["all_stages"] = round(time.perf_counter() - t0, 1)
    path = out / DIFF_PROMPT_FILE
    save_bundle(path, model=run.model)
    recipe = {"vae_steps": vae_steps, "dit_steps": dit_steps, "prompt_steps": prompt_steps, "batch_size": batch_size,
              "roundtrip_fraction": roundtrip, "seed": SEED, "benchmark": "grounding",
              "stored": f"float16 for tensors of >= {HALF_MIN_NUMEL} values"}
    if pool is not None:
        recipe.update(generated_fraction=generated, generated_pool=generated_pool, generated_steps=GENERATED_STEPS,
                      generated_pool_info=pool.info)
    halve_large_tensors(path, {"recipe": recipe})
    model = load_diff_prompt(path, vlm)
    data = evaluation_set("val", 500)
    figures = evaluate(lambda im, tx, g: model(vlm, im, tx, generator=g), data, SEED)
    fp32 = evaluate(lambda im, tx, g: run.model(vlm, im, tx, generator=g), data, SEED)
    figures["acc_iou50_before_float16"], figures["miou_before_float16"] = fp32["acc_iou50"], fp32["miou"]
    figures["vae_mask_iou"] = round(100.0 * model.vae.iou(data.masks), 2)
    demo = grounding_ious(vlm, model, demo_scenes())
    figures["demo_mask_iou"] = [round(v, 3) for v in demo["mask_iou"]]
    figures["demo_box_iou"] = [round(v, 3) for v in demo["box_iou"]]
    result = {"recipe": recipe, "train_seconds": timings["all_stages"], "val": figures, "losses_last": {
        stage: round(sum(v[-20:]) / max(1, len(v[-20:])), 4) for stage, v in run.losses.items()}}
    if pool is not None:
        result["generated_pool_seconds"] = pool_seconds  # loading a cached pool, or generating it
    return result


TRAINERS = {"rpp": train_rpp, "dcar": train_dcar, "ipl": train_ipl, "grounding": train_grounding}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=SHIPPED_WEIGHTS_DIR, help="where the artifacts go (weights/)")
    parser.add_argument("--work", type=Path, default=PACK_DIR / "out" / "demo-artifacts",
                        help="checkpoints and the figures of each artifact (<name>.json)")
    parser.add_argument("--only", default=",".join(TRAINERS), help="comma-separated: " + ", ".join(TRAINERS))
    parser.add_argument("--force", action="store_true", help="retrain even where the files exist")
    parser.add_argument("--grounding-sizes", default=",".join(map(str, GROUNDING_SIZES)),
                        help="vae_steps,dit_steps,prompt_steps,batch_size of the grounding artifact")
    parser.add_argument("--grounding-roundtrip", type=float, default=0.0,
                        help="fraction of the grounding batches' scenes passed through WorldGen's autoencoder first")
    parser.add_argument("--grounding-generated", type=float, default=GROUNDING_GENERATED,
                        help="fraction of the grounding batches taken from WorldGen images with colour-segmented masks")
    parser.add_argument("--grounding-generated-pool", type=int, default=GENERATED_POOL,
                        help="how many generated grounding samples to make once (cached in --work)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if not 0.0 <= args.grounding_generated <= 1.0 or args.grounding_generated_pool < 1:
        parser.error("--grounding-generated must be in [0, 1] and --grounding-generated-pool at least 1")
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in TRAINERS]
    if unknown:
        parser.error(f"unknown artifact(s) {unknown}; choose from {list(TRAINERS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    for name in names:
        if not args.force and all((args.out / f).is_file() for f in FILES[name]):
            log(f"{name}: {', '.join(FILES[name])} already in {args.out}, skipped")
            continue
        log(f"{name}: training")
        t0 = time.perf_counter()
        if name == "grounding":
            sizes = tuple(int(v) for v in args.grounding_sizes.split(","))
            figures = train_grounding(args.out, args.work, sizes, args.grounding_roundtrip, args.grounding_generated,
                                      args.grounding_generated_pool)
        else:
            figures = TRAINERS[name](args.out, args.work)
        figures["command"] = f"{COMMAND} --only {name}"
        figures["wall_seconds"] = round(time.perf_counter() - t0, 1)
        figures["files"] = {f: (args.out / f).stat().st_size for f in FILES[name]}
        write_json(args.work / f"{name}.json", figures)
        log(f"{name}: done in {figures['wall_seconds']} s: {json.dumps(figures['val'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
