"""Val pilot for issue 37's two short gaps: where retrieval's and grounding's headroom is lost (BENCHMARKS.md).

    .venv/bin/python -m promptweave.bench.pilots.headroom_design retrieval|grounding [--backbone-file F]
        [--json out.json]

``retrieval``: on the ``headroom`` benchmark's val gallery (500 captions and their 6 category-swap negatives
each), the zero-shot and fine-tuned (lr 1e-4) scores broken down: recall@1 over the whole gallery, over the
captions alone (is it the scenes that are confused?) and against the image's own 6 negatives alone (is it the
category names?); the reference is scored after 200 (the benchmark's budget), 600 and 1500 steps.

``grounding``: the ``headroom`` benchmark's isolated-object selection on three sets of val scenes: all of them, those
where another object shares the referent's shape family, and those where another object of the family also
matches every other attribute the expression names (only the fine category name tells them apart). The reference
is trained on train scenes of the same kind, lr 3e-4 (val's best), 100 and 300 steps of 16 scenes.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch
import torch.nn.functional as F

from promptweave.bench.harness import BACKBONE_FILE_ENV, bench_backbone
from promptweave.bench.headroom import referring_scenes, selection_accuracy, selection_logits
from promptweave.bench.retrieval import eval_set
from promptweave.prompt_modules.dual_prompt.model import encode_gallery
from promptweave.prompt_modules.world.captions import NUM_HARD_NEGATIVES, attribute_value
from promptweave.prompt_modules.world.clip_training import WorldCLIPTrainConfig, batch_loss, training_batch
from promptweave.prompt_modules.world.vocabulary import family_of


@torch.no_grad()
def retrieval_breakdown(vlm, images, captions, gallery) -> dict[str, float]:
    image, text = encode_gallery(vlm, None, images, gallery)
    sims = image.float() @ text.float().T
    n = len(captions)
    idx = torch.arange(n)
    positive = sims[idx, idx]
    own = torch.stack([sims[i, n + i * NUM_HARD_NEGATIVES : n + (i + 1) * NUM_HARD_NEGATIVES] for i in range(n)])
    return {
        "r1_gallery": 100.0 * float(((sims > positive[:, None]).sum(1) == 0).float().mean()),
        "r1_captions_only": 100.0 * float(((sims[:, :n] > positive[:, None]).sum(1) == 0).float().mean()),
        "own_negatives_acc": 100.0 * float(((own > positive[:, None]).sum(1) == 0).float().mean()),
    }


def retrieval(vlm, checkpoints=(200, 600, 1500), lr: float = 1e-4, n_eval: int = 500) -> dict:
    images, captions, gallery = eval_set("val", n_eval)
    out = {"zero_shot": retrieval_breakdown(vlm, images, captions, gallery)}
    print("zero-shot", out["zero_shot"], flush=True)
    model = copy.deepcopy(vlm).train().requires_grad_(True)
    config = WorldCLIPTrainConfig(vlm=vlm.config.to_dict(), steps=max(checkpoints), batch_size=32, pretrain_steps=0,
                                  partial_captions=0.0, style_captions=0.0, hard_negatives=2, seed=1000)
    optimizer = torch.optim.AdamW(model.clip.parameters(), lr=lr, weight_decay=0.0)
    for step in range(max(checkpoints)):
        batch = training_batch(config, step)
        loss = batch_loss(model, batch.images, batch.captions, batch.negatives, hard_negative_weight=1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step + 1 in checkpoints:
            model.eval()
            out[f"finetune_{step + 1}"] = retrieval_breakdown(model, images, captions, gallery)
            print(step + 1, out[f"finetune_{step + 1}"], flush=True)
            model.train()
    return out


def family_shared(scene, index: int, text: str) -> bool:
    family = family_of(scene.objects[index].category)
    return any(j != index and family_of(o.category) == family for j, o in enumerate(scene.objects))


def fine_only(scene, index: int, text: str) -> bool:
    spec = next(r for r in scene.referring_specs if r.object_index == index and r.text == text)
    others = {k: v for k, v in spec.attributes.items() if k != "category"}
    family = family_of(scene.objects[index].category)
    return any(j != index and family_of(o.category) == family
               and all(attribute_value(o, k) == v for k, v in others.items()) for j, o in enumerate(scene.objects))


def filtered(split: str, n: int, keep, offset: int = 0) -> list:
    found, chunk = [], 0
    while len(found) < n:
        batch = referring_scenes(split, 2000, offset=offset + chunk * 20_000)
        found += [item for item in batch if keep(*item)]
        chunk += 1
    return found[:n]


def grounding(vlm, lr: float = 3e-4, checkpoints=(100, 300), batch_size: int = 16, n_eval: int = 500) -> dict:
    out = {}
    for name, keep in (("all", lambda *_: True), ("family_shared", family_shared), ("fine_only", fine_only)):
        items = filtered("val", n_eval, keep)
        train = filtered("train", max(checkpoints) * batch_size, keep)
        row = {"zero_shot": selection_accuracy(vlm, items),
               "objects_per_scene": sum(len(s.objects) for s, _, _ in items) / len(items)}
        model = copy.deepcopy(vlm).train().requires_grad_(True)
        optimizer = torch.optim.AdamW(model.clip.parameters(), lr=lr, weight_decay=0.0)
        for step in range(max(checkpoints)):
            batch = train[step * batch_size : (step + 1) * batch_size]
            logits = selection_logits(model, batch)
            loss = torch.stack([F.cross_entropy(model.logit_scale * row_[None], torch.tensor([index]))
                                for row_, (_, index, _) in zip(logits, batch, strict=True)]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step + 1 in checkpoints:
                model.eval()
                row[f"finetune_{step + 1}"] = selection_accuracy(model, items)
                model.train()
        out[name] = row
        print(name, row, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("task", choices=("retrieval", "grounding"))
    parser.add_argument("--backbone-file", default="weights/worldclip-web.safetensors")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ[BACKBONE_FILE_ENV] = os.path.abspath(args.backbone_file)
    name, vlm = bench_backbone()
    vlm = vlm.requires_grad_(False).eval()
    start = time.time()
    result = {"backbone": name, args.task: (retrieval if args.task == "retrieval" else grounding)(vlm)}
    result["seconds"] = round(time.time() - start, 1)
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
