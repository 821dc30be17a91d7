"""Resumable training state: a resumed run reproduces an uninterrupted one bit for bit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from promptweave.prompt_modules.artifacts import ArtifactError
from promptweave.prompt_modules.checkpointing import load_training_state, run_resumable_loop, save_training_state


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
    from promptweave.prompt_modules.learned_prompt import LearnedPrompt, LearnedPromptConfig

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
