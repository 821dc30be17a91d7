"""``bench scale``: every capability at real shapes, one training step and one inference call each.

Random-weight models of the published shapes (no pretrained weights exist here; this measures cost, not quality):
open_clip ViT-B/32 (and ViT-L/14 without ``--quick``) as the VLM at its own 224 px, the SD1.5 U-Net with the SD VAE
for IPL (256 px with ``--quick``, 512 px without) and, without ``--quick``, the full SDXL base U-Net (2.6 B
parameters; random pooled embedding and size ids) with the SD VAE for IPL at reduced resolution, 256 px. Per
capability it records ``<capability>_ok`` (1 when both calls ran and gave finite outputs), seconds per training
step (the time between two steps' callbacks, so set-up such as prompt initialisation is not counted), the inference
call's seconds and the process's peak resident memory during both (CPU: the whole process, models included).
Baselines: the bare VLM's forward+backward step on the same batch (the prompt methods' overhead is their step over
it) and a plain PEFT LoRA noise-prediction step on the same U-Net (IPL's overhead over ordinary LoRA training), with
its own peak memory. The device is named in the notes.
"""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Callable
from typing import Any

import open_clip
import psutil
import torch
import torch.nn.functional as F

from ..prompt_modules.adaptation import IPLConfig, run_adaptation, sd_generator_from_diffusers
from ..prompt_modules.adaptation.model import LoRAAdapter
from ..prompt_modules.core.sd_models import SD15_FULL_UNET_CONFIG, SDXL_FULL_UNET_CONFIG
from ..prompt_modules.core.vlm import VisionLanguageModel, VLMConfig
from ..prompt_modules.diff_prompt import train_diff_prompt
from ..prompt_modules.dual_prompt import DualPromptConfig, rank_images, train_dual_prompt
from ..prompt_modules.inversion import train_inverter_on_prompts
from ..prompt_modules.inversion.encoders import image_features
from ..prompt_modules.pretraining import RPPConfig, classify, pretrain_prompts
from ..prompt_modules.world.sources import WorldClassSource, WorldGroundingSource, WorldSource, world_classes
from .harness import TaskResult

BATCH = 2
STEPS = 2
#: IPL on the full SDXL U-Net runs at 256 px (32x32 latents), not SDXL's 1024: what fits a CPU's memory and time.
SDXL_IMAGE_SIZE = 256


class PeakMemory:
    """Peak resident memory (MiB) of the whole process while the block runs, sampled every 20 ms. On a CPU there
    is no per-call allocator peak: this includes every model the process holds at the time."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.peak_mb = 0.0

    def __enter__(self) -> PeakMemory:
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak, self.process.memory_info().rss) / 2**20


class StepClock:
    """A training callback that keeps the time of each step's end."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, *args: Any) -> None:
        self.times.append(time.perf_counter())

    @property
    def seconds_per_step(self) -> float:
        """The last step's seconds (the end of the step before it to its end)."""
        return self.times[-1] - self.times[-2] if len(self.times) >= 2 else float("nan")


def _finite(value: Any) -> bool:
    if torch.is_tensor(value):
        return bool(torch.isfinite(value.float()).all())
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    return value is not None


def measure(name: str, train: Callable[[StepClock], Any], infer: Callable[[Any], Any]) -> dict[str, float]:
    """``<name>_ok``, ``<name>_step_s``, ``<name>_infer_s``, ``<name>_peak_rss_mb`` of one capability."""
    clock = StepClock()
    ok = 1.0
    with PeakMemory() as memory:
        try:
            trained = train(clock)
            start = time.perf_counter()
            out = infer(trained)
            infer_s = time.perf_counter() - start
            ok = float(_finite(out))
        except Exception as exc:  # a capability that fails is recorded as not ok, the others still run
            print(f"scale: {name} failed: {type(exc).__name__}: {exc}")
            ok, infer_s = 0.0, float("nan")
    record = {f"{name}_ok": ok, f"{name}_step_s": clock.seconds_per_step, f"{name}_infer_s": infer_s,
              f"{name}_peak_rss_mb": memory.peak_mb}
    print("scale: " + ", ".join(f"{k} {v:.3g}" for k, v in record.items()))
    return record


def random_vlm(family: str, seed: int) -> VisionLanguageModel:
    """open_clip's ``family`` shape (its offline config registry) with random weights."""
    return VisionLanguageModel(VLMConfig.from_open_clip_cfg(open_clip.get_model_config(family)), seed=seed).eval()


def backbone_step(vlm: VisionLanguageModel, images: torch.Tensor, texts: list[str]) -> float:
    """Seconds of the bare VLM's forward+backward on the batch (gradients to the input, the weights frozen)."""
    for p in vlm.parameters():
        p.requires_grad_(False)
    times = []
    for _ in range(STEPS):
        start = time.perf_counter()
        pixels = images.clone().requires_grad_(True)
        loss = (vlm.encode_image(pixels) @ vlm.encode_text(texts).T).sum()
        loss.backward()
        times.append(time.perf_counter() - start)
    return times[-1]


def vlm_capabilities(vlm: VisionLanguageModel, key: str, seed: int) -> dict[str, float]:
    """DCAR, RPP, Diff-Prompt (its prompt stage, the last steps) and inversion on ``vlm``: the second training
    step's seconds and one inference call each."""
    data = WorldGroundingSource().batch(seed, 0, BATCH)
    images, texts = data.images, list(data.texts)
    metrics = {f"{key}_backbone_step_s": backbone_step(vlm, images, texts)}
    metrics.update(measure(
        f"{key}_dcar",
        lambda clock: train_dual_prompt(vlm, WorldSource(), DualPromptConfig(), steps=STEPS, batch_size=BATCH,
                                        seed=seed, callback=clock, progress=False, bank_batches=1).dual,
        lambda dual: rank_images(vlm, images, texts[0], dual),
    ))
    classes = world_classes()[:16]
    source = WorldClassSource(classes, shots=2)
    metrics.update(measure(
        f"{key}_rpp",
        lambda clock: pretrain_prompts(vlm, source, RPPConfig(classes_per_step=8), steps=STEPS, batch_size=BATCH,
                                       seed=seed, callback=clock, progress=False).rpp,
        lambda rpp: classify(vlm, images, source.class_names, rpp),
    ))
    metrics.update(measure(
        f"{key}_diff_prompt",
        lambda clock: train_diff_prompt(vlm, WorldGroundingSource(), vae_steps=1, dit_steps=1, prompt_steps=STEPS,
                                        batch_size=BATCH, seed=seed, callback=clock, progress=False).model,
        lambda model: model(vlm, images, texts, generator=torch.Generator().manual_seed(seed)).masks_at(64, 64, 0.5),
    ))

    def train_inversion(clock: StepClock):  # the VLM's features of the training images, then the head
        name, features = image_features("vlm", torch.cat([images] * 2), vlm=vlm)
        return train_inverter_on_prompts(features, texts * 2, name, vocab_size=32, epochs=STEPS, batch_size=BATCH,
                                         hidden_width=64, seed=seed, callback=clock).inverter

    metrics.update(measure(f"{key}_inversion", train_inversion,
                           lambda inverter: inverter(image_features("vlm", images, vlm=vlm)[1])))
    for name in ("dcar", "rpp", "diff_prompt"):
        metrics[f"{key}_{name}_overhead"] = metrics[f"{key}_{name}_step_s"] / metrics[f"{key}_backbone_step_s"]
    return metrics


def sdxl_added_cond(unet_config: dict, size: int) -> dict[str, torch.Tensor]:
    """Random SDXL added conditioning of the U-Net's widths: a pooled text embedding and the six size/crop ids of
    a ``size`` px image (original size, crop corner, target size)."""
    pooled = int(unet_config["projection_class_embeddings_input_dim"]) - 6 * int(unet_config["addition_time_embed_dim"])
    return {"text_embeds": torch.randn(1, pooled) * 0.1, "time_ids": torch.tensor([[size, size, 0, 0, size, size]],
                                                                                    dtype=torch.float32)}


def ipl_on_unet(vlm: VisionLanguageModel, size: int, seed: int, key: str = "ipl_sd15",
                unet_config: dict | None = None, vae_config: dict | None = None) -> dict[str, float]:
    """IPL's LoRA step on a U-Net (default: SD1.5's) + SD VAE at ``size`` px beside a plain PEFT LoRA step on that
    U-Net, recorded under ``key`` (other shapes through ``unet_config`` / ``vae_config``; the VAE's default is
    diffusers', the SD VAE). An SDXL U-Net (``text_time`` added embedding) gets random pooled embeddings and size
    ids in both steps; the text context is random tokens of the U-Net's context width in both (the text encoders'
    cost is not part of a LoRA step)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet_config = unet_config or SD15_FULL_UNET_CONFIG
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config).eval().requires_grad_(False)
    vae = AutoencoderKL(**(vae_config or {})).eval().requires_grad_(False)
    context = torch.randn(1, 77, unet.config.cross_attention_dim) * 0.1
    added = sdxl_added_cond(unet_config, size) if unet_config.get("addition_embed_type") == "text_time" else {}
    generator = sd_generator_from_diffusers(unet, vae, context, image_size=size, sample_steps=1, copy_modules=False,
                                            added_cond=added or None)
    config = IPLConfig(source_text="photo", target_text="neon sign", mapper_steps=1, mapper_batch=BATCH,
                       steps=STEPS, batch_size=BATCH, rank=4)

    def train(clock: StepClock):
        return run_adaptation(generator, vlm, config,
                              callback=lambda stage, *rest: clock() if stage == "lora" else None)

    metrics = measure(key, train, lambda result: generator.generate(generator.sample_codes(1, seed)))
    # the baseline: ordinary LoRA fine-tuning of the same U-Net (noise prediction, batch BATCH)
    adapter = LoRAAdapter(unet, generator.lora_targets, rank=4, alpha=4.0, seed=seed)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-4)
    latents = torch.randn(BATCH, 4, size // 8, size // 8)
    batch_added = {k: v.expand(BATCH, -1) for k, v in added.items()} or None
    times = []
    with PeakMemory() as memory:
        for _ in range(STEPS):
            start = time.perf_counter()
            noise = torch.randn_like(latents)
            t = torch.full((BATCH,), 500.0)
            pred = unet(latents + noise, t, encoder_hidden_states=context.expand(BATCH, -1, -1),
                        added_cond_kwargs=batch_added).sample
            loss = F.mse_loss(pred, noise)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
    metrics[f"{key}_lora_baseline_step_s"] = times[-1]
    metrics[f"{key}_lora_baseline_peak_rss_mb"] = memory.peak_mb
    metrics[f"{key}_overhead"] = metrics[f"{key}_step_s"] / times[-1]
    return metrics


def ipl_on_sd15(vlm: VisionLanguageModel, size: int, seed: int, unet_config: dict | None = None,
                vae_config: dict | None = None) -> dict[str, float]:
    """:func:`ipl_on_unet` on the SD1.5 U-Net (or ``unet_config``), recorded as ``ipl_sd15_*``."""
    return ipl_on_unet(vlm, size, seed, "ipl_sd15", unet_config, vae_config)


def run(seed: int, split: str, quick: bool) -> TaskResult:
    torch.set_grad_enabled(True)
    families = ["ViT-B-32"] if quick else ["ViT-B-32", "ViT-L-14"]
    size = 256 if quick else 512
    metrics: dict[str, float] = {}
    for family in families:
        vlm = random_vlm(family, seed)
        metrics.update(vlm_capabilities(vlm, family.lower().replace("-", "_"), seed))
    judge = random_vlm("ViT-B-32", seed)
    metrics.update(ipl_on_sd15(judge, size, seed))
    if not quick:  # 2.6 B parameters: 10 GB in fp32 and minutes to build and step on a CPU
        metrics.update(ipl_on_unet(judge, SDXL_IMAGE_SIZE, seed, "ipl_sdxl", SDXL_FULL_UNET_CONFIG))
    device = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    notes = {"device": device, "vlms": families, "ipl_image_size": size, "batch_size": BATCH,
             "ipl_sdxl_image_size": None if quick else SDXL_IMAGE_SIZE,
             "weights": "random, real shapes (no quality measured)"}
    return TaskResult(metrics=metrics, notes=notes)
