"""GRPO groups without a trainer: G completions per prompt at temperature T, as `castrl diagnose` samples
them (the rollouts CASTTrainer would draw inside TRL), through the one generation engine (`generate_ids`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from .generate import generate_ids


@dataclass(frozen=True)
class Rollouts:
    """Sampled groups. B = n_prompts x G rollouts, T = longest completion; rows of a prompt are adjacent."""

    completion_ids: torch.Tensor  # (B, T) long; pad_token_id after the end
    mask: torch.Tensor  # (B, T) float, 1 on real tokens (up to and including the first eos)
    group_ids: torch.Tensor  # (B,) long, prompt index of each row
    texts: list[str]  # B decoded completions (special tokens skipped), for the verifier
    truncated: torch.Tensor  # (B,) bool: no eos within max_new_tokens


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """The ids that end a sampled completion: the generation config's EOS id(s), else the tokenizer's."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos or [])


def completion_mask(completion_ids: torch.Tensor, eos_ids: Sequence[int]) -> torch.Tensor:
    """(B, T) float: 1 up to and including the first eos of each row (as TRL's completion_mask), else 0."""
    is_eos = torch.isin(completion_ids, torch.tensor(list(eos_ids), dtype=completion_ids.dtype))
    before_or_at = is_eos.long().cumsum(dim=1) - is_eos.long() == 0  # no eos strictly before t
    return before_or_at.float()


@torch.no_grad()
def sample_groups(
    model: Any,
    tokenizer: Any,
    prompt_ids: Sequence[Sequence[int]],
    *,
    group_size: int,
    max_new_tokens: int,
    temperature: float,
    batch_size: int = 32,
    decoder: str = "castrl",
    progress: bool = True,
) -> Rollouts:
    """Draw `group_size` completions per prompt with pure temperature sampling (no top-k / top-p).

    `batch_size` counts rollouts per `generate` call; it is rounded down to whole groups (at least one).
    `decoder`: see `generate_ids`.
    Seed torch before calling for reproducible samples.
    """
    model.eval()
    pad_id = tokenizer.pad_token_id
    per_call = max(1, batch_size // group_size)
    chunks: list[torch.Tensor] = []
    bar = tqdm(total=len(prompt_ids) * group_size, desc="sampling", unit="rollout", disable=not progress)
    try:
        for start in range(0, len(prompt_ids), per_call):
            chunks.append(generate_ids(model, prompt_ids[start : start + per_call], pad_id, do_sample=True,
                                       temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                                       num_return_sequences=group_size, decoder=decoder))  # fmt: skip
            bar.update(chunks[-1].shape[0])
    finally:
        bar.close()
    width = max(c.shape[1] for c in chunks)
    completion_ids = torch.cat(
        [torch.nn.functional.pad(c, (0, width - c.shape[1]), value=pad_id) for c in chunks], dim=0
    )
    eos = eos_ids(model, tokenizer)
    mask = completion_mask(completion_ids, eos)
    ends = torch.isin(completion_ids, torch.tensor(eos, dtype=torch.long)) & (mask > 0)
    texts = tokenizer.batch_decode(completion_ids.masked_fill(mask == 0, pad_id), skip_special_tokens=True)
    group_ids = torch.arange(len(prompt_ids)).repeat_interleave(group_size)
    return Rollouts(completion_ids, mask, group_ids, texts, truncated=~ends.any(dim=1))
