"""`share_prompt_cache`: castrl's no-grad scoring passes run each distinct prompt once and reuse its KV
cache for the group's completions. The log-probs must be those of the one-pass forward (positions,
padding and temperature included), whatever the row order and micro-batch size, with LoRA too; a
model whose cache is not plain key/value must fall back to the full pass, not score wrongly."""

from __future__ import annotations

import pytest
import torch
from transformers import MistralConfig, MistralForCausalLM
from trl.trainer.utils import add_fused_lm_head

from castrl.models import LoraSettings, peft_config
from castrl.rollouts import prompt_cache
from castrl.rollouts.prompt_cache import completion_logps_shared_prompts
from castrl.testing import build_char_tokenizer, build_tiny_model

from .test_trainer import _batch, _trainer


def _groups(pad_id: int, vocab: int, prompt_lens=(5, 8, 3), group_size=4, completion_len=9, seed=0):
    """Left-padded prompts repeated `group_size` times, ragged right-padded completions, rows shuffled."""
    gen = torch.Generator().manual_seed(seed)
    n, width = len(prompt_lens) * group_size, max(prompt_lens)
    prompt_ids = torch.full((n, width), pad_id)
    prompt_mask = torch.zeros(n, width, dtype=torch.long)
    for g, length in enumerate(prompt_lens):
        ids = torch.randint(5, vocab, (length,), generator=gen)
        prompt_ids[g * group_size : (g + 1) * group_size, width - length :] = ids
        prompt_mask[g * group_size : (g + 1) * group_size, width - length :] = 1
    completion_ids = torch.randint(5, vocab, (n, completion_len), generator=gen)
    completion_mask = torch.ones(n, completion_len, dtype=torch.long)
    for row in range(n):
        end = int(torch.randint(1, completion_len + 1, (1,), generator=gen))
        completion_mask[row, end:] = 0
        completion_ids[row, end:] = pad_id
    order = torch.randperm(n, generator=gen)
    return tuple(x[order] for x in (prompt_ids, prompt_mask, completion_ids, completion_mask))


def _full_pass(model, prompt_ids, prompt_mask, completion_ids, completion_mask) -> torch.Tensor:
    """TRL's one-pass scoring: prompt + completion, labels on the completion tokens only."""
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, : prompt_ids.size(1)] = -100
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
    return out.log_probs[:, -completion_ids.size(1) :]


def _tiny(lora: bool = False):
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, layers=3)
    add_fused_lm_head(model, temperature=0.7)
    if lora:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config(LoraSettings(r=4, alpha=8)))
        with torch.no_grad():  # LoRA's B starts at zero; make the adapter change the outputs
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.5)
    return model, tokenizer


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_shared_prompts_give_the_one_pass_log_probs(lora, batch_size):
    model, tokenizer = _tiny(lora)
    batch = _groups(tokenizer.pad_token_id, len(tokenizer))
    full = _full_pass(model, *batch)
    shared = completion_logps_shared_prompts(model, *batch, batch_size=batch_size)
    assert shared is not None and shared.dtype == torch.float32 and shared.shape == full.shape
    scored = batch[3].bool()
    assert full[scored].abs().min() > 0.1  # real log-probs, so agreement is not 0 == 0
    torch.testing.assert_close(shared, full, rtol=1e-5, atol=2e-5)
    assert (shared[~scored] == 0).all()


def test_each_distinct_prompt_runs_once(monkeypatch):
    model, tokenizer = _tiny()
    batch = _groups(tokenizer.pad_token_id, len(tokenizer), prompt_lens=(4, 6), group_size=5)
    seen = []
    real = prompt_cache._prompt_key_values

    def spy(model, ids, *args):
        seen.append(ids.shape)
        return real(model, ids, *args)

    monkeypatch.setattr(prompt_cache, "_prompt_key_values", spy)
    completion_logps_shared_prompts(model, *batch, batch_size=64)
    assert seen == [torch.Size([2, 5])]  # 2 distinct prompts, without their last token


def test_a_cache_that_is_not_plain_key_value_falls_back():
    tokenizer = build_char_tokenizer()
    config = MistralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=4,
                           pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    model = MistralForCausalLM(config).eval()
    add_fused_lm_head(model)
    batch = _groups(tokenizer.pad_token_id, len(tokenizer))
    assert completion_logps_shared_prompts(model, *batch, batch_size=8) is None


def test_bad_shapes_name_both():
    model, tokenizer = _tiny()
    prompt_ids, prompt_mask, completion_ids, completion_mask = _groups(tokenizer.pad_token_id, len(tokenizer))
    with pytest.raises(ValueError, match="completion"):
        completion_logps_shared_prompts(model, prompt_ids, prompt_mask, completion_ids, completion_mask[:, :-1],
                                        batch_size=4)  # fmt: skip


def test_trainer_teacher_scores_match_with_and_without_sharing(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, fuse_student_pass=False)
    calls = []
    real = prompt_cache.completion_logps_shared_prompts

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr("castrl.trl.scoring.completion_logps_shared_prompts", spy)
    torch.manual_seed(0)
    inputs = _batch(trainer)
    output = trainer._generate_and_score_completions(inputs)
    assert len(calls) == 2  # the student pass and the teacher pass both shared their prompts
    shared_teacher = trainer._teacher_logps(inputs, output)
    trainer._share_prompt_cache = False
    full_teacher = trainer._teacher_logps(inputs, output)
    full_student = trainer._completion_logps(output["prompt_ids"], output["prompt_mask"], output)
    torch.testing.assert_close(shared_teacher, full_teacher, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(output["old_per_token_logps"], full_student, rtol=1e-5, atol=2e-5)


def test_training_with_and_without_sharing_agrees(tmp_path):
    """Two CAST steps (separate student pass, so both passes share): same weights and statistics."""
    from .test_fused_student_pass import COMPARED, _train

    shared, shared_logs, moved = _train(tmp_path / "on", False, False, share_prompt_cache=True)
    full, full_logs, _ = _train(tmp_path / "off", False, False, share_prompt_cache=False)
    assert moved > 0
    for a, b in zip(shared_logs, full_logs, strict=True):
        for key in (*COMPARED, "loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    # Adam scales a near-zero gradient's step to ~lr (1e-2), so rounding-level gradient differences can
    # move a rare weight by a small fraction of lr; every other weight must agree to float precision.
    diffs = torch.cat([(shared[name] - value).abs().flatten() for name, value in full.items()])
    assert diffs.max() < 0.02 * 1e-2
    assert (diffs > 1e-6).float().mean() < 1e-3


def test_degenerate_widths():
    model, tokenizer = _tiny()
    prompt_ids, prompt_mask, completion_ids, completion_mask = _groups(tokenizer.pad_token_id, len(tokenizer))
    empty = completion_logps_shared_prompts(model, prompt_ids, prompt_mask, completion_ids[:, :0],
                                            completion_mask[:, :0], batch_size=4)  # fmt: skip
    assert empty.shape == (prompt_ids.size(0), 0)
    with pytest.raises(ValueError, match=">= 2 tokens"):
        completion_logps_shared_prompts(model, prompt_ids[:, -1:], prompt_mask[:, -1:], completion_ids,
                                        completion_mask, batch_size=4)  # fmt: skip


def test_trainer_falls_back_to_full_passes_once(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path)
    torch.manual_seed(0)
    inputs = _batch(trainer)
    output = trainer._generate_and_score_completions(inputs)
    expected = trainer._teacher_logps(inputs, output)
    monkeypatch.setattr(prompt_cache, "_prompt_key_values", lambda *args: None)  # as a sliding-window model
    fallback = trainer._teacher_logps(inputs, output)
    assert trainer._share_prompt_cache is False
    torch.testing.assert_close(fallback, expected, rtol=1e-5, atol=2e-5)
