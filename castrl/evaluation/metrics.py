"""Evaluation metrics, pure functions of per-sample correctness and answers.

Accuracy rule (`counted_correct`): a completion the verifier cannot score (None: its gold is
unparseable or timed out) counts as wrong, and is counted separately as `n_unscorable`. `pass_at_k`
(Chen et al. 2021, unbiased), `majority_vote` / `maj_at_k`, `problem_metrics` and `aggregate`.
Completion length counts generated tokens up to and including the first EOS, as TRL's
`completions/mean_length` does; `cut_at_budget` re-reads a completion as if generation had stopped
after b tokens (the token-budget sweep of spec §7, paper Table 14).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from castrl.rollouts.generate import Completion

_BOXED = re.compile(r"\\boxed\{\s*[^{}\s]")
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def is_boxed(text: str) -> bool:
    """True when `text` holds a `\\boxed{...}` with non-empty content (the format the prompts ask for)."""
    return bool(_BOXED.search(text))





def counted_correct(score: float | None) -> float:
    """castrl's one held-out accuracy rule: the verifier's 1.0/0.0, and 0.0 (wrong) for None.

    None means the verifier could not score the sample (its gold is unparseable or timed out);
    leaving such samples out would raise the accuracy of a model on a badly formatted set, so they
    count as wrong and every caller reports how many there were (`n_unscorable`).
    """
    return 0.0 if score is None else float(score)


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k: 1 - C(n-c, k) / C(n, k) for `c` correct among `n` samples, 1 <= k <= n.

    It is the chance that k samples drawn without replacement from the n contain a correct one
    (Chen et al. 2021); 1.0 whenever n - c < k. Exact integer binomials, so no overflow or rounding
    beyond the final division.
    """
    _check_int("n", n, 1)
    _check_int("c", c, 0, n)
    _check_int("k", k, 1, n)
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def vote_key(answer: str) -> str:
    """String form an answer votes under: whitespace, `$`, a final period, `\\left`/`\\right` and
    thousands commas dropped, `\\dfrac`/`\\tfrac` read as `\\frac`.

    Deliberately string-level: `1/2` and `0.5` are different votes (merging them would need the
    verifier on every pair of answers); the winner is then checked by the verifier.
    """
    text = re.sub(r"\s+", "", answer).strip("$").rstrip(".")
    text = text.replace("\\left", "").replace("\\right", "")
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    return text


def majority_vote(answers: Sequence[str | None]) -> int | None:
    """Index of the sample whose answer wins the vote, or None when no sample has an answer.

    Answers vote under `vote_key`; None (no answer extracted) does not vote. Tie rule: among the
    answers with the most votes, the one that occurs first in sample order wins, and the index
    returned is that first occurrence. Deterministic, and order-based like the samples themselves.
    """
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for index, answer in enumerate(answers):
        if answer is None:
            continue
        key = vote_key(answer)
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, index)
    if not counts:
        return None
    return first[max(counts, key=lambda key: (counts[key], -first[key]))]


def maj_at_k(answers: Sequence[str | None], correct: Sequence[float], k: int) -> float:
    """maj@k: share of the floor(n/k) disjoint blocks of k consecutive samples whose vote winner is correct.

    Samples are i.i.d., so every block is a fair draw of k samples; using all full blocks (not just
    the first) lowers the variance when n > k. A winner is correct when the verifier scored its
    first occurrence correct; a block in which no sample has an answer counts as wrong.
    """
    if len(answers) != len(correct):
        raise ValueError(f"answers and correct must have equal length, got {len(answers)} and {len(correct)}")
    _check_int("k", k, 1, len(answers))
    blocks = len(answers) // k
    wins = 0.0
    for b in range(blocks):
        winner = majority_vote(answers[b * k : (b + 1) * k])
        wins += 0.0 if winner is None else float(correct[b * k + winner])
    return wins / blocks


def problem_metrics(scores: Sequence[float | None], answers: Sequence[str | None], k: int) -> dict[str, Any]:
    """avg (mean correctness of all n samples), pass@k, maj@k and the overall vote winner of one problem.

    `scores` are the verifier's (None = unscorable, counted wrong and counted in `n_unscorable`).
    """
    correct = [counted_correct(s) for s in scores]
    n = len(correct)
    n_correct = int(sum(correct))
    winner = majority_vote(answers)
    return {
        "n_correct": n_correct,
        "n_unscorable": sum(s is None for s in scores),
        "avg": n_correct / n,
        "pass_at_k": pass_at_k(n, n_correct, k),
        "maj_at_k": maj_at_k(answers, correct, k),
        "maj_answer": None if winner is None else answers[winner],
    }


def mean(values: Sequence[float]) -> float | None:
    """The mean of `values`, None when there are none."""
    return sum(values) / len(values) if values else None


def aggregate(rows: Sequence[dict[str, Any]], k: int) -> dict[str, Any]:
    """Summary of per-problem rows (from `castrl eval`); unscorable samples count as wrong (`counted_correct`).

    Means over problems: avg_at_k, pass_at_k, maj_at_k, greedy_accuracy, and pass@j for j = 1, 2, 4,
    ... <= k (each from the same n samples). Means over all samples: boxed_rate, answered_rate (an
    answer was extracted), mean_tokens; greedy_* likewise over greedy completions. n_unscorable:
    problems with at least one sample the verifier could not score.
    """
    samples = [s for r in rows for s in r["samples"]]
    greedy = [r["greedy"] for r in rows if r.get("greedy")]
    n = len(rows[0]["samples"]) if rows else 0
    ks = [j for j in (2**i for i in range(k.bit_length())) if j <= k] + ([k] if k & (k - 1) else [])
    return {
        "n_problems": len(rows),
        "n_unscorable": sum(r["n_unscorable"] > 0 for r in rows),
        "avg_at_k": mean([r["avg"] for r in rows]),
        "pass_at_k": mean([r["pass_at_k"] for r in rows]),
        "maj_at_k": mean([r["maj_at_k"] for r in rows]),
        "pass_at": {str(j): mean([pass_at_k(n, r["n_correct"], j) for r in rows]) for j in ks},
        "boxed_rate": mean([float(s["boxed"]) for s in samples]),
        "answered_rate": mean([float(s["answer"] is not None) for s in samples]),
        "mean_tokens": mean([s["tokens"] for s in samples]),
        "greedy_accuracy": mean([counted_correct(g["correct"]) for g in greedy]),
        "greedy_boxed_rate": mean([float(g["boxed"]) for g in greedy]),
        "greedy_mean_tokens": mean([g["tokens"] for g in greedy]),
    }


def cut_at_budget(completion: Completion, budget: int, tokenizer: Any) -> Completion:
    """`completion` as if generation had stopped after `budget` tokens (spec §7 token-budget sweep).

    A completion that ended within the budget is unchanged; a longer one keeps its first `budget`
    token ids, decoded again, so it is scored on what those tokens say (usually no answer yet: wrong).
    Its length becomes `budget`, so mean length per budget is the mean of min(length, budget).
    """
    if completion.tokens <= budget:
        return completion
    ids = completion.ids[:budget]
    return Completion(tokenizer.decode(list(ids), skip_special_tokens=True), budget, ids)
