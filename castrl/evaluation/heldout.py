"""Greedy held-out accuracy: the one definition behind `castrl train` (held-out before/after),
`castrl eval` and the bench's checkpoints.

Evaluation shares only the verifier with the training reward path; generation is `castrl.rollouts`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from castrl.rewards import Verifier
from castrl.rollouts.generate import generate_completions
from castrl.rollouts.render import Prompt

from .metrics import counted_correct, is_boxed, mean


def heldout_accuracy(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    golds: Sequence[object],
    verifier: Verifier,
    *,
    levels: Sequence[str | None] | None = None,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    decoder: str = "castrl",
    progress: bool = True,
) -> dict[str, Any]:
    """Greedy held-out accuracy: the one definition behind `castrl train`, `castrl eval` and the bench.

    One greedy completion per prompt (chat messages or ready strings, see `generate_completions`),
    scored by `verifier` against `golds` under `counted_correct` (unscorable = wrong). Returns
    accuracy (NaN with no prompts), n, n_unscorable, boxed_rate, mean_chars, mean_tokens, example
    (the first completion's text), and per_level accuracy when `levels` is given (None levels skipped).
    """
    done = [
        group[0]
        for group in generate_completions(
            model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, decoder=decoder,
            desc="held-out eval", progress=progress,
        )
    ]
    texts = [c.text for c in done]
    scores = verifier.score_batch(texts, list(golds))
    correct = [counted_correct(s) for s in scores]
    result: dict[str, Any] = {
        "accuracy": mean(correct) if correct else float("nan"),
        "n": len(correct),
        "n_unscorable": sum(s is None for s in scores),
        "boxed_rate": mean([float(is_boxed(t)) for t in texts]) or 0.0,
        "mean_chars": mean([len(t) for t in texts]) or 0.0,
        "mean_tokens": mean([c.tokens for c in done]) or 0.0,
        "example": texts[0] if texts else "",
    }
    if levels is not None:
        by_level: dict[str, list[float]] = {}
        for level, c in zip(levels, correct, strict=True):
            if level is not None:
                by_level.setdefault(level, []).append(c)
        result["per_level"] = {level: sum(v) / len(v) for level, v in by_level.items()}
    return result
