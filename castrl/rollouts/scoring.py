"""Log-probs of sampled tokens after any prompt, without a trainer: the student's (s, spec §1) and each
teacher's (u), on the same completion ids.

What `CASTTrainer`'s no-grad passes do inside TRL, with plain transformers: logits are divided by the
sampling temperature and normalised in fp32 (spec §3: same temperature for both). Position ids follow
the attention mask, as `generate` builds them, so left padding does not shift positions and s equals the
log-prob the sampler actually drew from (a test checks it). `completion_logps` runs one forward per row
(in batches); `castrl.rollouts.prompt_cache` runs each distinct prompt once. A teacher scores with the
module `scorer` yields for the teacher `castrl.teacher.build_teacher` built.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from tqdm.auto import tqdm

from .batching import left_pad


def chunk_logps(
    model: Any, prompt_rows: Sequence[Sequence[int]], completion_ids: torch.Tensor, mask: torch.Tensor,
    temperature: float, pad_id: int,
) -> torch.Tensor:
    """(b, T) fp32 log-probs of `completion_ids` after the left-padded `prompt_rows`; 0 on padding. One
    forward pass, with or without autograd as the caller has it."""
    p_ids, p_mask, _ = left_pad(prompt_rows, pad_id)
    input_ids = torch.cat([p_ids, completion_ids], dim=1).to(model.device)
    attn = torch.cat([p_mask, mask.long()], dim=1).to(model.device)
    positions = (attn.cumsum(dim=1) - 1).masked_fill(attn == 0, 0)  # as generate() builds them
    t = completion_ids.shape[1]
    # logits_to_keep = T + 1: the last prompt position predicts token 0, the last token predicts nothing
    logits = model(
        input_ids=input_ids, attention_mask=attn, position_ids=positions, logits_to_keep=t + 1
    ).logits
    logps = torch.log_softmax(logits[:, :-1].float() / temperature, dim=-1)
    picked = logps.gather(-1, completion_ids.to(logps.device)[..., None]).squeeze(-1).cpu()
    return picked * mask


@torch.no_grad()
def completion_logps(
    model: Any,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    temperature: float,
    pad_id: int,
    batch_size: int = 16,
    desc: str = "scoring",
    progress: bool = True,
) -> torch.Tensor:
    """(B, T) fp32 log pi(y_t | prompt_i, y_<t) / T-tempered, for one prompt per row; detached, 0 on padding.

    Args:
        model: causal LM (in eval mode; no gradient is taken).
        prompt_ids: B token-id lists, the context each row is scored after (student or teacher prompt).
        completion_ids: (B, T) long sampled tokens; mask: (B, T) float, 1 on real tokens.
        temperature: the sampling temperature (> 0); logits are divided by it before log_softmax.
        pad_id: id used to left-pad prompts (masked out of attention).
        batch_size: rows per forward pass; desc/progress: the tqdm bar.
    """
    if len(prompt_ids) != completion_ids.shape[0]:
        raise ValueError(f"{len(prompt_ids)} prompts for {completion_ids.shape[0]} completion rows")
    model.eval()
    parts = []
    bar = tqdm(total=completion_ids.shape[0], desc=desc, unit="rollout", disable=not progress)
    try:
        for start in range(0, completion_ids.shape[0], batch_size):
            end = start + batch_size
            parts.append(
                chunk_logps(model, prompt_ids[start:end], completion_ids[start:end], mask[start:end], temperature,
                            pad_id)
            )  # fmt: skip
            bar.update(len(parts[-1]))
    finally:
        bar.close()
    return torch.cat(parts, dim=0)


@contextmanager
def scorer(teacher: Any, model: Any) -> Iterator[Any]:
    """The module that scores as `teacher` (a `castrl.teacher.build_teacher` result) while the context is
    open: `model` with the teacher's weights in it, or an external teacher's own model."""
    with teacher.scoring(model) as external:
        yield model if external is None else external
