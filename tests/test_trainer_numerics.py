"""Numerical guards of the trainer: non-finite rewards and non-finite losses never reach the weights."""

from __future__ import annotations

import math

import pytest
import torch

from castrl.trl.nonfinite import guard_nonfinite_steps

from .test_trainer import _batch, _trainer
from .trl_helpers import parity_reward


def test_guard_skips_step_on_nonfinite_grad_and_leaves_weights_and_state():
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    skipped = []
    guard_nonfinite_steps(opt, lambda: skipped.append(1))
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.tensor([[float("nan"), 1.0]])).sum().backward()
    opt.step()
    assert skipped == [1] and not opt.state
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    assert skipped == [1] and not all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def inf_first_reward(completions, **kwargs):
    rewards = parity_reward(completions)
    rewards[0] = math.inf
    return rewards


@pytest.mark.parametrize("fuse", [False, True])
def test_nonfinite_reward_rows_get_zero_advantage_and_are_counted(tmp_path, fuse):
    trainer = _trainer(tmp_path, reward=inf_first_reward, fuse_student_pass=fuse)
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions(_batch(trainer))
    if fuse:  # the advantages appear when the loss has run
        trainer.current_gradient_accumulation_steps = 1
        trainer.compute_loss(trainer.model, out)
    assert torch.all(out["advantages"][0] == 0)
    assert torch.isfinite(out["advantages"]).all()
    assert trainer._metrics["train"]["cast/nonfinite_reward_count"][-1] == 1.0
    assert trainer._metrics["train"]["cast/unscorable_count"][-1] == 1.0


def test_nonfinite_loss_skips_the_optimizer_step(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, max_steps=1)
    original = trainer._compute_loss
    monkeypatch.setattr(trainer, "_compute_loss", lambda model, inputs: original(model, inputs) * float("nan"))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert all(torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    logged = [h for h in trainer.state.log_history if "cast/skipped_nonfinite_steps" in h]
    assert logged and logged[0]["cast/skipped_nonfinite_steps"] == 1.0
