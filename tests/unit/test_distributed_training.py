"""``python -m promptweave.train`` under ``torchrun`` on CPU with gloo (issue "training beyond one machine").

Two processes at global batch B must train the parameters one process trains at batch B: both see the same
batches in the same order and the gradients of equal halves are averaged. The only difference is the order of
floating-point sums (two half-batch means added, against one mean), about 1e-7 per step, which AdamW carries
through a few steps: 1e-5 absolute is the tolerance. A two-process run killed mid-training resumes on one process
to that same result.

The commands added later (inversion, diff-prompt, ipl) are trained once by one process (in this process) and once
by two processes (one torchrun launch runs all three, so the start-up is paid once). Their tolerance is 1e-4 on
what the file's loader gives back: the model's outputs on fixed inputs (inverter, Diff-Prompt, latent mapper) or
the trained tensors (the LoRA), and on the logged losses. Measured: at most 4e-6. Outputs rather than every tensor:
a parameter whose gradient is zero in exact arithmetic (a Mask-VAE convolution bias that the next GroupNorm
cancels) gets float noise for a gradient, and Adam's first step turns any nonzero noise into a step of ``lr``, so
such tensors differ by up to ``lr`` between any two runs that sum in another order (one process or two) while the
outputs do not see them. The mistakes the tests are for give more: an unsynchronised BatchNorm and per-rank dropout
masks move the inverter's weights by 8e-3, noise drawn per rank instead of for the whole batch moves Diff-Prompt's
outputs by 5e-4 after two steps a stage.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from promptweave.prompt_modules.core.artifacts import read_metadata, read_safetensors
from promptweave.prompt_modules.core.data import RetrievalBatch, cut_batch, read_part
from promptweave.prompt_modules.core.distributed import DataParallel

pytestmark = pytest.mark.slow

PACKAGE_PARENT = Path(__file__).resolve().parents[3]
COMMON = ["--vlm", "preset:tiny", "--batch-size", "8", "--seed", "3"]


def _train(
    tmp_path: Path, processes: int, *args: str, wait: bool = True, method: str = "rpp"
) -> subprocess.Popen | str:
    """Run the CLI in ``processes`` processes; its output (or, with ``wait=False``, the running launcher)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "promptweave.train"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
        "-m", "promptweave.train"]
    process = subprocess.Popen([*launcher, method, *COMMON, *args], cwd=PACKAGE_PARENT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    if not wait:
        return process
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    return output


def _max_difference(a: Path, b: Path) -> float:
    ta, _ = read_safetensors(a)
    tb, _ = read_safetensors(b)
    assert ta.keys() == tb.keys()
    return max(float((ta[k].float() - tb[k].float()).abs().max()) for k in ta)


def test_the_part_of_each_rank_and_refused_batch_sizes():
    parts = [DataParallel(rank, 4).part(8) for rank in range(4)]
    assert parts == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
    with pytest.raises(ValueError, match="batch size 6 is not divisible by the 4 processes"):
        DataParallel(0, 4).part(6)
    assert DataParallel().part(5) == slice(0, 5)


def test_shards_of_work_done_once_cover_every_item_once():
    assert [DataParallel(rank, 3).shard(7) for rank in range(3)] == [slice(0, 3), slice(3, 5), slice(5, 7)]
    assert [DataParallel(rank, 4).shard(2) for rank in range(4)] == [slice(0, 1), slice(1, 2), slice(2, 2),
                                                                     slice(2, 2)]
    assert DataParallel().gather_shards(torch.ones(2, 3)).shape == (2, 3)  # one process: the part itself


def test_each_rank_draws_its_rows_of_the_whole_batchs_noise():
    """What a rank draws is its rows of what one process draws for the whole batch (the same generator state)."""
    whole = torch.randn((6, 2), generator=torch.Generator().manual_seed(5))
    second = DataParallel(1, 2).randn((3, 2), generator=torch.Generator().manual_seed(5))
    assert torch.equal(second, whole[3:])
    steps = torch.randint(0, 1000, (6,), generator=torch.Generator().manual_seed(5))
    assert torch.equal(DataParallel(0, 3).randint(1000, 2, generator=torch.Generator().manual_seed(5)), steps[:2])
    assert torch.equal(DataParallel().randn((3, 2), generator=torch.Generator().manual_seed(5)), whole[:3])


class _WholeOnly:
    """A source that can only make the whole batch."""

    def batch(self, seed, step, batch_size):
        return RetrievalBatch(torch.arange(batch_size, dtype=torch.float32).view(-1, 1, 1, 1),
                              [f"caption {i}" for i in range(batch_size)], [["n"]] * batch_size,
                              torch.ones(batch_size, 1))


def test_a_rank_reads_its_part_and_a_source_that_cannot_is_cut():
    from promptweave.prompt_modules.diff_prompt import TensorGroundingSource

    source = TensorGroundingSource(torch.rand(10, 3, 8, 8), (torch.rand(10, 8, 8) > 0.5).float(),
                                   [f"thing {i}" for i in range(10)], size=8)
    whole = source.batch(2, 7, 6)
    part = read_part(source, 2, 7, 6, DataParallel(1, 3))
    assert part.texts == whole.texts[2:4] and torch.equal(part.images, whole.images[2:4])
    assert torch.equal(part.masks, whole.masks[2:4]) and torch.equal(part.boxes, whole.boxes[2:4])
    cut = read_part(_WholeOnly(), 0, 0, 4, DataParallel(1, 2))
    assert cut.positives == ["caption 2", "caption 3"] and cut.images.flatten().tolist() == [2.0, 3.0]
    assert cut.negative_weights.shape == (2, 1) and cut_batch(cut, slice(1, 2)).positives == ["caption 3"]
    assert read_part(source, 2, 7, 6).texts == whole.texts  # one process: the whole batch


def test_a_lazy_file_source_loads_only_the_ranks_images(grounding_jsonl, monkeypatch):
    from promptweave.prompt_modules.diff_prompt import read_grounding_jsonl

    source = read_grounding_jsonl(grounding_jsonl, size=32)
    whole = source.batch(1, 3, 4)
    loaded = []
    load = source.load
    monkeypatch.setattr(source, "load", lambda index: loaded.append(index) or load(index))
    part = read_part(source, 1, 3, 4, DataParallel(1, 2))
    assert len(loaded) == 2 and part.texts == whole.texts[2:]
    assert torch.equal(part.images, whole.images[2:]) and torch.equal(part.masks, whole.masks[2:])


@pytest.mark.parametrize("method", ["rpp", "dcar"])
def test_two_processes_train_what_one_process_trains(tmp_path, method):
    """DCAR's contrastive loss couples the samples of a batch: each rank encodes its part and the features are
    gathered (differentiably), so both ranks compute the whole batch's loss."""
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    _train(tmp_path, 1, "--steps", "4", "--out", str(one), method=method)
    _train(tmp_path, 2, "--steps", "4", "--out", str(two), "--log-csv", str(tmp_path / "log.csv"), method=method)
    assert _max_difference(one, two) < 1e-5
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 1 + 4  # rank 0 alone logs, once per step
    if method == "rpp":
        info = json.loads(read_metadata(two)["promptweave.info"])
        assert info["processes"] == 2 and info["steps"] == 4


def test_a_killed_two_process_run_resumes_on_one_process(tmp_path):
    steps = "24"
    full, resumed, state = tmp_path / "full.safetensors", tmp_path / "resumed.safetensors", tmp_path / "run.state"
    _train(tmp_path, 1, "--steps", steps, "--out", str(full))
    process = _train(tmp_path, 2, "--steps", steps, "--out", str(resumed), "--checkpoint", str(state),
                     "--checkpoint-every", "1", wait=False)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None:
            if state.is_file() and int(json.loads(read_metadata(state)["promptweave.step"])) >= 3:
                break
            time.sleep(0.05)
    finally:  # SIGKILL the launcher and both ranks (torchrun starts its workers in their own sessions)
        family = [process.pid, *(child.pid for child in psutil.Process(process.pid).children(recursive=True))]
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait(timeout=60)
    killed_at = int(json.loads(read_metadata(state)["promptweave.step"]))
    assert 3 <= killed_at < int(steps) and not resumed.exists(), "the run was not stopped mid-training"
    output = _train(tmp_path, 1, "--steps", steps, "--out", str(resumed), "--checkpoint", str(state))
    assert f"step {killed_at + 1}/{steps} " in output and "step 1/" not in output, output  # went on
    assert _max_difference(full, resumed) < 1e-5


# ----- the commands added later: inversion, diff-prompt, ipl --------------------------------------------------------
def _world_scenes(n: int):
    from promptweave.prompt_modules.world.sources import evaluation_set

    return evaluation_set("val", n)


def _png(path: Path, array) -> None:
    import numpy as np
    from PIL import Image

    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def pairs_folder(tmp_path_factory) -> Path:
    """Eight world scenes as image.png + image.txt pairs (what Train Prompt Inverter reads)."""
    from promptweave.prompt_modules.world.dataset import render_batch

    folder = tmp_path_factory.mktemp("pairs")
    batch = render_batch(range(8))
    for i, (image, caption) in enumerate(zip(batch["image"], batch["clean_caption"], strict=True)):
        _png(folder / f"{i}.png", (image.permute(1, 2, 0) * 255).round())
        (folder / f"{i}.txt").write_text(str(caption))
    return folder


@pytest.fixture(scope="module")
def grounding_jsonl(tmp_path_factory) -> Path:
    """Eight world objects as a grounding JSONL (image, mask, pixel box, expression): a source read per batch."""
    folder = tmp_path_factory.mktemp("grounding")
    data, rows = _world_scenes(8), []
    for i in range(8):
        side = data.images.shape[-1]
        _png(folder / f"{i}.png", (data.images[i].permute(1, 2, 0) * 255).round())
        _png(folder / f"{i}_mask.png", data.masks[i] * 255)
        x0, y0, x1, y1 = (float(v) * side for v in data.boxes[i])
        rows.append({"image": f"{i}.png", "mask": f"{i}_mask.png", "bbox": [x0, y0, x1 - x0, y1 - y0],
                     "expression": data.texts[i]})
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _commands(pairs: Path, grounding: Path) -> dict[str, list[str]]:
    tiny = ["--vlm", "preset:tiny", "--seed", "3"]
    return {
        "inversion": [*tiny, "--data", str(pairs), "--epochs", "2", "--batch-size", "4", "--hidden-width", "32",
                      "--vocab-size", "40"],
        "diff-prompt": [*tiny, "--source", "jsonl", "--path", str(grounding), "--steps", "2", "--batch-size", "4",
                        "--ddim-steps", "4"],
        "ipl": [*tiny, "--worldgen", "preset:tiny", "--target-text", "an outline sketch", "--mapper-steps", "3",
                "--mapper-batch", "4", "--steps", "3", "--batch-size", "2", "--pool", "6", "--pool-steps", "2"],
    }


def _outputs(folder: Path, method: str) -> list[str]:
    out = ["--out", str(folder / f"{method}.safetensors"), "--log-csv", str(folder / f"{method}.csv")]
    return out + (["--mapper-out", str(folder / "mapper.safetensors")] if method == "ipl" else [])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, pairs_folder, grounding_jsonl) -> dict[int, Path]:
    """{process count: the folder of its files}: every new command trained by one and by two processes."""
    from promptweave.train import main

    commands = _commands(pairs_folder, grounding_jsonl)
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    for method, args in commands.items():
        assert main([method, *args, *_outputs(one, method)]) == 0
    lines = [[method, *args, *_outputs(two, method)] for method, args in commands.items()]
    runner = Path(__file__).with_name("train_runner.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(runner),
         json.dumps(lines)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    return {1: one, 2: two}


def _losses(folder: Path, method: str) -> list[float]:
    rows = (folder / f"{method}.csv").read_text().splitlines()[1:]
    return [float(row.split(",")[1]) for row in rows]


def _max_gap(a, b) -> float:
    return max(float((torch.as_tensor(x) - torch.as_tensor(y)).abs().max()) for x, y in zip(a, b, strict=True))


TOLERANCE = 1e-4


def test_inversion_two_processes_predict_what_one_process_predicts(trained, pairs_folder):
    """The inverter's BatchNorm and dropout see the whole batch; its file loads with Load Prompt Inverter's
    loader and predicts the same embeddings and keyword logits (measured: 1e-7, 4e-7). The keyword calibration
    (two numbers LBFGS fits after training, stopping once the loss changes by less than 1e-9) moves by a few 1e-3
    with the last bits of its input, one process or two, so it is held to 1e-2."""
    from promptweave.prompt_modules.core.vlm import VisionLanguageModel
    from promptweave.prompt_modules.inversion import image_features, load_inverter
    from promptweave.prompt_modules.inversion.data import load_pair_folder

    vlm = VisionLanguageModel("tiny", seed=0)
    name, features = image_features("vlm", load_pair_folder(pairs_folder, int(vlm.image_size))[0], vlm=vlm)
    one, two = (load_inverter(trained[n] / "inversion.safetensors", backbone=name) for n in (1, 2))
    (emb_one, _), (emb_two, _) = one.predict(features, use_dakl=False), two.predict(features, use_dakl=False)
    with torch.no_grad():
        assert _max_gap([emb_one, one.vocab_head(emb_one)], [emb_two, two.vocab_head(emb_two)]) < TOLERANCE
    assert _max_gap([one.calibration], [two.calibration]) < 1e-2
    # 2 epochs of 2 steps, then the curriculum's 4 stages of 1 step (a fresh model on the easiest quarter, ...)
    assert len(_losses(trained[2], "inversion")) == len(_losses(trained[1], "inversion")) == 4 + 4
    assert _max_gap(_losses(trained[1], "inversion"), _losses(trained[2], "inversion")) < TOLERANCE


def test_diff_prompt_two_processes_ground_what_one_process_grounds(trained):
    """All three stages (each rank: its part of the batch, read from the files; its rows of the whole batch's
    VAE sample, timesteps, noise and DDIM start); the bundle loads with Load Diff-Prompt's loader."""
    from promptweave.prompt_modules.core.vlm import VisionLanguageModel
    from promptweave.prompt_modules.diff_prompt import load_diff_prompt

    vlm = VisionLanguageModel("tiny", seed=0)
    data = _world_scenes(4)
    outs = []
    for n in (1, 2):
        model = load_diff_prompt(trained[n] / "diff-prompt.safetensors", vlm)
        with torch.no_grad():
            out = model(vlm, data.images, data.texts, generator=torch.Generator().manual_seed(0))
        outs.append((out.mask_logits, out.boxes))
    assert _max_gap(*outs) < TOLERANCE
    assert len(_losses(trained[2], "diff-prompt")) == 3 * 2
    assert _max_gap(_losses(trained[1], "diff-prompt"), _losses(trained[2], "diff-prompt")) < TOLERANCE


def test_ipl_two_processes_adapt_what_one_process_adapts(trained):
    """The latent pool is sampled in shards, each rank generates its part of every batch, the mapper's contrastive
    loss gathers the features. The LoRA loads with Apply IPL LoRA to WorldGen's loader and adapts WorldGen, the mapper
    with Load Latent Mapper's. The first LoRA step's logged loss is left out: there the image direction is rounding
    noise below the loss's guard (G_t = G_s), which only the logged value sees."""
    import dataclasses

    from promptweave.prompt_modules.adaptation import (
        WorldGenGenerator,
        adapted_worldgen,
        load_lora_native,
        load_mapper,
    )
    from promptweave.prompt_modules.core.vlm import VisionLanguageModel
    from promptweave.prompt_modules.world.worldgen import WORLDGEN_PRESETS, WorldGen

    loras = [load_lora_native(trained[n] / "ipl.safetensors") for n in (1, 2)]
    assert loras[0].down.keys() == loras[1].down.keys()
    assert _max_gap([*loras[0].down.values(), *loras[0].up.values()],
                    [*loras[1].down.values(), *loras[1].up.values()]) < TOLERANCE  # measured 4e-6
    vlm = VisionLanguageModel("tiny", seed=0)
    gen = WorldGen(dataclasses.replace(WORLDGEN_PRESETS["tiny"], backbone=vlm.name), seed=0)
    generator = WorldGenGenerator(gen)
    codes = generator.latent_code(generator.sample_codes(4, 0))
    with torch.no_grad():  # the mapper's own weights are stored 100x (equalised learning rate): compare its output
        contexts = [load_mapper(trained[n] / "mapper.safetensors", vlm).mapper(codes) for n in (1, 2)]
    assert _max_gap([contexts[0]], [contexts[1]]) < TOLERANCE
    adapted_worldgen(gen, loras[1])  # fits the generator it was trained on
    one, two = _losses(trained[1], "ipl"), _losses(trained[2], "ipl")
    assert len(one) == len(two) == 3 + 3
    assert _max_gap(one[:3] + one[4:], two[:3] + two[4:]) < TOLERANCE
