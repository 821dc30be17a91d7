"""Benchmark ``headroom``: how much a backbone leaves to learn on each downstream task (issue 37).

A learned-prompt method can only show itself where the frozen backbone's zero-shot score sits well below what the
task's own training data allows. Per task this measures, on one backbone (``--backbone``), the zero-shot score and
the score of a simple supervised reference trained on the task's training set, and reports the gap in points:

- ``fine``: fine-category classification (27 categories, every render style), the skill behind RPP transfer and
  DCAR's category-aware prompts. Zero-shot: "a picture of a {category}."; reference: a linear probe (multinomial
  logistic regression on the frozen normalised image features, as in CLIP's linear-probe evaluation, Radford et
  al. 2021 sec. 3.2) on 16 shots per category. ``colour``: the same for the 20 fine colour names ("crimson",
  "navy", ...), which RPP's and DCAR's class names carry.
- ``retrieval``: image->text recall@1 (percent) over the world's captions plus their category-swap hard negatives
  (the gallery of the ``retrieval`` benchmark). Reference: the whole VLM fine-tuned contrastively with those hard
  negatives (NegCLIP's loss) on the same number of training pairs the ``retrieval`` benchmark's methods see; on
  ``val`` the best of :data:`RETRIEVAL_REFERENCE_LRS` (a reference held back by its learning rate would hide headroom).
- ``grounding``: picking the object a referring expression names among the scene's objects (flat style; the referent
  shares its shape family with another object, RefCOCO's rule), each object shown alone on the background
  (ReCLIP-style isolation, Subramanian et al. 2022). Zero-shot: the object whose image is closest to the expression;
  reference: the whole VLM fine-tuned on train scenes with that choice as a cross-entropy over each scene's objects
  (learning rate as for retrieval).
- ``inversion``: MiniLM cosine (x100) between the predicted and the true prompt, on prompts written as people
  write text-to-image prompts (:func:`~promptweave.prompt_modules.world.generation_prompts.generation_prompt`:
  style and quality words, missing attributes, words no image shows). Zero-shot: the ``inversion`` benchmark's
  CLIP-Interrogator baseline; reference: a linear map (ridge regression) from the image features to the
  prompt's MiniLM embedding, fitted on the training scenes.

Splits: ``val`` for design choices, ``test`` to report; training data always comes from the train split.
"""

from __future__ import annotations

import copy
import random

import torch
import torch.nn.functional as F

from ..prompt_modules.dual_prompt.model import encode_gallery
from ..prompt_modules.inversion import VLMImageEncoder, default_embedder, mean_cosine
from ..prompt_modules.world.clip_training import WorldCLIPTrainConfig, batch_loss, training_batch
from ..prompt_modules.world.scene import Scene, sample_scene, split_seed_range
from ..prompt_modules.world.sources import render_class_sample, same_family_referring, world_classes
from ..prompt_modules.world.vocabulary import CATEGORY_NAMES, COLOUR_NAMES, STYLES
from ..prompt_modules.world.zero_shot import category_prompts, colour_prompts, scenes_to_images, single_object_scenes
from .harness import TaskResult, bench_backbone
from .inversion import Interrogator, generation_prompts, world_batch
from .retrieval import BATCH_SIZE as RETRIEVAL_BATCH
from .retrieval import STEPS as RETRIEVAL_STEPS
from .retrieval import eval_set, recalls

SHOTS = 16
#: Fine-tuning steps of the grounding reference (16 train scenes each; the ``grounding`` benchmark's methods see
#: 1,500 batches of 32). 100 steps, the first choice, left 8.6 points of the 300-step reference's gain unlearnt on val.
GROUNDING_STEPS = 300
#: Learning rates of the fine-tuned references, swept on ``val`` (the reference is the best of them, so that a weak
#: learning rate does not pass for a small gap); ``test`` and ``--quick`` use the ``*_LR`` constants.
REFERENCE_LRS = (1e-5, 3e-5, 1e-4, 3e-4)
#: The retrieval reference's sweep (1,000 steps each): the two best of :data:`REFERENCE_LRS` at 200 steps on val
#: (WorldCLIP 2 3e-5, WorldCLIP-web 1e-4).
RETRIEVAL_REFERENCE_LRS = (3e-5, 1e-4)
RETRIEVAL_LR = 1e-4
GROUNDING_LR = 1e-4


@torch.no_grad()
def image_features(vlm, images: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    return torch.cat([vlm.encode_image(part) for part in images.split(chunk)]).float()


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, classes: int, *, weight_decay: float = 1e-3,
                 steps: int = 500, seed: int = 0) -> torch.nn.Linear:
    """Multinomial logistic regression on normalised features, full batch (Adam, ``steps`` steps)."""
    torch.manual_seed(seed)
    head = torch.nn.Linear(train_x.shape[1], classes)
    x = F.normalize(train_x, dim=-1)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05, weight_decay=weight_decay)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(head(x), train_y).backward()
        optimizer.step()
    return head


def fine_eval_set(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` single-object scenes of ``split``, a quarter in each render style, their category and colour ids."""
    per_style = n // len(STYLES)
    scenes = [sc for style in STYLES for sc in single_object_scenes(split, per_style, style=style)]
    categories = torch.tensor([sc.category_ids[0] for sc in scenes])
    colours = torch.tensor([sc.colour_ids[0] for sc in scenes])
    return scenes_to_images(scenes), categories, colours


def fine_train_set(seed: int, shots: int = SHOTS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``shots`` renders per category and, separately, per colour (random trainable partner attribute, render
    styles in turn), seeded by ``seed``: images and the category or colour label of each (-1 where not drawn for
    it)."""
    generator = torch.Generator().manual_seed(seed)
    images, categories, colours = [], [], []
    classes = world_classes()
    for attribute, names in (("category", CATEGORY_NAMES), ("colour", COLOUR_NAMES)):
        for label, name in enumerate(names):
            options = [c for c in classes if getattr(c, attribute) == name]
            for shot in range(shots):
                cls = options[int(torch.randint(len(options), (1,), generator=generator))]
                sample_seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
                images.append(render_class_sample(cls, sample_seed, style=STYLES[shot % len(STYLES)]))
                categories.append(label if attribute == "category" else -1)
                colours.append(label if attribute == "colour" else -1)
    return torch.stack(images), torch.tensor(categories), torch.tensor(colours)


def fine_headroom(vlm, split: str, seed: int, n_eval: int) -> dict[str, float]:
    """Fine categories (27-way) and fine colours (20-way): zero-shot prompts against linear probes."""
    images, categories, colours = fine_eval_set(split, n_eval)
    features = F.normalize(image_features(vlm, images), dim=-1)
    train_images, train_categories, train_colours = fine_train_set(seed)
    train_features = image_features(vlm, train_images)
    out = {}
    for task, prompts, labels, train_labels in (("fine", category_prompts(), categories, train_categories),
                                                ("colour", colour_prompts(), colours, train_colours)):
        with torch.no_grad():
            text = F.normalize(vlm.encode_text(prompts).float(), dim=-1)
        out[f"{task}_zero_shot"] = 100.0 * float(((features @ text.T).argmax(1) == labels).float().mean())
        rows = train_labels >= 0
        head = linear_probe(train_features[rows], train_labels[rows], len(prompts), seed=seed)
        with torch.no_grad():
            out[f"{task}_probe"] = 100.0 * float((head(features).argmax(1) == labels).float().mean())
    return out


def finetune_retrieval(vlm, seed: int, steps: int = RETRIEVAL_STEPS, batch_size: int = RETRIEVAL_BATCH,
                       lr: float = 1e-4):
    """A copy of ``vlm``, both towers fine-tuned with the CLIP loss plus 2 category-swap hard negatives per image
    (weight 1) on world train pairs (every style)."""
    model = copy.deepcopy(vlm).train().requires_grad_(True)
    config = WorldCLIPTrainConfig(vlm=vlm.config.to_dict(), steps=steps, batch_size=batch_size, pretrain_steps=0,
                                  partial_captions=0.0, style_captions=0.0, hard_negatives=2, seed=1000 + seed)
    optimizer = torch.optim.AdamW(model.clip.parameters(), lr=lr, weight_decay=0.0)
    for step in range(steps):
        batch = training_batch(config, step)
        loss = batch_loss(model, batch.images, batch.captions, batch.negatives, hard_negative_weight=1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval().requires_grad_(False)


@torch.no_grad()
def i2t_r1(vlm, images: torch.Tensor, captions: list[str], gallery: list[str]) -> float:
    features, text = encode_gallery(vlm, None, images, gallery)
    return recalls(features.float() @ text.float().T, len(captions))["i2t_r1"]


def best_of(prefix: str, scores: dict[float, float]) -> dict[str, float]:
    """``{prefix}_finetune`` (the best score), ``{prefix}_finetune_lr`` and each ``{prefix}_finetune_lr=...``."""
    best = max(scores, key=scores.__getitem__)
    out = {f"{prefix}_finetune": scores[best], f"{prefix}_finetune_lr": best}
    if len(scores) > 1:
        out.update({f"{prefix}_finetune_lr={lr:g}": score for lr, score in scores.items()})
    return out


def retrieval_headroom(vlm, split: str, seed: int, n_eval: int, steps: int,
                       lrs: tuple[float, ...] = (RETRIEVAL_LR,)) -> dict[str, float]:
    images, captions, gallery = eval_set(split, n_eval)
    zero_shot = i2t_r1(vlm, images, captions, gallery)
    tuned = {lr: i2t_r1(finetune_retrieval(vlm, seed, steps=steps, lr=lr), images, captions, gallery) for lr in lrs}
    return {"retrieval_zero_shot": zero_shot, **best_of("retrieval", tuned)}


def referring_scenes(split: str, n: int, offset: int = 0, same_family: bool = True) -> list[tuple[Scene, int, str]]:
    """``(scene, referent index, expression)`` for the first ``n`` scenes of ``split`` (from ``offset``) with a
    referent that shares its shape family with another object of the scene (RefCOCO's rule, as the ``grounding``
    benchmark's :func:`evaluation_set`; ``same_family=False``: any unique expression of a scene of two or more
    objects). The expression is drawn by the scene's seed."""
    found: list[tuple[Scene, int, str]] = []
    seed = split_seed_range(split).start + offset
    while len(found) < n:
        scene = sample_scene(seed)
        options = same_family_referring(scene) if same_family else scene.referring
        if len(scene.objects) >= 2 and options:
            index, text = random.Random(seed).choice(options)
            found.append((scene, index, text))
        seed += 1
    return found


def isolated_objects(scene: Scene) -> torch.Tensor:
    """``[N, 3, H, W]``: each object of ``scene`` alone, every other pixel painted with the background colour."""
    image = torch.from_numpy(scene.image).permute(2, 0, 1).float() / 255.0
    background = torch.tensor(scene.background_rgb, dtype=torch.float32)[:, None, None] / 255.0
    masks = torch.from_numpy(scene.masks)[:, None]
    return torch.where(masks, image[None], background[None])


def selection_logits(vlm, items: list[tuple[Scene, int, str]]) -> list[torch.Tensor]:
    """Per scene, the cosine of each isolated object to the expression."""
    crops = [isolated_objects(scene) for scene, _, _ in items]
    features = F.normalize(vlm.encode_image(torch.cat(crops)).float(), dim=-1)
    text = F.normalize(vlm.encode_text([t for _, _, t in items]).float(), dim=-1)
    out, start = [], 0
    for k, crop in enumerate(crops):
        out.append(features[start : start + len(crop)] @ text[k])
        start += len(crop)
    return out


def selection_accuracy(vlm, items: list[tuple[Scene, int, str]]) -> float:
    with torch.no_grad():
        picks = [int(scores.argmax()) for chunk in range(0, len(items), 64)
                 for scores in selection_logits(vlm, items[chunk : chunk + 64])]
    return 100.0 * sum(p == index for p, (_, index, _) in zip(picks, items, strict=True)) / len(items)


def finetune_selection(vlm, seed: int, steps: int, batch_size: int = 16, lr: float = 1e-4):
    """A copy of ``vlm`` fine-tuned to pick the referent: cross-entropy over each train scene's isolated objects."""
    model = copy.deepcopy(vlm).train().requires_grad_(True)
    train = referring_scenes("train", steps * batch_size, offset=seed * 1_000_000)
    optimizer = torch.optim.AdamW(model.clip.parameters(), lr=lr, weight_decay=0.0)
    for step in range(steps):
        items = train[step * batch_size : (step + 1) * batch_size]
        logits = selection_logits(model, items)
        scale = model.logit_scale
        loss = torch.stack([F.cross_entropy(scale * row[None], torch.tensor([index]))
                            for row, (_, index, _) in zip(logits, items, strict=True)]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval().requires_grad_(False)


def grounding_headroom(vlm, split: str, seed: int, n_eval: int, steps: int,
                       lrs: tuple[float, ...] = (GROUNDING_LR,)) -> dict[str, float]:
    items = referring_scenes(split, n_eval)
    tuned = {lr: selection_accuracy(finetune_selection(vlm, seed, steps, lr=lr), items) for lr in lrs}
    return {"grounding_zero_shot": selection_accuracy(vlm, items), **best_of("grounding", tuned)}


def prompt_pairs(split: str, n: int, offset: int = 0) -> tuple[torch.Tensor, list[str]]:
    """``n`` scenes of ``split`` (mixed styles) and their generation prompts (:func:`.inversion.generation_prompts`)."""
    batch = world_batch(split, n, offset)
    return batch["image"], generation_prompts(batch)


def inversion_headroom(vlm, split: str, seed: int, n_eval: int, n_train: int) -> dict[str, float]:
    embed = default_embedder()
    encoder = VLMImageEncoder(vlm)
    test_images, test_prompts = prompt_pairs(split, n_eval)
    train_images, train_prompts = prompt_pairs("train", n_train, offset=seed * 1_000_000)
    test_target = embed(test_prompts).float()
    with torch.no_grad():
        test_x, train_x = encoder(test_images).float(), encoder(train_images).float()
    zero_shot = mean_cosine(embed(Interrogator(vlm)(test_images, test_x)).float(), test_target)
    # ridge regression with a bias column
    x = torch.cat([train_x, torch.ones(len(train_x), 1)], 1)
    y = embed(train_prompts).float()
    weights = torch.linalg.solve(x.T @ x + 1e-2 * torch.eye(x.shape[1]), x.T @ y)
    predicted = torch.cat([test_x, torch.ones(len(test_x), 1)], 1) @ weights
    return {"inversion_zero_shot": 100.0 * zero_shot, "inversion_probe": 100.0 * mean_cosine(predicted, test_target)}


def run(seed: int, split: str, quick: bool) -> TaskResult:
    name, vlm = bench_backbone()
    vlm = vlm.requires_grad_(False).eval()
    n_eval = 200 if quick else 1000
    metrics: dict[str, float] = {}
    metrics.update(fine_headroom(vlm, split, seed, n_eval))
    sweep = split == "val" and not quick
    metrics.update(retrieval_headroom(vlm, split, seed, 200 if quick else 500, steps=40 if quick else RETRIEVAL_STEPS,
                                      lrs=RETRIEVAL_REFERENCE_LRS if sweep else (RETRIEVAL_LR,)))
    metrics.update(grounding_headroom(vlm, split, seed, 200 if quick else 500, steps=20 if quick else GROUNDING_STEPS,
                                      lrs=REFERENCE_LRS if sweep else (GROUNDING_LR,)))
    metrics.update(inversion_headroom(vlm, split, seed, n_eval, 1000 if quick else 4000))
    tasks = (("fine", "probe"), ("colour", "probe"), ("retrieval", "finetune"), ("grounding", "finetune"),
             ("inversion", "probe"))
    for task, reference in tasks:
        metrics[f"{task}_gap"] = metrics[f"{task}_{reference}"] - metrics[f"{task}_zero_shot"]
    notes = {"backbone": name, "shots_per_category": SHOTS, "n_eval": n_eval, "first_eval_seed":
             split_seed_range(split).start, "gap_needed": 15.0}
    return TaskResult(metrics=metrics, notes=notes)
