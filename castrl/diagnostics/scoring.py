"""Sampling groups and scoring their tokens under the student and teacher prompts (no trainer).

What `CASTTrainer` does inside TRL, done with plain transformers so a diagnosis needs no training
run: G completions per prompt at temperature T, then the log-prob of every sampled token after the
student prompt (s, spec §1) and after each teacher context (u), on the same completion ids. Logits
are divided by the sampling temperature and normalised in fp32 (spec §3: same temperature for both).
Position ids follow the attention mask, as `generate` builds them, so left padding does not shift
positions and s equals the log-prob the sampler actually drew from (a test checks it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from castrl.teacher import TeacherWeights, WeightsSpec, has_adapter, left_pad


@dataclass(frozen=True)
class Rollouts:
    """Sampled groups. B = n_prompts x G rollouts, T = longest completion; rows of a prompt are adjacent."""

    completion_ids: torch.Tensor  # (B, T) long; pad_token_id after the end
    mask: torch.Tensor  # (B, T) float, 1 on real tokens (up to and including the first eos)
    group_ids: torch.Tensor  # (B,) long, prompt index of each row
    texts: list[str]  # B decoded completions (special tokens skipped), for the verifier
    truncated: torch.Tensor  # (B,) bool: no eos within max_new_tokens


def chat_prompt_ids(tokenizer: Any, prompts: Sequence[Any]) -> list[list[int]]:
    """Token ids of chat (or plain-string) prompts, with the generation prompt, as `castrl.evaluate` builds them."""
    out = []
    for prompt in prompts:
        text = (
            prompt
            if isinstance(prompt, str)
            else tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        )
        out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return out


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
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
    progress: bool = True,
) -> Rollouts:
    """Draw `group_size` completions per prompt with pure temperature sampling (no top-k / top-p).

    `batch_size` counts rollouts per `generate` call; it is rounded down to whole groups (at least one).
    Seed torch before calling for reproducible samples.
    """
    model.eval()
    pad_id = tokenizer.pad_token_id
    per_call = max(1, batch_size // group_size)
    chunks: list[torch.Tensor] = []
    bar = tqdm(total=len(prompt_ids) * group_size, desc="sampling", unit="rollout", disable=not progress)
    try:
        for start in range(0, len(prompt_ids), per_call):
            ids, attn, _ = left_pad(prompt_ids[start : start + per_call], pad_id)
            out = model.generate(
                input_ids=ids.to(model.device),
                attention_mask=attn.to(model.device),
                do_sample=True,
                temperature=temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                num_return_sequences=group_size,
                pad_token_id=pad_id,
            )
            chunks.append(out[:, ids.shape[1] :].cpu())
            bar.update(out.shape[0])
    finally:
        bar.close()
    width = max(c.shape[1] for c in chunks)
    completion_ids = torch.cat(
        [torch.nn.functional.pad(c, (0, width - c.shape[1]), value=pad_id) for c in chunks], dim=0
    )
    eos = _eos_ids(model, tokenizer)
    mask = completion_mask(completion_ids, eos)
    ends = torch.isin(completion_ids, torch.tensor(eos, dtype=torch.long)) & (mask > 0)
    texts = tokenizer.batch_decode(completion_ids.masked_fill(mask == 0, pad_id), skip_special_tokens=True)
    group_ids = torch.arange(len(prompt_ids)).repeat_interleave(group_size)
    return Rollouts(completion_ids, mask, group_ids, texts, truncated=~ends.any(dim=1))


def _chunk_logps(
    model: Any, prompt_rows, completion_ids, mask, temperature: float, pad_id: int
) -> torch.Tensor:
    """(b, T) fp32 log-probs of `completion_ids` after the left-padded `prompt_rows`; 0 on padding."""
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
                _chunk_logps(
                    model,
                    prompt_ids[start:end],
                    completion_ids[start:end],
                    mask[start:end],
                    temperature,
                    pad_id,
                )
            )
            bar.update(len(parts[-1]))
    finally:
        bar.close()
    return torch.cat(parts, dim=0)


def teacher_weights_note(spec: str, model: Any) -> str:
    """What `spec` means in a run without training; raises ValueError on a malformed spec."""
    kind = WeightsSpec.parse(spec).kind
    if kind == "policy":
        return "policy: the sampling weights"
    if kind in ("ema", "refresh"):
        copy = "snapshot" if kind == "refresh" else "ema copy"
        return f"{spec}: equals the policy (no optimizer step has run, so the {copy} is the policy)"
    if has_adapter(model):
        return "frozen: the base model, LoRA adapter disabled"
    return "frozen: no adapter loaded, so the initial model is the policy"


@contextmanager
def teacher_scope(spec: str, model: Any) -> Iterator[None]:
    """Context in which `model` scores with the teacher's weights (spec §3); only `frozen` + adapter differs."""
    kind = WeightsSpec.parse(spec).kind
    if kind == "frozen" and has_adapter(model):
        with TeacherWeights("frozen", model).scoring(model):
            yield
        return
    yield
