"""castrl's decoding loop: completions from `model.generate`'s sampling distribution, without its waste.

On the bundled model on 2 CPU cores a 32-row sampled decode step was 238 ms, of which ~55 ms was
choosing the token and not the model: `generate` sorts the whole 49,152-entry vocabulary for top-p and
`torch.multinomial` draws one exponential per vocabulary entry, although top-k = 20 had already set all
but 20 of them to -inf; and rows that had ended kept decoding (as pads) until the longest row ended.
`decode` (castrl's choice, `rollout_decoder="castrl"`; "transformers" keeps `model.generate`):
- prefills each distinct prompt once and copies its KV cache to its rows (a GRPO batch repeats each
  prompt G times);
- picks tokens among the top-k only (`pick_tokens`): temperature, then top-k, then top-p on those k,
  the order and keep rules of transformers' warpers, so the distribution is the same;
- drops a row from the batch (and its KV cache) at its stop token.
Draws use torch's global RNG, so a seed reproduces a run, but not `generate`'s draws for that seed.
Plain key/value caches only (`DynamicLayer`); anything else is refused so the caller uses `generate`.
`generate_ids` calls it for castrl's own passes (`castrl eval`, `castrl diagnose`, the bench's evaluations);
`generate_with_decode` puts it under a host's `model.generate` call (CASTTrainer's TRL rollouts).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from .prompt_cache import _cache_keyword, distinct_prompts, plain_key_value_cache

DECODERS = ("castrl", "transformers")


def check_decoder(name: str, flag: str = "decoder") -> str:
    """`name` if it is a known decoder, else a ValueError naming `flag` and the choices."""
    if name not in DECODERS:
        raise ValueError(f"{flag} must be one of {', '.join(DECODERS)}; got {name!r}")
    return name


@dataclass(frozen=True)
class Sampling:
    """How `decode` picks a token: greedy unless `do_sample`; then temperature, top-k (0 = off) and
    top-p (1 = off), as `GenerationConfig` names them."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"sampling needs a temperature > 0; got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1]; got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off); got {self.top_k}")


def candidates(logits: torch.Tensor, sampling: Sampling) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampling distribution of (R, V) fp32 logits as (R, C) probabilities and their (R, C) token ids.

    transformers' warpers in their order: logits / temperature; keep the top-k; keep the smallest set
    of the most likely tokens whose probability reaches top-p (a token stays while the mass of the
    tokens before it is < top_p; the first always stays). With top-k on, C = k: only the candidates
    are sorted and normalised, not the whole vocabulary. Ties at the k-th value keep exactly k tokens
    here, where transformers keeps every tied one (measure zero for float logits)."""
    scores = logits / sampling.temperature if sampling.temperature != 1.0 else logits
    if 0 < sampling.top_k < scores.shape[-1]:
        values, index = scores.topk(sampling.top_k, dim=-1)  # sorted, most likely first
    elif sampling.top_p < 1.0:
        values, index = scores.sort(dim=-1, descending=True)
    else:
        return scores.softmax(-1), torch.arange(scores.shape[-1], device=scores.device).expand_as(scores)
    if sampling.top_p < 1.0:
        probs = values.softmax(-1)
        mass_before = probs.cumsum(-1) - probs
        values = values.masked_fill(mass_before >= sampling.top_p, float("-inf"))
    return values.softmax(-1), index


def pick_tokens(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """(R,) next tokens from (R, V) fp32 logits: the argmax, or one draw from `candidates`."""
    if not sampling.do_sample:
        return logits.argmax(-1)
    probs, index = candidates(logits, sampling)
    return index.gather(1, torch.multinomial(probs, 1)).squeeze(1)


@torch.no_grad()
def decode(
    model: torch.nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    max_new_tokens: int,
    sampling: Sampling,
    stop_ids: torch.Tensor,
    pad_id: int,
) -> torch.Tensor | None:
    """(R, steps) new token ids after the left-padded prompts `ids` / `mask` (R, T), each row ending at
    its first stop token (kept) and padded with `pad_id` after it, on `ids`' device; `steps` <=
    `max_new_tokens` is the longest row's length, as `generate` returns.

    None, after the prefill, when the model's cache is not plain key/value (sliding-window, recurrent
    or hybrid layers): the caller falls back to `model.generate`."""
    if ids.shape != mask.shape or ids.dim() != 2:
        raise ValueError(f"ids and mask must be the same (rows, tokens) shape; got {tuple(ids.shape)}, {tuple(mask.shape)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
    rows, device = ids.shape[0], ids.device
    mask = mask.long()
    first_ids, first_mask, inverse = distinct_prompts(ids, mask)
    first_positions = (first_mask.cumsum(-1) - 1).clamp(min=0)
    output = model(input_ids=first_ids, attention_mask=first_mask, position_ids=first_positions, use_cache=True,
                   logits_to_keep=1)  # fmt: skip
    cache = plain_key_value_cache(output)
    if cache is None:
        return None
    cache.batch_select_indices(inverse)
    logits = output.logits[:, -1].float()[inverse]
    del output

    stops = stop_ids.to(device)
    new = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    live = torch.arange(rows, device=device)  # the original row of each row still decoding
    position = (mask.sum(-1) - 1).clamp(min=0)  # each row's last prompt position (left padding: tokens - 1)
    padded = not bool(mask.all())
    keyword = _cache_keyword(model)
    steps = 0
    while True:
        token = pick_tokens(logits, sampling)
        new[live, steps] = token
        steps += 1
        if steps == max_new_tokens:
            break
        going = ~torch.isin(token, stops)
        if not bool(going.all()):
            keep = going.nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            live, token, mask, position = live[keep], token[keep], mask[keep], position[keep]
            cache.batch_select_indices(keep)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        position = position + 1
        output = model(input_ids=token[:, None], attention_mask=mask if padded else None,
                       position_ids=position[:, None], use_cache=True, **{keyword: cache})  # fmt: skip
        logits = output.logits[:, -1].float()
        del output
    return new[:, :steps]


@dataclass(frozen=True)
class Plan:
    """What `model.generate` would do with some arguments, in the terms `decode` takes."""

    sampling: Sampling
    max_new_tokens: int
    stop_ids: torch.Tensor
    pad_id: int
    copies: int  # num_return_sequences


def plan_of(model: Any, ids: torch.Tensor, generation_config: Any = None, **kwargs: Any) -> Plan | None:
    """The `Plan` of `model.generate(ids, generation_config=..., **kwargs)`, or None when generate would
    do anything `decode` does not (beam search, a logits processor besides temperature / top-k / top-p, a
    stop string, returned scores or dicts, extra model inputs, no `max_new_tokens`, steps synced across
    processes: `needs_synced_steps`).

    The effective settings are generate's own: the model's generation config, the arguments and
    transformers' global defaults, merged by transformers' `_prepare_generation_config`, and the
    processors its `_get_logits_processor` builds (read back, so a new kind of processor falls back to
    generate instead of being ignored). Those three are private: if they change shape, None as well."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    synced = kwargs.pop("synced_gpus", None)
    if synced if synced is not None else needs_synced_steps(model):
        return None
    try:
        config, extra = model._prepare_generation_config(generation_config, **kwargs)
        model._prepare_special_tokens(config, kwargs_has_attention_mask=True, device=ids.device)
        processors = model._get_logits_processor(generation_config=config, input_ids_seq_length=ids.shape[1],
                                                 encoder_input_ids=ids, device=ids.device, model_kwargs={})  # fmt: skip
    except (AttributeError, TypeError, ValueError):
        return None
    if extra or config.max_new_tokens is None or (config.num_beams or 1) != 1 or config.stop_strings:
        return None
    if config.return_dict_in_generate or config.output_scores or config.output_logits or config.max_time:
        return None
    settings: dict[str, Any] = {}
    for processor in processors:
        if isinstance(processor, TemperatureLogitsWarper) and not settings:
            settings["temperature"] = float(processor.temperature)
        elif isinstance(processor, TopKLogitsWarper) and "top_k" not in settings and "top_p" not in settings:
            settings["top_k"] = int(processor.top_k)
        elif isinstance(processor, TopPLogitsWarper) and "top_p" not in settings and processor.min_tokens_to_keep == 1:
            settings["top_p"] = float(processor.top_p)
        else:
            return None
    eos, pad = config._eos_token_tensor, config._pad_token_tensor
    stops = torch.zeros(0, dtype=torch.long) if eos is None else eos.reshape(-1).long().cpu()
    if pad is None:
        return None
    sampling = Sampling(do_sample=bool(config.do_sample), **settings) if config.do_sample else Sampling()
    return Plan(sampling, int(config.max_new_tokens), stops, int(pad.reshape(-1)[0]), int(config.num_return_sequences or 1))


def needs_synced_steps(model: Any) -> bool:
    """Whether generate would keep every process stepping until all are done (its `synced_gpus`): weights
    sharded over several processes (DeepSpeed ZeRO-3, FSDP) gather in every forward, so a rank whose rows
    ended must keep running forwards. `decode` stops with its own rows, so such runs use generate."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return False
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
    from transformers.integrations.fsdp import is_fsdp_managed_module

    return bool(is_deepspeed_zero3_enabled() or is_fsdp_managed_module(model))


def decode_like_generate(model: Any, ids: torch.Tensor, mask: torch.Tensor, generation_config: Any = None,
                         **kwargs: Any) -> torch.Tensor | None:  # fmt: skip
    """`decode` in place of `model.generate(input_ids=ids, attention_mask=mask, ...)`: (R x copies,
    T_new) new token ids, prompt-major like generate's `num_return_sequences`, cut after the last
    step any row used; None when `plan_of` finds the arguments need generate."""
    plan = plan_of(model, ids, generation_config, **kwargs)
    if plan is None:
        return None
    if plan.copies > 1:
        ids, mask = ids.repeat_interleave(plan.copies, dim=0), mask.repeat_interleave(plan.copies, dim=0)
    return decode(model, ids, mask, max_new_tokens=plan.max_new_tokens, sampling=plan.sampling,
                  stop_ids=plan.stop_ids, pad_id=plan.pad_id)  # fmt: skip


@contextmanager
def generate_with_decode(model: Any) -> Iterator[None]:
    """While open, `model.generate(input_ids=..., attention_mask=..., ...)` runs `decode` where `plan_of`
    allows and the model's own generate otherwise, and returns what generate would: the prompts with
    the new tokens after them. A host that calls `model.generate` itself (TRL's rollouts) decodes with
    castrl this way without a copy of its code; the instance attribute is removed on exit."""
    own = model.generate
    previous = vars(model).get("generate")

    def generate(*args: Any, input_ids: Any = None, attention_mask: Any = None, generation_config: Any = None,
                 **kwargs: Any) -> Any:  # fmt: skip
        if not args and input_ids is not None and attention_mask is not None and attention_mask.dim() == 2:
            new = decode_like_generate(model, input_ids, attention_mask, generation_config, **kwargs)
            if new is not None:
                return torch.cat([input_ids, new.to(input_ids.device)], dim=1)
        return own(*args, input_ids=input_ids, attention_mask=attention_mask, generation_config=generation_config,
                   **kwargs)  # fmt: skip

    model.generate = generate
    try:
        yield
    finally:
        if previous is None:
            del model.generate
        else:
            model.generate = previous
