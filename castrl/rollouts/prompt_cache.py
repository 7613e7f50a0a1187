"""Score completions with each distinct prompt run once: its KV cache is shared by the group's rollouts.

A GRPO batch holds G completions of every prompt, so a plain scoring pass runs each prompt G times.
castrl's no-grad passes (the teacher, and the student when it is not fused into the loss) instead
run the distinct prompts once, without their last token, keep the KV cache, and run every row's
last prompt token + completion on a copy of its prompt's cache. Positions, masks and the scored
tokens are those of the one-pass forward, so the log-probs agree up to float rounding; the saving
is (G - 1) / G of the prompt tokens, which is most of the teacher's cost when its prompt is longer
than the completions (on the smollm2 bench: 136-token teacher prompts, <= 64-token completions). Rows
are scored longest first, each chunk only to its own longest scored token: completions are padded to
the batch's longest, which on the bundled model's rollouts is often 3-4x the typical one.

Only plain key/value caches are shared (`DynamicLayer`); models whose cache is anything else
(sliding-window, recurrent or hybrid layers) get `None` and the caller falls back to the full pass.
Host-free: TRL's scoring (`castrl.trl.scoring`, with its fused LM head) and `castrl diagnose`'s noise
floor (plain logits at a temperature) both call it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch

from .batching import scored_widths


def _cache_keyword(model: torch.nn.Module) -> str:
    """transformers >= 5.2x names the forward's cache argument `cache`; earlier 5.x `past_key_values`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(type(base).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _returned_cache(output) -> object:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def plain_key_value_cache(output) -> object | None:
    """The KV cache a forward `output` returned, if every layer of it is plain key/value (`DynamicLayer`),
    which can be copied, cut and repeated row by row; else None (sliding-window, recurrent or hybrid
    layers), and the caller falls back to a pass that needs no such surgery."""
    from transformers.cache_utils import DynamicLayer

    cache = _returned_cache(output)
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return None
    return cache


def distinct_prompts(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, mask) of the distinct left-padded prompt rows and `inverse`, each row's index among them:
    rows with equal ids and mask share one prefill."""
    distinct, inverse = torch.unique(torch.cat([ids, mask], dim=1), dim=0, return_inverse=True)
    return distinct[:, : ids.shape[1]], distinct[:, ids.shape[1] :], inverse


def _prompt_key_values(model, ids, mask, batch_size) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Per-layer (keys, values) of the prompts `ids`, (U, kv_heads, width, dim) each; None if not plain KV."""
    chunks: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
    for start in range(0, ids.size(0), batch_size):
        output = model(input_ids=ids[start : start + batch_size], attention_mask=mask[start : start + batch_size],
                       use_cache=True, logits_to_keep=1)  # fmt: skip
        cache = plain_key_value_cache(output)
        if cache is None:
            return None
        chunks.append([(layer.keys, layer.values) for layer in cache.layers])
    return [(torch.cat([c[i][0] for c in chunks]), torch.cat([c[i][1] for c in chunks])) for i in range(len(chunks[0]))]


@torch.no_grad()
def completion_logps_shared_prompts(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    batch_size: int,
    autocast: Callable[[], AbstractContextManager] | None = None,
    temperature: float | None = None,
) -> torch.Tensor | None:
    """(B, T) log-probs of `completion_ids` after their left-padded prompts, each distinct prompt run once.

    With `temperature` None, `model` must carry TRL's fused LM head (`add_fused_lm_head`, as GRPOTrainer
    installs it), so the temperature and logit scaling are TRL's; with a temperature, the plain logits
    are divided by it before an fp32 log-softmax (`castrl diagnose`'s scoring). Padding completion tokens
    score 0, as in TRL. Prompts must be at least 2 tokens wide (one is cached, one is fed with the
    completion). Returns None when the model's cache is not plain key/value, so the caller can fall back
    to the full pass.
    """
    if prompt_ids.shape != prompt_mask.shape or completion_ids.shape != completion_mask.shape:
        raise ValueError(f"ids/mask shapes differ: prompt {tuple(prompt_ids.shape)} vs {tuple(prompt_mask.shape)}, "
                         f"completion {tuple(completion_ids.shape)} vs {tuple(completion_mask.shape)}")
    n_rows, prompt_len = prompt_ids.shape
    if prompt_len < 2:
        raise ValueError(f"shared prompt scoring needs prompts of >= 2 tokens, got width {prompt_len}")
    if completion_ids.size(1) == 0:
        return completion_ids.new_zeros(completion_ids.shape, dtype=torch.float32)
    from transformers import DynamicCache

    autocast = autocast or nullcontext
    ids, mask, inverse = distinct_prompts(prompt_ids, prompt_mask)  # one cache row per distinct prompt
    with autocast():
        key_values = _prompt_key_values(model, ids[:, :-1], mask[:, :-1], batch_size)
    if key_values is None:
        return None
    keyword = _cache_keyword(model)
    labels = completion_ids.masked_fill(completion_mask == 0, -100)
    # Rows are taken longest first and each chunk runs to its own longest scored token, not the batch's:
    # columns after a row's last scored token change none of its scores (causal attention) and score 0.
    widths = scored_widths(completion_mask)
    order = torch.argsort(widths, descending=True, stable=True)
    logps = torch.zeros(completion_ids.shape, dtype=torch.float32, device=completion_ids.device)
    for start in range(0, n_rows, batch_size):
        rows = order[start : start + batch_size]
        width = int(widths[rows].max())
        if width == 0:  # nothing scored in these rows (or any after them)
            break
        owner = inverse[rows]
        cache = DynamicCache()
        for layer, (keys, values) in enumerate(key_values):
            cache.update(keys[owner], values[owner], layer)
        # The last prompt token is fed here, so the scored positions are exactly the completion tokens.
        tokens = completion_ids[rows, :width]
        input_ids = torch.cat([ids[owner, -1:], tokens[:, :-1]], dim=1)
        attention_mask = torch.cat([mask[owner], completion_mask[rows, : width - 1]], dim=1)
        with autocast():
            if temperature is None:
                output = model(input_ids=input_ids, attention_mask=attention_mask, shift_labels=labels[rows, :width],
                               fused_lm_head=True, **{keyword: cache})  # fmt: skip
                logps[rows, :width] = output.log_probs.float()
                continue
            logits = model(input_ids=input_ids, attention_mask=attention_mask, **{keyword: cache}).logits
        picked = torch.log_softmax(logits.float() / temperature, dim=-1).gather(-1, tokens[:, :, None]).squeeze(-1)
        logps[rows, :width] = picked * completion_mask[rows, :width]
    return logps
