"""Generation-based evaluation shared by `castrl train` (held-out before/after) and `castrl eval`.

Evaluation uses the verifier and nothing else from the training reward path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from castrl.data import build_prompt
from castrl.rewards import Verifier

_BOXED = re.compile(r"\\boxed\{\s*[^{}\s]")


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[dict[str, str]]],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    num_return_sequences: int = 1,
    desc: str = "generate",
    progress: bool = True,
) -> list[list[str]]:
    """Completions for chat `prompts`: one list of `num_return_sequences` strings per prompt."""
    was_training = model.training
    model.eval()
    tokenizer.padding_side = "left"
    out: list[list[str]] = []
    sampling = dict(do_sample=True, temperature=temperature, top_p=1.0, top_k=0) if do_sample else dict(do_sample=False)
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, leave=False)
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in chunk]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            ids = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                num_return_sequences=num_return_sequences,
                pad_token_id=tokenizer.pad_token_id,
                **sampling,
            )
            decoded = tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            for i in range(len(chunk)):
                out.append(decoded[i * num_return_sequences : (i + 1) * num_return_sequences])
            bar.update(len(chunk))
    finally:
        bar.close()
        model.train(was_training)
    return out


def greedy_accuracy(
    model: Any,
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    verifier: Verifier,
    *,
    style: str = "oneshot",
    max_new_tokens: int = 128,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, float]:
    """Greedy accuracy, boxed rate and mean completion length (characters) on `records`."""
    prompts = [build_prompt(r["problem"], style) for r in records]
    texts = [c[0] for c in generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                     batch_size=batch_size, desc="held-out eval", progress=progress)]
    scores = verifier.score_batch(texts, [r["answer"] for r in records])
    valid = [s for s in scores if s is not None]
    return {
        "accuracy": sum(valid) / len(valid) if valid else float("nan"),
        "boxed_rate": sum(bool(_BOXED.search(t)) for t in texts) / max(len(texts), 1),
        "mean_chars": sum(len(t) for t in texts) / max(len(texts), 1),
        "n": float(len(valid)),
    }
