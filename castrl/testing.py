"""Tiny, fully local model and tokenizer for tests and the tiny-model benchmark tier.

They stand in for SmolLM2 where only the plumbing matters (chat template, padding, generation,
saving, LoRA, trainer wiring): built in milliseconds, no download, no GGUF. The tokenizer is
character-level so any arithmetic text round-trips exactly, and its chat template renders the same
ChatML text as SmolLM2-135M-Instruct's, so prompt code is exercised the way the real model sees it.
The model is randomly initialised, so its outputs are meaningless by design.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

UNK_TOKEN = "<unk>"
BOS_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
# Same default system turn as SmolLM2-135M-Instruct's template (read from its GGUF metadata), so
# prompt lengths and layouts match the real model's.
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Digits, letters, punctuation (includes \ { } ^ _ for LaTeX such as \boxed{19}), space, newline, tab.
CHARACTERS = string.digits + string.ascii_letters + string.punctuation + " \n\t"


def build_char_tokenizer(save_dir: str | os.PathLike[str] | None = None) -> PreTrainedTokenizerFast:
    """Build a character-level fast tokenizer with ChatML special tokens; optionally save it.

    Ids: 0 ``<unk>``, 1 ``<|im_start|>`` (bos), 2 ``<|im_end|>`` (eos and pad, as in SmolLM2), then
    one id per character in ``CHARACTERS``. A BPE model with no merges splits text into single
    characters; the ``Fuse`` decoder joins tokens without the spaces the default decoder inserts.
    """
    specials = [UNK_TOKEN, BOS_TOKEN, EOS_TOKEN]
    vocab = {tok: i for i, tok in enumerate(specials + list(CHARACTERS))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK_TOKEN))
    core.decoder = decoders.Fuse()
    core.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token=UNK_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        padding_side="left",
        model_max_length=512,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    if save_dir is not None:
        tokenizer.save_pretrained(save_dir)
    return tokenizer


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    max_positions: int = 512,
    seed: int = 0,
) -> LlamaForCausalLM:
    """Randomly initialised fp32 Llama (same architecture family as SmolLM2) sized to ``tokenizer``.

    Initialisation runs under a forked RNG seeded with ``seed``, so the result is reproducible and
    the caller's global torch RNG state is left untouched. Embeddings are tied, as in SmolLM2.
    """
    if hidden % heads or heads % kv_heads:
        raise ValueError(
            f"hidden ({hidden}) must be divisible by heads ({heads}) and heads by kv_heads ({kv_heads})."
        )
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        **special,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(**special)
    return model.eval()


def save_tiny_model(save_dir: str | os.PathLike[str], seed: int = 0, **model_kwargs: int) -> Path:
    """Write the char tokenizer and a tiny model to ``save_dir`` so ``from_pretrained(save_dir)`` works offline."""
    path = Path(save_dir)
    tokenizer = build_char_tokenizer(path)
    build_tiny_model(tokenizer, seed=seed, **model_kwargs).save_pretrained(path)
    return path
