"""castrl's decoding loop (`castrl.rollouts.decode`): generate's distribution and generate's tokens
where they are defined (greedy), finished rows leaving the batch without disturbing the others, a
fallback to generate for anything it does not implement, and TRL's rollouts going through it."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

import castrl.rollouts.decode as decode_module
from castrl.rollouts.batching import left_pad
from castrl.rollouts.decode import Sampling, candidates, decode, generate_with_decode, pick_tokens, plan_of
from castrl.rollouts.generate import generate_ids
from castrl.testing import build_char_tokenizer, build_tiny_model


@pytest.fixture(scope="module")
def tiny():
    """The tiny test model with larger random weights: at its own init scale it repeats one token in every
    row, and these tests need rows that differ and end at different steps."""
    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    model = build_tiny_model(tokenizer).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model, tokenizer


def _prompts(tokenizer, copies: int = 1):
    texts = ["Q: 12 + 7 =", "Q: 3 * 41 + 100 - 6 =", "Q: 5 ="]  # different lengths: left padding differs
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    return left_pad([r for r in rows for _ in range(copies)], tokenizer.pad_token_id)[:2]


def _full(probs: torch.Tensor, index: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.zeros(probs.shape[0], vocab, dtype=probs.dtype).scatter(1, index, probs)


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(0.7, 20, 0.95), (1.3, 5, 0.6), (0.7, 0, 0.8),
                                                             (1.0, 10, 1.0), (0.9, 0, 1.0)])  # fmt: skip
def test_candidates_are_transformers_warpers_distribution(temperature, top_k, top_p):
    logits = torch.randn(6, 97, generator=torch.Generator().manual_seed(1)) * 3
    warpers = [TemperatureLogitsWarper(temperature)]
    warpers += [TopKLogitsWarper(top_k)] if top_k else []
    warpers += [TopPLogitsWarper(top_p)] if top_p < 1 else []
    expected = LogitsProcessorList(warpers)(None, logits.clone()).softmax(-1)
    probs, index = candidates(logits, Sampling(True, temperature, top_k, top_p))
    torch.testing.assert_close(_full(probs, index, 97), expected, rtol=0, atol=1e-6)
    if top_k:
        assert probs.shape == (6, top_k)  # the vocabulary is never normalised whole


def test_the_top_p_boundary_keeps_the_token_that_reaches_the_mass():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).log_softmax(-1)  # probs from a known vector
    probs = torch.tensor([[0.5, 0.3, 0.1, 0.07, 0.03]])
    kept, index = candidates(probs.log(), Sampling(True, 1.0, 0, 0.8))
    assert _full(kept, index, 5)[0, :3].gt(0).tolist() == [True, True, False]  # 0.5 + 0.3 reaches 0.8
    kept, index = candidates(probs.log(), Sampling(True, 1.0, 0, 0.81))
    assert _full(kept, index, 5)[0, :4].gt(0).tolist() == [True, True, True, False]
    assert pick_tokens(logits, Sampling()).tolist() == [0]


def test_sampling_settings_are_checked():
    with pytest.raises(ValueError, match="top_p"):
        Sampling(True, 1.0, 0, 0.0)
    with pytest.raises(ValueError, match="temperature"):
        Sampling(True, 0.0)
    with pytest.raises(ValueError, match="top_k"):
        Sampling(True, 1.0, -1)


def _stop_in_the_middle(model, ids, mask, steps: int) -> int:
    """A token greedy decoding emits in some rows and not others, so rows end at different steps."""
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=steps,
                         eos_token_id=None, pad_token_id=0)[:, ids.shape[1]:]  # fmt: skip
    for token in out[:, 1:-1].flatten().tolist():
        rows = (out == token).any(1)
        if 0 < int(rows.sum()) < out.shape[0]:
            return token
    raise AssertionError("the tiny model emits no token in only some rows: the test cannot end rows apart")


def test_greedy_equals_generate_while_rows_end_at_different_steps(tiny, monkeypatch):
    from transformers.cache_utils import DynamicCache

    model, tokenizer = tiny
    ids, mask = _prompts(tokenizer, copies=2)
    stop = _stop_in_the_middle(model, ids, mask, 16)
    reference = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=16,
                               eos_token_id=stop, pad_token_id=0)[:, ids.shape[1]:]  # fmt: skip
    calls, select = [], DynamicCache.batch_select_indices
    monkeypatch.setattr(DynamicCache, "batch_select_indices",
                        lambda self, indices: calls.append(len(indices)) or select(self, indices))  # fmt: skip
    new = decode(model, ids, mask, max_new_tokens=16, sampling=Sampling(), stop_ids=torch.tensor([stop]), pad_id=0)
    assert calls[0] == ids.shape[0]  # distinct prompts prefilled once, copied to their rows
    assert any(n < ids.shape[0] for n in calls[1:])  # finished rows left the batch
    assert torch.equal(new, reference)


def test_sampled_tokens_come_from_each_rows_own_top_k(tiny):
    """After rows leave the batch, every remaining row must still read its own cache: each sampled token
    is among the top-2 of a full forward pass over that row's own prefix."""
    model, tokenizer = tiny
    ids, mask = _prompts(tokenizer, copies=3)
    stop = _stop_in_the_middle(model, ids, mask, 12)
    torch.manual_seed(0)
    new = decode(model, ids, mask, max_new_tokens=12, sampling=Sampling(True, 1.0, 2, 1.0),
                 stop_ids=torch.tensor([stop]), pad_id=0)  # fmt: skip
    ended = torch.isin(new, torch.tensor([stop]))
    assert ended.any() and not ended.any(1).all()
    for row in range(new.shape[0]):
        n = int(ended[row].int().argmax()) + 1 if ended[row].any() else new.shape[1]
        assert (new[row, n:] == 0).all()  # pads after the stop token
        full = torch.cat([ids[row], new[row, :n]])[None]
        row_mask = torch.cat([mask[row], torch.ones(n, dtype=mask.dtype)])[None]
        positions = (row_mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = model(input_ids=full, attention_mask=row_mask, position_ids=positions).logits[0]
        top2 = logits[ids.shape[1] - 1 : ids.shape[1] - 1 + n].topk(2, dim=-1).indices
        assert (top2 == new[row, :n, None]).any(-1).all(), f"row {row} sampled outside its own top-2"


def test_plan_reads_generates_own_settings(tiny):
    model, _ = tiny
    ids = torch.ones(2, 4, dtype=torch.long)
    trl_like = GenerationConfig(max_new_tokens=9, do_sample=True, pad_token_id=0, eos_token_id=[1, 2],
                                temperature=0.7, top_p=0.95, top_k=20, repetition_penalty=1.0)  # fmt: skip
    plan = plan_of(model, ids, trl_like)
    assert plan.sampling == Sampling(True, 0.7, 20, 0.95) and plan.max_new_tokens == 9
    assert plan.stop_ids.tolist() == [1, 2] and plan.pad_id == 0 and plan.copies == 1
    # transformers' global default top-k (50) applies when sampling without one
    assert plan_of(model, ids, max_new_tokens=3, do_sample=True, pad_token_id=0).sampling.top_k == 50
    assert plan_of(model, ids, max_new_tokens=3, do_sample=False, pad_token_id=0).sampling == Sampling()


@pytest.mark.parametrize("unsupported", [dict(repetition_penalty=1.2), dict(min_new_tokens=2), dict(min_p=0.1),
                                         dict(num_beams=2), dict(max_new_tokens=None), dict(no_repeat_ngram_size=2),
                                         dict(output_scores=True, return_dict_in_generate=True)])  # fmt: skip
def test_plan_refuses_what_decode_does_not_do(tiny, unsupported):
    model, _ = tiny
    kwargs = {"max_new_tokens": 4, "do_sample": True, "pad_token_id": 0, "eos_token_id": 1, **unsupported}
    assert plan_of(model, torch.ones(2, 4, dtype=torch.long), **kwargs) is None


def test_sharded_weights_over_several_processes_use_generate(tiny, monkeypatch):
    """ZeRO-3 / FSDP ranks must keep stepping until every rank ends (generate's `synced_gpus`): decode
    stops with its own rows, so it must not take those runs."""
    import torch.distributed as dist
    import transformers.integrations.deepspeed as deepspeed

    model, _ = tiny
    ids, kwargs = torch.ones(2, 4, dtype=torch.long), dict(max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert plan_of(model, ids, synced_gpus=True, **kwargs) is None
    assert plan_of(model, ids, **kwargs) is not None  # one process
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 2)
    assert plan_of(model, ids, **kwargs) is not None  # DDP: each rank holds whole weights
    monkeypatch.setattr(deepspeed, "is_deepspeed_zero3_enabled", lambda: True)
    assert plan_of(model, ids, **kwargs) is None


def test_generate_ids_falls_back_to_generate_for_what_decode_does_not_do(tiny, monkeypatch):
    model, tokenizer = tiny
    rows = [tokenizer("Q: 1 =", add_special_tokens=False)["input_ids"]]
    used = []
    monkeypatch.setattr(decode_module, "decode", lambda *a, **k: used.append(1))
    generate_ids(model, rows, tokenizer.pad_token_id, max_new_tokens=3, do_sample=False, repetition_penalty=1.3)
    assert not used
    with pytest.raises(ValueError, match="decoder must be one of"):
        generate_ids(model, rows, tokenizer.pad_token_id, max_new_tokens=3, decoder="vllm")


def test_generate_with_decode_returns_what_generate_returns_and_is_removed(tiny):
    model, tokenizer = tiny
    ids, mask = _prompts(tokenizer)
    kwargs = dict(do_sample=False, max_new_tokens=6, pad_token_id=0)
    reference = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    with generate_with_decode(model):
        assert "generate" in vars(model)
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=GenerationConfig(**kwargs))
    assert "generate" not in vars(model)
    eos = model.generation_config.eos_token_id
    if eos is None or not torch.isin(reference[:, ids.shape[1]:], torch.tensor(eos)).any():
        assert torch.equal(out, reference)
    else:  # generate keeps decoding finished rows as pads until the longest ends; decode's output is cut there
        assert torch.equal(out, reference[:, : out.shape[1]])


def test_trl_rollouts_decode_with_castrl_unless_told_otherwise(tmp_path, monkeypatch):
    from castrl.trl import CASTTrainer

    from .trl_helpers import parity_reward, tiny_config, tiny_model_and_tokenizer, toy_dataset

    real, calls = decode_module.decode, []

    def spy(*args, **kwargs):
        calls.append(kwargs["sampling"])
        return real(*args, **kwargs)

    monkeypatch.setattr(decode_module, "decode", spy)
    for decoder, expected in (("castrl", True), ("transformers", False)):
        calls.clear()
        model, tokenizer = tiny_model_and_tokenizer()
        config = tiny_config(tmp_path / decoder, max_steps=1, rollout_decoder=decoder)
        trainer = CASTTrainer(model=model, reward_funcs=parity_reward, train_dataset=toy_dataset(),
                              processing_class=tokenizer, args=config)  # fmt: skip
        trainer.train()
        assert bool(calls) is expected
        assert "generate" not in vars(trainer.model)
        if expected:
            assert calls[0] == Sampling(True, config.temperature, config.top_k, config.top_p)


def test_a_cache_that_is_not_plain_key_value_decodes_with_generate():
    """A sliding-window model's cache cannot be cut row by row as `decode` does: `generate_ids` gives
    generate's own tokens for it."""
    from transformers import MistralConfig, MistralForCausalLM

    tokenizer = build_char_tokenizer()
    config = MistralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=4,
                           pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    model = MistralForCausalLM(config).eval()
    ids, mask = _prompts(tokenizer)
    assert decode(model, ids, mask, max_new_tokens=4, sampling=Sampling(), stop_ids=torch.tensor([1]), pad_id=0) is None
    rows = [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]
    kwargs = dict(max_new_tokens=5, do_sample=False)
    ours = generate_ids(model, rows, tokenizer.pad_token_id, **kwargs)
    theirs = generate_ids(model, rows, tokenizer.pad_token_id, decoder="transformers", **kwargs)
    assert torch.equal(ours, theirs)
