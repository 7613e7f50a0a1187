"""Trimming a micro-batch's unscored completion columns (`castrl.trl.trim`): only known completion-aligned
keys are cut, and a training step with it gives the step without it, while the loss's forward really
runs narrower (fused student pass and separate pass alike)."""

from __future__ import annotations

import pytest
import torch

import castrl.rollouts.decode as decode_module
from castrl.trl import CASTTrainer
from castrl.trl.trim import scored_width, trim_completion_padding

from .trl_helpers import parity_reward, tiny_config, tiny_model_and_tokenizer, toy_dataset


def _inputs(mask_rows):
    mask = torch.tensor(mask_rows)
    b, t = mask.shape
    return {"prompt_ids": torch.ones(b, t, dtype=torch.long), "prompt_mask": torch.ones(b, t, dtype=torch.long),
            "completion_ids": torch.arange(b * t).view(b, t), "completion_mask": mask,
            "advantages": torch.randn(b, t), "old_per_token_logps": torch.randn(b, t),
            "num_items_in_batch": torch.tensor(5.0)}  # fmt: skip


def test_completion_aligned_keys_are_cut_to_the_last_scored_column():
    inputs = _inputs([[1, 1, 0, 0, 0], [1, 0, 1, 0, 0]])  # width 3; prompts are as wide as completions
    trimmed = trim_completion_padding(inputs)
    for key in ("completion_ids", "completion_mask", "advantages", "old_per_token_logps"):
        assert torch.equal(trimmed[key], inputs[key][:, :3]), key
    assert trimmed["prompt_ids"] is inputs["prompt_ids"] and trimmed["prompt_mask"].shape == (2, 5)
    assert trimmed["num_items_in_batch"] is inputs["num_items_in_batch"]


def test_nothing_is_cut_when_unsure_or_when_nothing_is_unscored():
    inputs = _inputs([[1, 1, 0], [1, 0, 0]])
    assert trim_completion_padding({**inputs, "pixel_values": torch.zeros(1)})["completion_ids"].shape == (2, 3)
    full = _inputs([[1, 1, 1], [1, 0, 0]])
    assert trim_completion_padding(full) is full
    assert scored_width(torch.zeros(2, 4)) == 1  # an all-masked micro-batch keeps one column
    advantages = _inputs([[1, 0, 0], [1, 0, 0]]) | {"advantages": torch.randn(2)}  # GRPO's (B,) advantages
    assert trim_completion_padding(advantages)["advantages"].shape == (2,)


def _varied_lengths(model, ids, mask, *, max_new_tokens, sampling, stop_ids, pad_id):
    """Rollouts of known lengths (1 to max_new_tokens tokens) in place of the tiny model's, which never ends."""
    generator = torch.Generator().manual_seed(7)
    new = torch.randint(5, 60, (ids.shape[0], max_new_tokens), generator=generator, device=ids.device)
    stop = int(stop_ids[0])
    for row in range(ids.shape[0]):
        end = (3 * row + 1) % (max_new_tokens + 2)  # some rows end early, others never
        if end < max_new_tokens:
            new[row, end] = stop
            new[row, end + 1 :] = pad_id
    return new


@pytest.mark.parametrize("estimator", ["cast", "grpo"])  # the fused student pass, and TRL's own loss inputs
def test_a_step_with_trimming_equals_the_step_without(tmp_path, monkeypatch, estimator):
    monkeypatch.setattr(decode_module, "decode", _varied_lengths)
    weights, widths = {}, {}
    for trim in (True, False):
        model, tokenizer = tiny_model_and_tokenizer()
        # SGD: an update proportional to the gradient (Adam's first step is its sign, which rounding can flip)
        config = tiny_config(tmp_path / str(trim), max_steps=1, advantage_estimator=estimator,
                             per_device_train_batch_size=2, gradient_accumulation_steps=4,
                             trim_completion_padding=trim, optim="sgd")  # fmt: skip
        trainer = CASTTrainer(model=model, reward_funcs=parity_reward, train_dataset=toy_dataset(),
                              processing_class=tokenizer, args=config)  # fmt: skip
        seen = widths[trim] = []
        forward = trainer._get_per_token_logps_and_entropies

        def spy(model, input_ids, attention_mask, logits_to_keep, *args, seen=seen, forward=forward, **kwargs):
            if torch.is_grad_enabled():
                seen.append(logits_to_keep)
            return forward(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)

        monkeypatch.setattr(trainer, "_get_per_token_logps_and_entropies", spy)
        trainer.train()
        weights[trim] = [p.detach().clone() for p in trainer.model.parameters()]
    assert set(widths[False]) == {10} and min(widths[True]) < 10  # the loss's forward ran narrower
    for trimmed, whole in zip(weights[True], weights[False], strict=True):
        torch.testing.assert_close(trimmed, whole, rtol=0, atol=1e-6)
