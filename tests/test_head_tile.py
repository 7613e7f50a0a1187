"""The fused LM head's vocabulary tile (`castrl.trl.head_tile`): it reaches every fused call a training
step makes, it is put back afterwards, and it changes log-probs by float rounding only."""

from __future__ import annotations

import pytest
import torch
import trl.trainer.utils as trl_utils
from trl.trainer.utils import add_fused_lm_head

from castrl.trl import CASTTrainer
from castrl.trl.head_tile import CPU_VOCAB_TILE, resolve_vocab_tile, vocab_tile

from .trl_helpers import parity_reward, tiny_config, tiny_model_and_tokenizer, toy_dataset


def test_resolve_vocab_tile():
    assert resolve_vocab_tile(0, torch.device("cpu")) == CPU_VOCAB_TILE
    assert resolve_vocab_tile(0, torch.device("cuda")) is None  # TRL's Triton kernel keeps its own tile
    assert resolve_vocab_tile(512, torch.device("cuda")) == 512
    with pytest.raises(ValueError, match="lm_head_vocab_tile"):
        resolve_vocab_tile(-1, torch.device("cpu"))


def test_config_refuses_a_negative_tile(tmp_path):
    with pytest.raises(ValueError, match="lm_head_vocab_tile"):
        tiny_config(tmp_path, lm_head_vocab_tile=-8)


def test_training_step_uses_the_tile_and_restores_trls(tmp_path, monkeypatch):
    seen: list[int] = []
    real = trl_utils._ChunkedLogProbFunction

    class Spy:
        @staticmethod
        def apply(*args):
            seen.append(args[5])  # chunk_size, as TRL 1.16 passes it
            return real.apply(*args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Spy)
    before = trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE
    model, tokenizer = tiny_model_and_tokenizer()
    trainer = CASTTrainer(model=model, reward_funcs=parity_reward, train_dataset=toy_dataset(),
                          processing_class=tokenizer,
                          args=tiny_config(tmp_path, max_steps=1, lm_head_vocab_tile=16))  # fmt: skip
    trainer.train()
    assert seen and set(seen) == {16}  # student/teacher scoring and the loss's forward all used it
    assert trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE == before


def test_tile_changes_log_probs_by_rounding_only():
    model, tokenizer = tiny_model_and_tokenizer()
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    ids = torch.randint(0, len(tokenizer), (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = model(input_ids=ids, labels=ids, fused_lm_head=True)
        with vocab_tile(7):  # does not divide the vocabulary: a ragged last tile
            tiled = model(input_ids=ids, labels=ids, fused_lm_head=True)
    assert len(tokenizer) > 7
    torch.testing.assert_close(tiled.log_probs, whole.log_probs, rtol=0, atol=1e-5)
    torch.testing.assert_close(tiled.entropy, whole.entropy, rtol=0, atol=1e-5)
