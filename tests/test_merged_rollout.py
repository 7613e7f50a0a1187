"""LoRA rollouts on merged weights (`castrl.trl.merged_rollout`): the merged model computes what the
adapter does, the base weights come back bit for bit (also when the block raises), and the trainer's
rollout really decodes on merged weights while the update never sees them."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from castrl.models import LoraSettings, peft_config
from castrl.trl import CASTTrainer
from castrl.trl.merged_rollout import _lora_layers, can_merge_for_rollout, merged_lora

from .trl_helpers import parity_reward, tiny_config, tiny_model_and_tokenizer, toy_dataset


def _lora_model(dropout: float = 0.0):
    model, tokenizer = tiny_model_and_tokenizer(0)
    peft_model = get_peft_model(model, peft_config(LoraSettings(dropout=dropout)))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # PEFT starts B at 0, where merging changes nothing
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    return peft_model.eval(), tokenizer


def _base_weights(model) -> list[torch.Tensor]:
    return [layer.get_base_layer().weight.detach().clone() for layer in _lora_layers(model)]


def _same(before: list[torch.Tensor], model) -> bool:
    return all(torch.equal(a, b) for a, b in zip(before, _base_weights(model), strict=True))


def test_merged_model_computes_the_adapter_and_restores_exactly():
    model, tokenizer = _lora_model()
    ids = torch.randint(0, len(tokenizer), (2, 9), generator=torch.Generator().manual_seed(0))
    before = _base_weights(model)
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        with merged_lora(model) as merged:
            assert merged and all(layer.merged for layer in _lora_layers(model))
            in_block = model(input_ids=ids).logits
    torch.testing.assert_close(in_block, unmerged, rtol=0, atol=1e-5)
    assert not any(layer.merged for layer in _lora_layers(model))
    assert _same(before, model)


def test_unmerge_alone_would_not_restore():
    """Why the copy exists: PEFT's merge then unmerge moves some base weight by rounding (this test
    keeps `test_merged_model_computes_the_adapter_and_restores_exactly` able to fail)."""
    model, _ = _lora_model()
    before = _base_weights(model)
    with torch.no_grad():
        for layer in _lora_layers(model):
            layer.merge()
            layer.unmerge()
    assert not _same(before, model)


def test_restores_when_the_block_raises():
    model, _ = _lora_model()
    before = _base_weights(model)
    with pytest.raises(RuntimeError, match="boom"), merged_lora(model):
        raise RuntimeError("boom")
    assert not any(layer.merged for layer in _lora_layers(model))
    assert _same(before, model)


def test_not_merged_when_it_would_change_the_rollout_or_is_off():
    model, _ = _lora_model(dropout=0.1)
    assert not can_merge_for_rollout(model.train())  # a merged layer cannot drop its input
    assert can_merge_for_rollout(model.eval())
    with merged_lora(model, enabled=False) as merged:
        assert not merged and not any(layer.merged for layer in _lora_layers(model))
    plain, _ = tiny_model_and_tokenizer(0)
    assert not can_merge_for_rollout(plain)  # no LoRA: nothing to merge


@pytest.mark.parametrize("merge", [True, False])
def test_trainer_rollout_decodes_merged_and_trains_the_unmerged_model(tmp_path, monkeypatch, merge):
    model, tokenizer = tiny_model_and_tokenizer(0)
    trainer = CASTTrainer(model=model, reward_funcs=parity_reward, train_dataset=toy_dataset(),
                          processing_class=tokenizer, peft_config=peft_config(LoraSettings()),
                          args=tiny_config(tmp_path, max_steps=2, merge_lora_for_rollout=merge))  # fmt: skip
    peft_model = trainer.model
    layers = _lora_layers(peft_model)
    before = _base_weights(peft_model)
    seen: list[bool] = []
    generate = peft_model.generate

    def spy_generate(*args, **kwargs):
        seen.append(all(layer.merged for layer in layers))
        return generate(*args, **kwargs)

    monkeypatch.setattr(peft_model, "generate", spy_generate)
    trainer.train()
    assert seen and set(seen) == {merge}
    assert not any(layer.merged for layer in layers)
    # the base weights are frozen: after two steps with merged rollouts they are still the same bits
    assert _same(before, peft_model)
    assert any(p.abs().sum() > 0 for n, p in peft_model.named_parameters() if "lora_B" in n)  # the adapter trained
