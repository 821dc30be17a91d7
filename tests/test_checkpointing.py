"""Resumable training state: a resumed run reproduces an uninterrupted one bit for bit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from promptweave.prompt_modules.artifacts import ArtifactError
from promptweave.prompt_modules.checkpointing import load_training_state, save_training_state


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
