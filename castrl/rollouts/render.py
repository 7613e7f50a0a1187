"""Prompts to token ids: the one renderer of castrl's own generation and scoring passes.

A prompt is chat messages, rendered with the tokenizer's chat template and the generation prompt, or a
string used as it is (already rendered, e.g. the bench's plain "Q: ...\\nA:" prompts for a model without a
chat template). The ids get no special tokens added: the rendered text holds them, so a prompt is the same
token sequence whether `castrl eval` generates from it, `castrl diagnose` samples a group from it or scores
a completion after it. The TRL and verl adapters tokenise as their hosts do (`castrl.trl.scoring`,
`castrl.integrations.verl.teacher_inputs`): that is the host's need, not castrl's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# A prompt: chat messages (rendered with the tokenizer's chat template) or an already rendered string.
Prompt = list[dict[str, str]] | str


def render_prompt(tokenizer: Any, prompt: Prompt) -> str:
    """A chat prompt through the tokenizer's chat template; a string prompt as it is (already rendered)."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def prompt_ids(tokenizer: Any, prompts: Sequence[Prompt]) -> list[list[int]]:
    """Token ids of each prompt (`render_prompt`, then the tokenizer without special tokens)."""
    return [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts]
