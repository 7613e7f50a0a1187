"""Generation: the one `model.generate` call of castrl's own passes, and the completions built on it.

`generate_ids` left-pads prompt ids and generates; everything that samples or decodes greedily outside a
host's own rollout engine goes through it: `generate_completions` (greedy or sampled completions per
prompt, for `castrl eval`, the held-out accuracy of `castrl train` and the bench, and the roofline's
rollout) and `castrl.rollouts.groups.sample_groups` (a diagnosis's GRPO groups). By default it decodes
with castrl's loop (`castrl.rollouts.decode`), and with `model.generate` where that loop does not cover
the settings or `decoder="transformers"`. Inside training, TRL's transformers rollouts reach the same
loop through `generate_with_decode`; vLLM and verl keep their own generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from .batching import left_pad
from .decode import check_decoder, decode_like_generate
from .prompt_cache import _cache_keyword, plain_key_value_cache
from .render import Prompt, prompt_ids


class Completion(NamedTuple):
    """One generated completion: decoded text, its length in tokens (EOS included) and those token ids."""

    text: str
    tokens: int
    ids: tuple[int, ...] = ()


def generate_ids(
    model: Any, rows: Sequence[Sequence[int]], pad_id: int, *, decoder: str = "castrl", **kwargs: Any
) -> torch.Tensor:
    """(rows x num_return_sequences, T_new) generated token ids on the CPU, prompt-major (prompt 0's
    sequences first), after the left-padded prompt `rows`; `kwargs` go to `model.generate` (sampling,
    `max_new_tokens`, `num_return_sequences`). After a sequence's end, generate only pads with `pad_id`.

    With several sequences per prompt, each prompt is prefilled once and its KV cache copied to its
    sequences (`shared_prefill`), instead of `generate` prefilling every copy: on the bundled model's
    one-shot prompts (~110 tokens) the prefill was 7.4 of 10.8 s of a 4 x 8 sampled batch on 2 CPU cores.
    Positions, masks and the sampling draws are generate's own, so only float rounding differs.

    `decoder="castrl"` (the default) runs `castrl.rollouts.decode` instead wherever it does what generate
    would (`plan_of`): the same distribution with other draws, and no decoding of finished rows."""
    ids, mask, _ = left_pad(rows, pad_id)
    ids, mask = ids.to(model.device), mask.to(model.device)
    if check_decoder(decoder) == "castrl":
        new = decode_like_generate(model, ids, mask, pad_token_id=pad_id, **kwargs)
        if new is not None:
            return new.cpu()
    copies = int(kwargs.get("num_return_sequences", 1) or 1)
    cache = shared_prefill(model, ids, mask, copies) if copies > 1 else None
    if cache is not None:
        kwargs = {**kwargs, "num_return_sequences": 1, _cache_keyword(model): cache}
        ids, mask = ids.repeat_interleave(copies, dim=0), mask.repeat_interleave(copies, dim=0)
    out = model.generate(input_ids=ids, attention_mask=mask, pad_token_id=pad_id, **kwargs)
    return out[:, ids.shape[1] :].cpu()


@torch.no_grad()
def shared_prefill(model: Any, ids: torch.Tensor, mask: torch.Tensor, copies: int) -> Any | None:
    """The KV cache of each left-padded prompt in `ids` but its last token, computed once and repeated
    `copies` times along the batch (prompt-major, as `num_return_sequences` orders rows), with the
    position ids `generate` gives left-padded rows. `generate` then feeds only each row's last prompt
    token. None (the caller prefills per sequence) for prompts under 2 tokens or a cache that is not plain
    key/value (sliding-window, recurrent or hybrid layers)."""
    if ids.shape[1] < 2:
        return None
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    output = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                   use_cache=True, logits_to_keep=1)  # fmt: skip
    cache = plain_key_value_cache(output)
    if cache is None:
        return None
    cache.batch_repeat_interleave(copies)
    return cache


def stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """Token ids that end a completion: the generation config's EOS id(s), the tokenizer's EOS and pad."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos])
    ids |= {tokenizer.eos_token_id, tokenizer.pad_token_id}
    return sorted(i for i in ids if i is not None)


def _chunks(n_prompts: int, samples: int, batch_size: int) -> list[tuple[int, int, int]]:
    """Generate calls as (first prompt, prompt count, sequences per prompt), each <= batch_size sequences.

    Whole prompts are packed while `samples` fits in a batch; otherwise one prompt's samples are split
    over several calls of at most `batch_size` sequences.
    """
    if samples <= batch_size:
        per_call = batch_size // samples
        return [(s, min(per_call, n_prompts - s), samples) for s in range(0, n_prompts, per_call)]
    calls = []
    for p in range(n_prompts):
        calls += [(p, 1, min(batch_size, samples - done)) for done in range(0, samples, batch_size)]
    return calls


def _generate_batch(
    model: Any, tokenizer: Any, chunk: Sequence[Prompt], stops: torch.Tensor, **kwargs: Any
) -> list[Completion]:
    """One generate call on `chunk`; rows come back prompt-major (prompt 0's samples first).

    A completion ends at its first stop token (kept in the count and the ids, dropped from the text);
    after it, generate only pads. Prompt tokens get no special tokens added: the rendered text holds them.
    """
    new = generate_ids(model, prompt_ids(tokenizer, chunk), tokenizer.pad_token_id, **kwargs)  # (rows, T_new)
    is_stop = torch.isin(new, stops)
    lengths = torch.where(is_stop.any(1), is_stop.int().argmax(1) + 1, new.shape[1]).tolist()
    rows = [tuple(row[:n].tolist()) for row, n in zip(new, lengths, strict=True)]
    decoded = tokenizer.batch_decode([list(r) for r in rows], skip_special_tokens=True)
    return [Completion(text, n, row) for text, n, row in zip(decoded, lengths, rows, strict=True)]


@torch.no_grad()
def generate_completions(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    num_return_sequences: int = 1,
    decoder: str = "castrl",
    desc: str = "generate",
    progress: bool = True,
) -> list[list[Completion]]:
    """`num_return_sequences` completions per prompt, at most `batch_size` sequences per generate call.

    A prompt is a chat (list of messages, rendered with the tokenizer's chat template) or a string
    used as it is. Greedy unless `do_sample`; sampling uses `temperature`, `top_p` and `top_k` (0 =
    off; the defaults are plain ancestral sampling) from torch's global RNG, so `torch.manual_seed`
    beforehand makes it reproducible for a fixed batch layout and `decoder` (see `generate_ids`). The tokenizer is left with left padding
    (`padding_side`), the side every castrl pass pads prompts on.
    """
    was_training = model.training
    model.eval()
    tokenizer.padding_side = "left"
    sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k) if do_sample else {}
    stops = torch.tensor(stop_ids(model, tokenizer))
    out: list[list[Completion]] = [[] for _ in prompts]
    total = len(prompts) * num_return_sequences
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False, unit="seq")
    try:
        for first, count, per_prompt in _chunks(len(prompts), num_return_sequences, batch_size):
            done = _generate_batch(
                model,
                tokenizer,
                prompts[first : first + count],
                stops,
                max_new_tokens=max_new_tokens,
                num_return_sequences=per_prompt,
                decoder=decoder,
                do_sample=do_sample,
                **sampling,
            )
            for row, completion in enumerate(done):
                out[first + row // per_prompt].append(completion)
            bar.update(len(done))
    finally:
        bar.close()
        model.train(was_training)
    return out

