"""castrl's no-grad scoring passes in TRL: the student's and the teacher's log-probs of the sampled tokens.

`completion_logps` scores the completions after any prompt, at TRL's temperature: each distinct
prompt once when its KV cache can be shared (`castrl.rollouts.prompt_cache`), else one full forward per rollout
through TRL's own `_get_per_token_logps_and_entropies`. The teacher's prompts are built from the
dataset row and the teacher context (`castrl.teacher`), tokenised as TRL tokenises the student's,
cut from the left to `teacher_max_prompt_length` and left-padded (`castrl.teacher.teacher_prompt_batch`,
the one function every host uses); RLRT's
`with_peer_success` context also reads another correct rollout of the row's group (`peer_texts`).
`CASTTrainer` wires these to its model, teacher weights and processes.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from transformers.utils import logging
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import add_fused_lm_head

from castrl.rollouts.peers import peer_texts as draw_peer_texts
from castrl.rollouts.prompt_cache import completion_logps_shared_prompts

from .config import CASTTrainerConfig

logger = logging.get_logger(__name__)

# GRPOTrainer._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
# batch_size=...) -> (logps (B, T), entropies, ...): the one-pass scoring forward.
FullPass = Callable[..., tuple[Any, ...]]


@torch.no_grad()
def completion_logps(
    model: torch.nn.Module,
    args: CASTTrainerConfig,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    output: dict,
    full_pass: FullPass,
    autocast: Callable[[], AbstractContextManager],
    share_prompt_cache: bool,
) -> tuple[torch.Tensor, bool]:
    """(B, T) fp32 no-grad log-probs of `output`'s completion tokens after the left-padded
    (B, P) `prompt_ids`, and whether later passes may still share prompt caches.

    `share_prompt_cache` (the config field, cleared for good once a model's cache proved not plain
    key/value) runs each distinct prompt once; otherwise, or as the fallback, `full_pass` runs one
    forward per rollout with `args.per_device_train_batch_size` rows at a time.
    """
    completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
    batch_size = args.per_device_train_batch_size
    with disable_gradient_checkpointing(model, args.gradient_checkpointing_kwargs):
        if share_prompt_cache and prompt_ids.size(1) > 1:
            logps = completion_logps_shared_prompts(
                model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                batch_size=batch_size, autocast=autocast,
            )  # fmt: skip
            if logps is not None:
                return logps, True
            share_prompt_cache = False  # not a plain key/value cache: full passes from now on
            logger.warning("share_prompt_cache: this model's KV cache cannot be shared; "
                           "scoring with one full forward per rollout")  # fmt: skip
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        logps, _, _ = full_pass(model, input_ids, attention_mask, completion_ids.size(1), batch_size=batch_size)
    return logps.float(), share_prompt_cache


def tokenize_prompts(
    processing_class: Any, prompts: list, chat_template: str | None, chat_template_kwargs: dict
) -> list[list[int]]:
    """Token ids of each prompt: plain text as is, conversations through the chat template with the
    generation prompt appended, as TRL tokenises the student's prompts."""
    if isinstance(prompts[0], str):
        return processing_class(text=prompts)["input_ids"]
    return processing_class.apply_chat_template(
        conversation=prompts,
        chat_template=chat_template,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        **chat_template_kwargs,
    )["input_ids"]


def peer_texts(
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    correct: torch.Tensor,
    group_ids: torch.Tensor,
    seed: int,
    rows: slice,
    decode: Callable[..., str],
) -> list[str | None]:
    """For each row in `rows`, the text of another correct rollout of its group (RLRT's teacher), or
    None (`castrl.rollouts.peers`, seeded by `seed`).

    completion_ids, completion_mask: (B, T) of the whole batch, gathered from all processes (a group
    may straddle them); correct: (B,) bool; group_ids: (B,) int. Only valid (unmasked) tokens are
    decoded, and a row with none is nobody's peer: a truncated completion TRL masked never is.
    """
    correct = correct & (completion_mask.sum(dim=1) > 0)
    return draw_peer_texts(
        correct.tolist(), group_ids.tolist(),
        lambda j: decode(completion_ids[j][completion_mask[j] > 0].tolist(), skip_special_tokens=True),
        seed=seed, rows=rows,
    )  # fmt: skip


def fused_lm_head_for(args: CASTTrainerConfig, temperature: float) -> Callable[[Any], None]:
    """Give an external teacher model TRL's fused LM head, as TRL gives its own reference model, so
    the same scoring forward (`_get_per_token_logps_and_entropies`) runs on it."""
    return lambda model: add_fused_lm_head(model, temperature=temperature, cast_lm_head_to_fp32=args.cast_lm_head_to_fp32)
