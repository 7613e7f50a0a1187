"""Sampling several sequences per prompt with `decoder="transformers"` prefills each prompt once
(`castrl.rollouts.generate.shared_prefill`): the tokens must be those of `generate` prefilling every copy,
for left-padded prompts of different lengths. (castrl's own decoder: tests/test_decode.py.)"""

from __future__ import annotations

import pytest
import torch

from castrl.rollouts.generate import generate_ids, shared_prefill
from castrl.testing import build_char_tokenizer, build_tiny_model


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    return build_tiny_model(tokenizer).eval(), tokenizer


def _rows(tokenizer):
    texts = ["Q: 12 + 7 =", "Q: 3 * 41 + 100 - 6 =", "Q: 5 ="]  # different lengths: left padding differs
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def _plain(model, rows, pad_id, **kwargs):
    """`generate` prefilling every copy (what castrl did before)."""
    from castrl.rollouts.batching import left_pad

    ids, mask, _ = left_pad(rows, pad_id)
    out = model.generate(input_ids=ids, attention_mask=mask, pad_token_id=pad_id, **kwargs)
    return out[:, ids.shape[1]:]


@pytest.mark.parametrize("sampling", [dict(temperature=0.9, top_k=20), dict(temperature=0.7, top_p=0.8, top_k=20)])
def test_shared_prefill_generates_the_same_tokens(tiny, sampling):
    model, tokenizer = tiny
    rows, pad = _rows(tokenizer), tokenizer.pad_token_id
    kwargs = dict(max_new_tokens=12, num_return_sequences=4, do_sample=True, **sampling)
    torch.manual_seed(3)
    plain = _plain(model, rows, pad, **kwargs)
    torch.manual_seed(3)
    shared = generate_ids(model, rows, pad, decoder="transformers", **kwargs)
    assert shared.shape == plain.shape == (len(rows) * 4, 12)
    assert torch.equal(shared, plain)  # same logits up to rounding, same sampling draws


def test_generate_gets_the_shared_cache_and_one_sequence_per_row(tiny, monkeypatch):
    """Not a silent fallback: generate runs once per row on the prefilled cache."""
    model, tokenizer = tiny
    seen = {}
    real = model.generate

    def spy(**kwargs):
        seen.update(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(model, "generate", spy)
    generate_ids(model, _rows(tokenizer), tokenizer.pad_token_id, max_new_tokens=4, num_return_sequences=4,
                 do_sample=True, decoder="transformers")
    cache = seen.get("cache", seen.get("past_key_values"))
    assert seen["num_return_sequences"] == 1 and seen["input_ids"].shape[0] == 12
    assert cache is not None and cache.layers[0].keys.shape[0] == 12


def test_the_cache_is_one_prefill_repeated_prompt_major(tiny):
    model, tokenizer = tiny
    from castrl.rollouts.batching import left_pad

    ids, mask, _ = left_pad(_rows(tokenizer), tokenizer.pad_token_id)
    cache = shared_prefill(model, ids, mask, copies=3)
    keys = cache.layers[0].keys
    assert keys.shape[0] == 9 and keys.shape[2] == ids.shape[1] - 1  # every token but the last
    assert torch.equal(keys[0], keys[2]) and not torch.equal(keys[2], keys[3])  # rows 0-2 are prompt 0's
    assert shared_prefill(model, ids[:, -1:], mask[:, -1:], copies=3) is None  # nothing to share
