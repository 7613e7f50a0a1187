"""Dataset rows -> the teacher's prompt token ids, left-padded: one function for every host.

Each host tokenises the teacher's prompt the way it tokenises the student's (TRL, verl and
diagnose differ in special tokens and chat-template calls), so it passes its own `tokenize`;
everything else — the context, the peers, the left cut to `max_length` and the left padding
(`castrl.rollouts.batching`, re-exported here as `left_pad`) — is here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from castrl.rollouts.batching import left_pad

from .contexts import ASSISTANT_PREFIX, DEFAULT_TAG_PLACEMENT, build_teacher_prompt, needs_assistant_prefix

Tokenize = Callable[[list[Any]], list[list[int]]]
EncodeText = Callable[[str], list[int]]  # raw text -> ids, no special tokens (the host's tokenizer)


def teacher_prompt_ids(
    examples: Sequence[Mapping[str, Any]],
    context: str,
    tokenize: Tokenize,
    peers: Sequence[str | None] | None = None,
    placement: str = DEFAULT_TAG_PLACEMENT,
    encode_text: EncodeText | None = None,
) -> list[list[int]]:
    """The teacher prompt of each dataset row under `context`, tokenised by the host's `tokenize`.

    `peers`: each row's successful peer text for a context that reads `{peer}` (None: no peers).
    `placement` = `teacher_tag_placement`; with `assistant_prefix`, a chat prompt's ids are followed by
    `encode_text(ASSISTANT_PREFIX)`, so the tag opens the assistant turn whatever the chat template.
    """
    peers = [None] * len(examples) if peers is None else peers
    if len(peers) != len(examples):
        raise ValueError(f"{len(peers)} peers for {len(examples)} rows")
    prompts = [build_teacher_prompt(x, context, peer=p, placement=placement) for x, p in zip(examples, peers, strict=True)]
    ids = tokenize(prompts)
    if not any(needs_assistant_prefix(p, placement) for p in prompts):
        return ids
    if encode_text is None:
        raise ValueError("teacher_tag_placement='assistant_prefix' needs the host's encode_text (raw text -> ids)")
    prefix = list(encode_text(ASSISTANT_PREFIX))
    return [list(row) + prefix if needs_assistant_prefix(p, placement) else row for row, p in zip(ids, prompts, strict=True)]


def teacher_prompt_batch(
    examples: Sequence[Mapping[str, Any]],
    context: str,
    tokenize: Tokenize,
    max_length: int,
    pad_id: int,
    peers: Sequence[str | None] | None = None,
    placement: str = DEFAULT_TAG_PLACEMENT,
    encode_text: EncodeText | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Left-padded (B, P) teacher prompt ids and mask (CPU, long), and how many prompts were cut."""
    ids = teacher_prompt_ids(examples, context, tokenize, peers, placement, encode_text)
    return left_pad(ids, pad_id, max_length)
