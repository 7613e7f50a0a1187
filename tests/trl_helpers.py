"""Tiny-model fixtures for the trainer tests: a char tokenizer, a 2-layer Llama, a toy dataset."""

from __future__ import annotations

import zlib

from datasets import Dataset

from castrl.testing import build_char_tokenizer, build_tiny_model
from castrl.trl import CASTTrainerConfig


def toy_dataset(n: int = 8) -> Dataset:
    rows = []
    for i in range(n):
        a, b = i % 5, (3 * i) % 7
        q = f"What is {a} + {b}?"
        rows.append({"prompt": [{"role": "user", "content": q}], "problem": q, "answer": str(a + b)})
    return Dataset.from_list(rows)


def parity_reward(completions, **kwargs):
    """Deterministic rewards that are mixed within a group with high probability: a hash bit of the text."""
    return [float(zlib.crc32(c[0]["content"].encode()) % 2) for c in completions]


def zero_reward(completions, **kwargs):
    return [0.0 for _ in completions]


def tiny_config(tmp_path, **overrides) -> CASTTrainerConfig:
    settings = dict(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        bf16=False,
        max_steps=2,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=10,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        gradient_checkpointing=False,
        learning_rate=1e-2,
        seed=0,
        # The random tiny model never emits its end token within 10 tokens, so the paper's truncation
        # masking (castrl's default) would mask every completion; tests of it set it back to True.
        mask_truncated_completions=False,
        # stock TRL sampling, so these tests compare with GRPOTrainer as it ships
        temperature=1.0,
        top_p=1.0,
        top_k=0,
    )
    settings.update(overrides)
    return CASTTrainerConfig(**settings)


def tiny_model_and_tokenizer(seed: int = 0):
    tokenizer = build_char_tokenizer()
    return build_tiny_model(tokenizer, seed=seed), tokenizer
