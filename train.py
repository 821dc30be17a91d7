"""Training from the command line, in one process or many: ``python -m promptweave.train METHOD ...``.

The same library training functions the nodes call write the same safetensors files, which the nodes and
``diffusers_api`` load. Started by ``torchrun --nproc_per_node N -m promptweave.train ...`` (or ``accelerate
launch -m promptweave.train ...``) every process trains on its part of each global batch and the gradients are
averaged (:mod:`promptweave.prompt_modules.core.distributed`); only rank 0 writes checkpoints, logs and the result,
and a checkpoint resumes at any process count. What couples a batch's samples sees the whole batch (contrastive
losses gather the features, BatchNorm the statistics), and per-sample noise is drawn for the whole batch, so N
processes train what one process trains.

Methods (one command each; ``python -m promptweave.train METHOD --help`` lists the options):

- ``rpp``: RPP prompt pretraining (``pretrain_bundle``; Load Pretrained Prompts reads the file);
- ``dcar``: DCAR dual prompts (``train_dual_prompt``; Load Dual Prompt);
- ``inversion``: a prompt inverter on image/prompt pairs (``train_inverter_on_prompts``, as Train Prompt Inverter;
  Load Prompt Inverter): each process reads and encodes its shard of the pairs, then every process holds all
  features;
- ``diff-prompt``: Diff-Prompt's stages vae, dit, prompt (``train_diff_prompt``, as Train Diff-Prompt; the bundle
  Load Diff-Prompt reads);
- ``ipl``: IPL on WorldGen's decoder, latent mapper then LoRA (``run_adaptation``; the native LoRA Apply IPL LoRA to
  WorldGen reads, the mapper Load Latent Mapper reads).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .prompt_modules.core.distributed import DataParallel, data_parallel_from_env
from .prompt_modules.core.vlm import VisionLanguageModel, load_vlm
from .prompt_modules.dual_prompt import DualPromptConfig, save_dual_prompt, train_dual_prompt
from .prompt_modules.dual_prompt.data import FDRDSource, FolderSource
from .prompt_modules.pretraining import RPPConfig, pretrain_bundle
from .prompt_modules.pretraining.data import FolderClassSource


def _vlm(spec: str, vision: str | None) -> VisionLanguageModel:
    """``worldclip`` (the shipped WorldCLIP 2), ``preset:NAME`` (a random-weight preset, for tests) or any CLIP
    file or folder :func:`load_vlm` reads (``--vision`` for ComfyUI's split text / CLIP-vision files)."""
    if spec == "worldclip":
        from .prompt_modules.world.models import load_worldclip

        return load_worldclip()
    if spec.startswith("preset:"):
        return VisionLanguageModel(spec.removeprefix("preset:"), seed=0)
    return load_vlm(spec, vision)


def _config_file(path: str | None) -> dict[str, Any]:
    """Settings from a JSON (or, with PyYAML installed, YAML) file: ``{"config": {RPPConfig fields}, "steps": ...}``
    (keys as the long options, with underscores)."""
    if not path:
        return {}
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith((".yaml", ".yml")):
        import yaml

        return dict(yaml.safe_load(text) or {})
    return dict(json.loads(text))


class _Log:
    """Rank 0's progress: loss and throughput per step on stderr, and optionally one CSV row per step. A trainer
    of several stages sets ``batch_size`` (and ``stage``, shown before the step) as each stage begins."""

    def __init__(self, parallel: DataParallel, batch_size: int, csv_path: str | None) -> None:
        self.parallel, self.batch_size, self.csv_path = parallel, batch_size, csv_path
        self.stage = ""
        self.first: float | None = None  # the time of the first step this run: set-up not counted
        self.samples = 0  # global samples since the first step
        self.rows: list[tuple[int, float, float]] = []

    def __call__(self, step: int, steps: int, loss: float) -> None:
        if not self.parallel.is_main:
            return
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        else:
            self.samples += self.batch_size
        rate = self.samples / (now - self.first) if self.samples else float("nan")
        self.rows.append((step, loss, rate))
        stage = f"{self.stage} " if self.stage else ""
        print(f"{stage}step {step}/{steps} loss {loss:.4f} {rate:.1f} samples/s", file=sys.stderr, flush=True)

    def samples_per_second(self) -> float:
        """Global samples per second after the first step (NaN with fewer than two steps)."""
        return self.rows[-1][2] if self.rows else float("nan")

    def write(self) -> None:
        if self.csv_path and self.parallel.is_main:
            with open(self.csv_path, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["step", "loss", "samples_per_second"])
                writer.writerows(self.rows)


def train_rpp(args: argparse.Namespace, parallel: DataParallel) -> Path:
    settings = _config_file(args.config)
    vlm = _vlm(args.vlm, args.vision).requires_grad_(False)
    config = RPPConfig(**settings.get("config", {}))
    if args.source == "folder":
        source = FolderClassSource(args.path, size=int(vlm.image_size))
    else:
        from .prompt_modules.world.sources import WorldClassSource, world_classes

        source = WorldClassSource(world_classes(), size=int(vlm.image_size))
    steps = int(settings.get("steps", args.steps))
    batch_size = int(settings.get("batch_size", args.batch_size))
    log = _Log(parallel, batch_size, args.log_csv)
    pretrain_bundle(
        vlm, source, config, save_path=args.out, info={"source": args.source, "processes": parallel.world_size},
        steps=steps, batch_size=batch_size, lr=float(settings.get("lr", args.lr)),
        seed=int(settings.get("seed", args.seed)), checkpoint_path=args.checkpoint,
        checkpoint_every=args.checkpoint_every, callback=log, progress=False, parallel=parallel,
    )
    log.write()
    return Path(args.out)


def train_dcar(args: argparse.Namespace, parallel: DataParallel) -> Path:
    settings = _config_file(args.config)
    vlm = _vlm(args.vlm, args.vision).requires_grad_(False)
    config = DualPromptConfig(**settings.get("config", {}))
    size = int(vlm.image_size)
    if args.source == "folder":
        source = FolderSource(args.path, size=size)
    elif args.source == "fdrd_json":
        source = FDRDSource(args.path, args.image_root, size=size, config=config)
    else:
        from .prompt_modules.world.sources import WorldSource

        source = WorldSource(size=size, config=config)
    batch_size = int(settings.get("batch_size", args.batch_size))
    log = _Log(parallel, batch_size, args.log_csv)
    result = train_dual_prompt(
        vlm, source, config, steps=int(settings.get("steps", args.steps)), batch_size=batch_size,
        lr=float(settings.get("lr", args.lr)), seed=int(settings.get("seed", args.seed)),
        checkpoint_path=args.checkpoint, checkpoint_every=args.checkpoint_every, callback=log, progress=False,
        parallel=parallel,
    )
    if parallel.is_main:
        save_dual_prompt(result.dual, args.out)
    log.write()
    return Path(args.out)


def _worldgen(spec: str, vlm: VisionLanguageModel):
    """``worldgen`` (the shipped WorldGen 3) or ``preset:NAME`` (random weights conditioned on ``vlm``, for tests)."""
    if spec.startswith("preset:"):
        from .prompt_modules.world.worldgen import WORLDGEN_PRESETS, WorldGen

        return WorldGen(dataclasses.replace(WORLDGEN_PRESETS[spec.removeprefix("preset:")], backbone=vlm.name), seed=0)
    if spec != "worldgen":
        raise SystemExit(f"--worldgen takes 'worldgen' or 'preset:NAME', not {spec!r}")
    from .prompt_modules.world.models import load_worldgen

    return load_worldgen()


def _setting(settings: dict[str, Any], args: argparse.Namespace, name: str) -> Any:
    """A setting of the --config file, else the option's value."""
    return settings.get(name, getattr(args, name))


def train_inversion(args: argparse.Namespace, parallel: DataParallel) -> Path:
    """Train Prompt Inverter's recipe on a folder of image + .txt pairs or a manifest. Each process reads and
    encodes its shard of the pairs (the frozen encoder's work, done once), every process then holds all features."""
    from .prompt_modules.inversion import encoder_image_size, image_features, save_inverter, train_inverter_on_prompts
    from .prompt_modules.inversion.data import load_pair_images, read_pairs

    settings = _config_file(args.config)
    vlm = worldgen = None
    if args.backbone in ("vlm", "worldgen"):
        vlm = _vlm(args.vlm, args.vision).requires_grad_(False)
    if args.backbone == "worldgen":
        worldgen = _worldgen(args.worldgen, vlm)
    options = {"image_root": args.image_root} if args.image_root else {}
    pairs = read_pairs(args.data, **options)
    if len(pairs) < parallel.world_size:
        raise SystemExit(f"{len(pairs)} pairs for {parallel.world_size} processes: each process needs one at least")
    size = encoder_image_size(args.backbone, vlm=vlm, worldgen=worldgen)
    mine = load_pair_images(pairs[parallel.shard(len(pairs))], size, args.data if Path(args.data).is_file() else None)
    name, features = image_features(args.backbone, mine, vlm=vlm, worldgen=worldgen)
    inputs = parallel.gather_shards(features)
    batch_size = int(_setting(settings, args, "batch_size"))
    log = _Log(parallel, min(batch_size, len(pairs)), args.log_csv)
    result = train_inverter_on_prompts(
        inputs, [pair.prompt for pair in pairs], name, vocab_size=int(_setting(settings, args, "vocab_size")),
        epochs=int(_setting(settings, args, "epochs")), batch_size=batch_size, lr=float(_setting(settings, args, "lr")),
        hidden_width=int(_setting(settings, args, "hidden_width")),
        curriculum=bool(settings.get("curriculum", not args.no_curriculum)), seed=int(_setting(settings, args, "seed")),
        checkpoint_path=args.checkpoint, checkpoint_every=args.checkpoint_every, callback=log, parallel=parallel,
    )
    if parallel.is_main:
        save_inverter(result.inverter, args.out)
    log.write()
    return Path(args.out)


def _grounding_source(args: argparse.Namespace, size: int):
    """The Diff-Prompt data of ``--source``, images at ``size`` (the world's own 64 px for ``world``, as the node)."""
    from .prompt_modules.diff_prompt import FolderGroundingSource, read_grounding_jsonl, read_refcoco

    root = Path(args.image_root) if args.image_root else None
    if args.source == "folder":
        return FolderGroundingSource(args.path, size=size)
    if args.source == "jsonl":
        return read_grounding_jsonl(args.path, root, size=size)
    if args.source == "refcoco":
        refs = Path(args.path)
        instances = Path(args.instances) if args.instances else refs.parent / "instances.json"
        split = [part for part in args.split.split(",") if part] or None
        return read_refcoco(instances, refs, root or refs.parent, split=split, size=size)
    from .prompt_modules.world.sources import WorldGroundingSource

    return WorldGroundingSource()


def train_diff_prompt_stages(args: argparse.Namespace, parallel: DataParallel) -> Path:
    """Train Diff-Prompt's recipe: the stages of ``--stage`` into the bundle ``--out`` (a later stage starts from
    the bundle there), ``--steps`` each (``vae_steps``, ``dit_steps``, ``prompt_steps`` in --config override)."""
    from .prompt_modules.diff_prompt import DiTConfig, MaskVAEConfig, PromptConfig, train_diff_prompt
    from .prompt_modules.diff_prompt.io import STAGES
    from .prompt_modules.diff_prompt.train import stage_batch_size

    settings = _config_file(args.config)
    vlm = _vlm(args.vlm, args.vision).requires_grad_(False)
    source = _grounding_source(args, int(vlm.image_size))
    stages = STAGES if args.stage == "all" else (args.stage,)
    batch_size, steps = int(_setting(settings, args, "batch_size")), int(_setting(settings, args, "steps"))
    per_stage = {stage: int(settings.get(f"{stage}_steps", steps)) for stage in STAGES}
    configs = {"vae_config": MaskVAEConfig, "dit_config": DiTConfig, "prompt_config": PromptConfig}
    log = _Log(parallel, batch_size, args.log_csv)
    starts = {}
    for stage in stages:
        starts[stage] = sum(per_stage[s] for s in stages[: stages.index(stage)])

    def callback(step: int, total: int, loss: float) -> None:
        log.stage = max((s for s in stages if starts[s] < step), key=lambda s: starts[s])
        log.batch_size = stage_batch_size(log.stage, batch_size)
        log(step, total, loss)

    if args.checkpoint:
        Path(args.checkpoint).mkdir(parents=True, exist_ok=True)
    train_diff_prompt(
        vlm, source, stages=stages, vae_steps=per_stage["vae"], dit_steps=per_stage["dit"],
        prompt_steps=per_stage["prompt"], batch_size=batch_size, seed=int(_setting(settings, args, "seed")),
        bundle_path=args.out, checkpoint_dir=args.checkpoint, checkpoint_every=args.checkpoint_every,
        callback=callback, progress=False, init_prompts=args.init_prompts, ddim_steps=args.ddim_steps,
        prompted_layers=args.prompted_layers, lr=settings.get("lr", args.lr), mask_size=args.mask_size or None,
        parallel=parallel, **{key: kind(**settings[key]) for key, kind in configs.items() if key in settings},
    )
    log.write()
    return Path(args.out)


def train_ipl(args: argparse.Namespace, parallel: DataParallel) -> Path:
    """IPL (or NADA) on WorldGen's decoder, as the adaptation benchmark and the demo's artifact: the latent mapper,
    then the LoRA; codes from a pool of ``--pool`` latents WorldGen samples for single-object train captions (each
    process samples its shard of the pool), Gaussian codes with ``--pool 0``."""
    from .prompt_modules.adaptation import (
        IPLConfig,
        WorldGenGenerator,
        run_adaptation,
        sample_worldgen_latents,
        save_lora_native,
        save_mapper,
    )
    from .prompt_modules.world.vocabulary import STYLE_PHRASES
    from .prompt_modules.world.zero_shot import single_object_scenes

    settings = _config_file(args.config)
    vlm = _vlm(args.vlm, args.vision).requires_grad_(False)
    gen = _worldgen(args.worldgen, vlm)
    fields = {
        "method": args.method, "source_text": args.source_text or STYLE_PHRASES["flat"],
        "target_text": args.target_text, "steps": args.steps, "mapper_steps": args.mapper_steps,
        "mapper_batch": args.mapper_batch, "batch_size": args.batch_size, "lr": args.lr, "rank": args.rank,
        "alpha": float(args.rank),
        "auto_layer_k": args.adaptive_layers, "seed": args.seed, **settings.get("config", {}),
    }
    config = IPLConfig(**fields)
    pool = None
    if args.pool:
        captions = [scene.caption for scene in single_object_scenes("train", args.pool, style="flat")]
        pool = sample_worldgen_latents(gen, vlm, captions, steps=args.pool_steps, seed=1, parallel=parallel)
    generator = WorldGenGenerator(gen, pool)
    log = _Log(parallel, config.mapper_batch, args.log_csv)

    def callback(stage: str, step: int, total: int, loss: float) -> None:
        log.stage, log.batch_size = stage, config.mapper_batch if stage == "mapper" else config.batch_size
        log(step, total, loss)

    if args.checkpoint:
        Path(args.checkpoint).mkdir(parents=True, exist_ok=True)
    result = run_adaptation(generator, vlm, config, checkpoint_dir=args.checkpoint,
                            checkpoint_every=args.checkpoint_every, callback=callback, parallel=parallel)
    if parallel.is_main:
        recipe = {**config.to_dict(), "pool": args.pool, "pool_steps": args.pool_steps,
                  "processes": parallel.world_size}
        save_lora_native(result.lora, args.out, extra={"worldgen": gen.config.name, "recipe": recipe})
        if args.mapper_out and result.mapper is not None:
            save_mapper(result.mapper, args.mapper_out)
    log.write()
    return Path(args.out)


def _common_options(
    command: argparse.ArgumentParser, lr: float | None, config: str, *, steps: int | None = 200, batch_size: int = 32,
    checkpoint: str = "resumable state (resumes when it exists)",
) -> None:
    command.add_argument("--vlm", default="worldclip", help="worldclip, preset:NAME, or a CLIP file/folder")
    command.add_argument("--vision", default=None, help="CLIP-vision file, with a ComfyUI text-encoder --vlm")
    if steps is not None:
        command.add_argument("--steps", type=int, default=steps)
    command.add_argument("--batch-size", type=int, default=batch_size, help="the global batch over all processes")
    command.add_argument("--lr", type=float, default=lr, help=None if lr is not None else "default: each config's")
    command.add_argument("--seed", type=int, default=0)
    command.add_argument("--config", default=None, help=f"JSON/YAML: {config}")
    command.add_argument("--out", required=True, help="the .safetensors file to write")
    command.add_argument("--checkpoint", default=None, help=checkpoint)
    command.add_argument("--checkpoint-every", type=int, default=50)
    command.add_argument("--log-csv", default=None, help="one row per step: step, loss, samples/s")


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="python -m promptweave.train", description=__doc__.split("\n\n")[0])
    methods = main.add_subparsers(dest="method", required=True)
    rpp = methods.add_parser("rpp", help="RPP prompt pretraining (writes what Load Pretrained Prompts reads)")
    _common_options(rpp, 2e-3, "{'config': {RPPConfig fields}, 'steps': ...}")
    rpp.add_argument("--source", choices=("world", "folder"), default="world")
    rpp.add_argument("--path", default="", help="the ImageFolder root (one sub-folder per class) for --source folder")
    dcar = methods.add_parser("dcar", help="DCAR dual prompts (writes what Load Dual Prompt reads)")
    _common_options(dcar, 5e-3, "{'config': {DualPromptConfig fields}, 'steps': ...}")
    dcar.add_argument("--source", choices=("world", "folder", "fdrd_json"), default="world")
    dcar.add_argument("--path", default="", help="image + .txt folder, or an FDRD-style JSON file")
    dcar.add_argument("--image-root", default=None, help="where an FDRD JSON's images are")
    _inversion_parser(methods)
    _diff_prompt_parser(methods)
    _ipl_parser(methods)
    return main


def _inversion_parser(methods: argparse._SubParsersAction) -> None:
    inversion = methods.add_parser("inversion", help="a prompt inverter (writes what Load Prompt Inverter reads)")
    _common_options(inversion, 1e-3, "{'epochs': ..., 'curriculum': false, ...} (keys as the options)", steps=None,
                    batch_size=64)
    inversion.add_argument("--data", required=True, help="a folder of image + .txt pairs, or a manifest (.jsonl, "
                           ".json, .csv, .tsv, .parquet) of image and prompt columns")
    inversion.add_argument("--image-root", default=None, help="where a manifest's relative image paths start")
    inversion.add_argument("--backbone", choices=("vlm", "pixels", "worldgen"), default="vlm",
                           help="the image encoder: the VLM, a trainable pixel CNN, or WorldGen's white box")
    inversion.add_argument("--worldgen", default="worldgen", help="worldgen or preset:NAME (for --backbone worldgen)")
    inversion.add_argument("--epochs", type=int, default=20, help="epochs (per curriculum phase)")
    inversion.add_argument("--vocab-size", type=int, default=1000)
    inversion.add_argument("--hidden-width", type=int, default=512)
    inversion.add_argument("--no-curriculum", action="store_true", help="plain training on all pairs")


def _diff_prompt_parser(methods: argparse._SubParsersAction) -> None:
    diff = methods.add_parser("diff-prompt", help="Diff-Prompt's stages (writes the bundle Load Diff-Prompt reads)")
    _common_options(diff, None, "{'vae_config': {MaskVAEConfig fields}, 'dit_config': ..., 'prompt_config': ..., "
                    "'vae_steps': ...}", steps=500, batch_size=16, checkpoint="a folder for each stage's state")
    diff.add_argument("--stage", choices=("all", "vae", "dit", "prompt"), default="all",
                      help="the stage(s); dit and prompt start from the bundle already at --out")
    diff.add_argument("--source", choices=("world", "folder", "jsonl", "refcoco"), default="world")
    diff.add_argument("--path", default="", help="image + _mask + .txt folder, a grounding JSONL or a RefCOCO refs "
                      "JSON")
    diff.add_argument("--image-root", default=None, help="where the JSONL's or RefCOCO's images are")
    diff.add_argument("--instances", default=None, help="RefCOCO's instances.json (default: beside the refs file)")
    diff.add_argument("--split", default="train", help="RefCOCO split(s), comma-separated; empty: all")
    diff.add_argument("--init-prompts", default=None, help="RPP pretrained prompts that start the global prompts")
    diff.add_argument("--ddim-steps", type=int, default=None)
    diff.add_argument("--prompted-layers", type=int, default=None)
    diff.add_argument("--mask-size", type=int, default=0, help="0: from the VLM's image size")


def _ipl_parser(methods: argparse._SubParsersAction) -> None:
    ipl = methods.add_parser("ipl", help="IPL on WorldGen (writes the native LoRA Apply IPL LoRA to WorldGen reads)")
    _common_options(ipl, 0.005, "{'config': {IPLConfig fields}}", steps=300, batch_size=2,
                    checkpoint="a folder for the stages' state")
    ipl.add_argument("--worldgen", default="worldgen", help="worldgen (the shipped one) or preset:NAME")
    ipl.add_argument("--method", choices=("ipl", "nada"), default="ipl")
    ipl.add_argument("--source-text", default=None, help="what WorldGen draws now (default: the flat style's phrase)")
    ipl.add_argument("--target-text", required=True, help="the domain to adapt to, e.g. 'an outline sketch'")
    ipl.add_argument("--mapper-steps", type=int, default=300)
    ipl.add_argument("--mapper-batch", type=int, default=32, help="the mapper's global batch")
    ipl.add_argument("--rank", type=int, default=4, help="LoRA rank (alpha = rank)")
    ipl.add_argument("--adaptive-layers", type=int, default=0, help="NADA layer selection: layers per step (0: all)")
    ipl.add_argument("--pool", type=int, default=256, help="latents WorldGen samples for the codes (0: Gaussian)")
    ipl.add_argument("--pool-steps", type=int, default=20, help="DDIM steps of the pool's latents")
    ipl.add_argument("--mapper-out", default=None, help="also write the latent mapper here")


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    parallel = data_parallel_from_env("gloo")  # every command trains on the CPU (nccl would refuse CPU tensors)
    trainers = {"rpp": train_rpp, "dcar": train_dcar, "inversion": train_inversion,
                "diff-prompt": train_diff_prompt_stages, "ipl": train_ipl}
    path = trainers[args.method](args, parallel)
    parallel.barrier()
    if parallel.is_main:
        print(f"wrote {path} ({parallel.world_size} process(es))")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
