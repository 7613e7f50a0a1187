"""`fuse_student_pass`: on-policy, the student log-probs of the teacher gap come from the loss's own
forward pass (the estimator's token step runs per micro-batch) instead of a separate no-grad pass.
Training must match the separate pass, off-policy steps must keep it, and a TRL whose loss bypasses
the hook must fail loudly rather than train on missing advantages."""

from __future__ import annotations

import functools

import pytest
import torch
from trl import GRPOTrainer

from castrl.models import LoraSettings, peft_config
from castrl.trl import CASTTrainer

from .test_trainer import _batch, _trainer
from .trl_helpers import parity_reward, tiny_config, tiny_model_and_tokenizer, toy_dataset

COMPARED = ("cast/adv_mean", "cast/adv_std", "cast/gap_mean", "cast/gap_std", "cast/frac_flipped",
            "cast/frac_mixed", "cast/frac_nonzero_adv", "cast/weight_mean")  # fmt: skip


def _train(tmp_path, fuse: bool, lora: bool, **overrides):
    """(weights after training, logged steps, how far the weights moved)."""
    model, tokenizer = tiny_model_and_tokenizer(0)
    # Full scoring passes, so the separate student pass is bit-comparable to the fused one; the shared
    # prompt cache has its own parity tests (test_prompt_cache.py).
    overrides.setdefault("share_prompt_cache", False)
    args = tiny_config(tmp_path, fuse_student_pass=fuse, gradient_accumulation_steps=2, **overrides)
    peft = peft_config(LoraSettings(r=4, alpha=8)) if lora else None
    trainer = CASTTrainer(model=model, reward_funcs=parity_reward, args=args, train_dataset=toy_dataset(),
                          processing_class=tokenizer, peft_config=peft)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    moved = sum((params[n] - p).abs().sum().item() for n, p in before.items())
    return params, [h for h in trainer.state.log_history if "loss" in h], moved


@pytest.mark.parametrize("estimator, lora", [("cast", False), ("rlsd", False), ("cast", True)])
def test_fused_training_matches_the_separate_student_pass(tmp_path, estimator, lora):
    """Two steps, two shuffled micro-batches per step: same weights, same logged statistics."""
    fused, fused_logs, moved = _train(tmp_path / "fused", True, lora, advantage_estimator=estimator)
    separate, separate_logs, _ = _train(tmp_path / "separate", False, lora, advantage_estimator=estimator)
    assert moved > 0, "training must change the weights for the comparison to mean anything"
    for name, value in separate.items():
        torch.testing.assert_close(fused[name], value, rtol=1e-4, atol=1e-6)
    assert len(fused_logs) == len(separate_logs) == 2
    for a, b in zip(fused_logs, separate_logs, strict=True):
        for key in COMPARED:
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
        assert a["cast/time_student_s"] < 0.05 * b["cast/time_student_s"] + 1e-3
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)


def test_off_policy_steps_keep_the_separate_pass(tmp_path):
    """num_iterations > 1: TRL computes old log-probs, so the advantages are made after the rollout."""
    trainer = _trainer(tmp_path, num_iterations=2)
    torch.manual_seed(0)
    inputs = trainer._generate_and_score_completions(_batch(trainer))
    assert inputs["old_per_token_logps"] is not None
    assert inputs["advantages"].shape == inputs["completion_ids"].shape
    assert "castrl_row" not in inputs


def test_a_loss_that_bypasses_the_hook_fails_loudly(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path)
    torch.manual_seed(0)
    inputs = trainer._generate_and_score_completions(_batch(trainer))
    trainer.current_gradient_accumulation_steps = 1
    bypass = functools.partial(GRPOTrainer._get_per_token_logps_and_entropies, trainer)
    monkeypatch.setattr(trainer, "_get_per_token_logps_and_entropies", bypass)
    with pytest.raises(RuntimeError, match="fuse_student_pass=False"):
        trainer.compute_loss(trainer.model, inputs)


def test_a_gap_control_takes_the_whole_batch_not_a_micro_batch(tmp_path):
    """gap_control=shuffle permutes gaps across the batch's rollouts, so its token step cannot run per
    micro-batch: the trainer scores the student separately, and the shuffled gaps reach the advantages."""
    trainer = _trainer(tmp_path, gap_control="shuffle")
    torch.manual_seed(0)
    inputs = trainer._generate_and_score_completions(_batch(trainer))
    assert "castrl_row" not in inputs and inputs["old_per_token_logps"] is not None
    assert torch.isfinite(inputs["advantages"]).all()
