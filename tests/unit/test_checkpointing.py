"""Resumable training state: a resumed run reproduces an uninterrupted one bit for bit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from promptweave.prompt_modules.core.artifacts import ArtifactError
from promptweave.prompt_modules.core.checkpointing import load_training_state, save_training_state
from promptweave.prompt_modules.core.training import run_resumable_loop


def _train(model, optimizer, start, stop, seed=0):
    for step in range(start, stop):
        g = torch.Generator().manual_seed(seed + step)
        x = torch.randn(8, 4, generator=g)
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean() + 0.01 * torch.rand(1).item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _fresh():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 1))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


def test_resume_reproduces_uninterrupted_run(tmp_path):
    model_a, opt_a = _fresh()
    _train(model_a, opt_a, 0, 10)

    model_b, opt_b = _fresh()
    _train(model_b, opt_b, 0, 4)
    save_training_state(tmp_path / "state.safetensors", model_b, opt_b, 4, backbone="toy", extra={"lr": 1e-2})
    torch.manual_seed(123)  # the process dies; a new one starts with another RNG state
    model_c, opt_c = _fresh()
    step, extra = load_training_state(tmp_path / "state.safetensors", model_c, opt_c, backbone="toy")
    assert step == 4 and extra == {"lr": 1e-2}
    _train(model_c, opt_c, step, 10)
    for a, c in zip(model_a.parameters(), model_c.parameters(), strict=True):
        assert torch.equal(a, c)


def test_wrong_backbone_and_wrong_file_are_refused(tmp_path):
    model, opt = _fresh()
    save_training_state(tmp_path / "s.safetensors", model, opt, 1, backbone="toy")
    with pytest.raises(ArtifactError, match="checkpoint for 'toy', not 'other'"):
        load_training_state(tmp_path / "s.safetensors", model, opt, backbone="other")
    from promptweave.prompt_modules.core.learned_prompt import LearnedPrompt, LearnedPromptConfig

    LearnedPrompt(LearnedPromptConfig()).save(tmp_path / "p.safetensors")
    with pytest.raises(ArtifactError, match="not a PromptWeave training checkpoint"):
        load_training_state(tmp_path / "p.safetensors", model, opt)


def _loop_run(tmp_path, callback=None, steps=6):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def step_fn(step):
        x = torch.randn(8, 3)  # drawn from the per-step seed the loop sets
        loss = (model(x) - x.sum(dim=1, keepdim=True)).pow(2).mean()
        return loss, {"step": float(step)}

    tmp_path.mkdir(exist_ok=True)
    ckpt = tmp_path / "loop.safetensors"
    result = run_resumable_loop(
        model,
        optimizer,
        step_fn,
        steps=steps,
        seed=3,
        backbone="test",
        checkpoint_path=ckpt,
        checkpoint_every=100,
        callback=callback,
        progress=False,
    )
    return model, result


def test_shared_loop_interrupts_saves_and_resumes_like_an_uninterrupted_run(tmp_path):
    full_model, full = _loop_run(tmp_path / "a")
    assert full.steps_done == 6 and not full.interrupted and full.logs["step"] == [0, 1, 2, 3, 4, 5]
    assert full.losses[-1] < full.losses[0]

    part_model, part = _loop_run(tmp_path / "b", callback=lambda done, steps, loss: done < 2)
    assert part.interrupted and part.steps_done == 2
    resumed_model, resumed = _loop_run(tmp_path / "b")  # a fresh model: everything comes from the checkpoint
    assert resumed.losses == full.losses and resumed.logs == full.logs and not resumed.interrupted
    assert torch.equal(resumed_model.weight, full_model.weight)


KILLED_RUN = """
import sys, time
import torch
torch.set_num_threads(1)
from promptweave.prompt_modules.dual_prompt import DualPromptConfig, train_dual_prompt
from promptweave.prompt_modules.world.sources import WorldSource
from promptweave.prompt_modules.core.vlm import VisionLanguageModel
config = DualPromptConfig(n_text=2, n_visual=2, text_depth=1, visual_depth=1, bank_size=8)
def slow(step, steps, loss):
    print(step, flush=True)
    time.sleep(0.3)
train_dual_prompt(VisionLanguageModel("tiny", seed=0), WorldSource(config=config), config, steps=12, batch_size=4,
                  seed=5, bank_batches=1, checkpoint_path=sys.argv[1], checkpoint_every=2, callback=slow,
                  progress=False)
"""


@pytest.mark.slow
def test_a_killed_training_process_leaves_a_checkpoint_that_resumes_exactly(tmp_path):
    """SIGKILL in the middle of training (no chance to clean up): the checkpoint under the real name is the last
    good one, and resuming from it gives the uninterrupted run's result bit for bit."""
    import subprocess
    import sys

    from promptweave.prompt_modules.core.artifacts import meta_field, read_metadata
    from promptweave.prompt_modules.core.vlm import VisionLanguageModel
    from promptweave.prompt_modules.dual_prompt import DualPromptConfig, train_dual_prompt
    from promptweave.prompt_modules.world.sources import WorldSource

    ckpt = tmp_path / "run.state.safetensors"
    process = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(ckpt)], stdout=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:
            if int(line) >= 7:  # checkpoints were written at steps 2, 4, 6; step 8's is next
                break
    finally:
        process.kill()
        process.wait(timeout=60)
    assert process.returncode != 0 and ckpt.is_file()
    step = int(meta_field(read_metadata(ckpt), "step"))
    assert step in (6, 8)

    config = DualPromptConfig(n_text=2, n_visual=2, text_depth=1, visual_depth=1, bank_size=8)
    kwargs = dict(steps=12, batch_size=4, seed=5, bank_batches=1, progress=False)
    vlm = VisionLanguageModel("tiny", seed=0)
    ran = []
    resumed = train_dual_prompt(vlm, WorldSource(config=config), config, checkpoint_path=ckpt,
                                callback=lambda s, n, loss: ran.append(s), **kwargs)
    full = train_dual_prompt(vlm, WorldSource(config=config), config, **kwargs)
    assert ran == list(range(step + 1, 13))  # it went on from the checkpoint, not from the start
    assert resumed.steps_done == 12 and resumed.losses == full.losses
    for a, b in zip(full.dual.parameters(), resumed.dual.parameters(), strict=True):
        assert torch.equal(a, b)

