"""`--bf16 true` in CASTTrainer: bf16 autocast over fp32 weights and fp32 optimizer state, rollouts in the
same precision with and without LoRA, and with `cast_lm_head_to_fp32` every log-prob CAST reads scored
from fp32 logits, on the bundled model's layout too (LoRA over tied embeddings)."""

from __future__ import annotations

import pytest
import torch
import trl.kernels.chunked_logprob as chunked

from castrl.models import LoraSettings, peft_config
from castrl.trl import CASTTrainer
from castrl.trl import precision as precision_module

from .trl_helpers import parity_reward, tiny_config, tiny_model_and_tokenizer, toy_dataset


def _trainer(tmp_path, lora: bool, **overrides) -> CASTTrainer:
    model, tokenizer = tiny_model_and_tokenizer(0)
    model.train()
    assert model.config.tie_word_embeddings  # as SmolLM2's
    args = tiny_config(tmp_path, max_steps=1, **overrides)
    return CASTTrainer(model=model, reward_funcs=parity_reward, args=args, train_dataset=toy_dataset(),
                       processing_class=tokenizer, peft_config=peft_config(LoraSettings()) if lora else None)


class _Spy:
    """Records, per phase (rollout or not), whether a decoder layer's matmuls ran under autocast and
    their output dtype, and the dtype of every LM-head tile TRL's fused log-prob kernel folds."""

    def __init__(self, trainer: CASTTrainer, monkeypatch) -> None:
        self.layers: set[tuple[str, bool, torch.dtype, bool]] = set()
        self.tiles: set[torch.dtype] = set()
        self.phase = "score"
        model = trainer.model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.model.layers[0].mlp.down_proj.register_forward_hook(self._layer)
        fold = chunked._forward_tile

        def spy_fold(tile, *args, **kwargs):
            self.tiles.add(tile.dtype)
            return fold(tile, *args, **kwargs)

        monkeypatch.setattr(chunked, "_forward_tile", spy_fold)
        rollout = trainer._generate_single_turn  # the rollout, whichever decoder (`rollout_decoder`) runs it

        def spy_rollout(*args, **kwargs):
            self.phase = "rollout"
            try:
                return rollout(*args, **kwargs)
            finally:
                self.phase = "score"

        monkeypatch.setattr(trainer, "_generate_single_turn", spy_rollout)

    def _layer(self, module, inputs, output) -> None:
        self.layers.add((self.phase, torch.is_autocast_enabled("cpu"), output.dtype, torch.is_grad_enabled()))

    def phase_calls(self, phase: str) -> set[tuple[bool, torch.dtype]]:
        return {(autocast, dtype) for p, autocast, dtype, _ in self.layers if p == phase}


def _fp32_state(trainer: CASTTrainer) -> None:
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    state = [v for s in trainer.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.numel() > 1]
    assert state and {v.dtype for v in state} == {torch.float32}  # AdamW's moments


@pytest.mark.parametrize("decoder", ["castrl", "transformers"])
@pytest.mark.parametrize("lora", [False, True])
def test_bf16_autocast_over_fp32_weights_and_optimizer_state(tmp_path, monkeypatch, lora, decoder):
    """Today's `--bf16 true`: every forward (the rollout's, with LoRA too and either decoder, the scoring
    passes', the loss's with gradients) under bf16 autocast; weights and AdamW state fp32; the LM head
    projects in bf16."""
    trainer = _trainer(tmp_path, lora, bf16=True, rollout_decoder=decoder)
    spy = _Spy(trainer, monkeypatch)
    trainer.train()
    assert spy.phase_calls("rollout") == {(True, torch.bfloat16)}
    assert spy.phase_calls("score") == {(True, torch.bfloat16)}
    assert any(grad for p, _, _, grad in spy.layers if p == "score")  # the loss's forward was among them
    assert spy.tiles == {torch.bfloat16}  # logits in bf16, log-softmax folded in fp32 by TRL's kernel
    _fp32_state(trainer)


@pytest.mark.parametrize("lora", [False, True])
def test_cast_lm_head_to_fp32_scores_from_fp32_logits(tmp_path, monkeypatch, lora):
    """The documented switch, `--bf16 true --cast_lm_head_to_fp32 true`, builds on LoRA over tied embeddings
    (TRL alone raised AttributeError there) and every tile of every scored log-prob is fp32."""
    trainer = _trainer(tmp_path, lora, bf16=True, cast_lm_head_to_fp32=True)
    assert trainer.args.cast_lm_head_to_fp32  # restored after TRL's __init__
    spy = _Spy(trainer, monkeypatch)
    logps = []
    completion_logps = trainer._completion_logps
    monkeypatch.setattr(trainer, "_completion_logps", lambda *a, **k: logps.append(completion_logps(*a, **k)) or logps[-1])
    trainer.train()
    assert spy.tiles == {torch.float32}
    assert spy.phase_calls("score") == {(True, torch.bfloat16)}  # the backbone still runs under autocast
    assert logps and all(x.dtype == torch.float32 and torch.isfinite(x).all() for x in logps)  # the teacher's
    _fp32_state(trainer)


def test_fp32_runs_are_unchanged(tmp_path, monkeypatch):
    """Without mixed precision the rollout's autocast is a no-op: everything in fp32, as before."""
    trainer = _trainer(tmp_path, lora=True)
    spy = _Spy(trainer, monkeypatch)
    trainer.train()
    assert spy.phase_calls("rollout") == spy.phase_calls("score") == {(False, torch.float32)}
    assert spy.tiles == {torch.float32}


def test_fp32_head_logps_match_a_manual_fp32_head(tmp_path):
    """The installed head: log-probs of the fp32 projection of the (autocast) hidden states at TRL's temperature."""
    trainer = _trainer(tmp_path, lora=True, bf16=True, cast_lm_head_to_fp32=True, temperature=0.7)
    base = trainer.model.get_base_model()
    ids = torch.randint(3, 90, (2, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :4] = -100
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fused = trainer.model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, fused_lm_head=True)
        hidden = base.model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    logits = hidden[:, :-1].float() @ base.lm_head.weight.float().T / 0.7
    manual = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1) * (labels[:, 1:] != -100)
    assert fused.log_probs.dtype == torch.float32
    torch.testing.assert_close(fused.log_probs, manual, rtol=0, atol=1e-5)


def test_bf16_logits_warning(tmp_path, monkeypatch):
    warnings = []
    monkeypatch.setattr(precision_module.logger, "warning", lambda message: warnings.append(message))
    _trainer(tmp_path / "a", lora=False, bf16=True)
    assert len(warnings) == 1 and "--cast_lm_head_to_fp32 true" in warnings[0]
    _trainer(tmp_path / "b", lora=False, bf16=True, cast_lm_head_to_fp32=True)
    _trainer(tmp_path / "c", lora=False, bf16=True, advantage_estimator="grpo")
    assert len(warnings) == 1
