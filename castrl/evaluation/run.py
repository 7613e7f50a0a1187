"""One model's evaluation as `castrl eval` runs it: a greedy pass, n samples per problem, verification,
the metrics (`metrics.py`) and the token-budget sweep re-scored from the same samples.

The bench's final evaluation calls `evaluate_model` too: the bench has no second generation or scoring path.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from castrl.data import build_prompt
from castrl.rewards import Verifier, extract_final_answer
from castrl.rollouts.generate import generate_completions

from .arguments import EvalArguments
from .metrics import aggregate, cut_at_budget, is_boxed, problem_metrics

# What a budget row reports (a subset of `aggregate`'s summary, over the sampled completions).
BUDGET_KEYS = ("avg_at_k", "pass_at_k", "maj_at_k", "pass_at", "mean_tokens", "answered_rate", "n_unscorable")


def _sample_row(text: str, tokens: int, score: float | None) -> dict[str, Any]:
    return {"text": text, "answer": extract_final_answer(text), "correct": score, "tokens": tokens,
            "boxed": is_boxed(text)}


def score_problems(
    records: list[dict[str, Any]], greedy: list[Any] | None, samples: list[list[Any]], verifier: Verifier, k: int
) -> list[dict[str, Any]]:
    """Per-problem rows: every sample and the greedy completion verified, with the problem's metrics.

    A sample's `correct` is the verifier's score (None = unscorable); metrics count None as wrong.
    """
    flat = [c for group in samples for c in group]
    golds = [r["answer"] for r in records for _ in samples[0]]
    scores = verifier.score_batch([c.text for c in flat], golds)
    greedy_scores = verifier.score_batch([c.text for c in greedy], [r["answer"] for r in records]) if greedy else []
    rows, n = [], len(samples[0])
    for i, record in enumerate(records):
        got = scores[i * n : (i + 1) * n]
        row = {"id": record["id"], "level": record.get("level"), "problem": record["problem"], "gold": record["answer"]}
        row["samples"] = [_sample_row(c.text, c.tokens, s) for c, s in zip(samples[i], got, strict=True)]
        row["greedy"] = _sample_row(greedy[i].text, greedy[i].tokens, greedy_scores[i]) if greedy else None
        row.update(problem_metrics(got, [s["answer"] for s in row["samples"]], k))
        rows.append(row)
    return rows


def budget_sweep(
    records: list[dict[str, Any]], samples: list[list[Any]], verifier: Verifier, args: EvalArguments, tokenizer: Any
) -> list[dict[str, Any]]:
    """One row per budget: BUDGET_KEYS of the sampled completions cut at that budget (no regeneration)."""
    out = []
    for budget in args.budget_list():
        cut = [[cut_at_budget(c, budget, tokenizer) for c in group] for group in samples]
        summary = aggregate(score_problems(records, None, cut, verifier, args.k), args.k)
        out.append({"budget": budget, **{key: summary[key] for key in BUDGET_KEYS}})
    return out


def evaluate_model(
    args: EvalArguments, records: list[dict[str, Any]], model: Any, tokenizer: Any, verifier: Verifier
) -> dict[str, Any]:
    """Greedy pass, n samples per problem, verification, metrics and budget sweep of one model."""
    prompts = [build_prompt(r["problem"], args.prompt_style) for r in records]
    gen = dict(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, decoder=args.decoder,
               progress=args.progress)  # fmt: skip
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    greedy = None
    if not args.skip_greedy:
        greedy = [g[0] for g in generate_completions(model, tokenizer, prompts, desc="greedy", **gen)]
        seconds["greedy"] = time.perf_counter() - start
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    samples = generate_completions(
        model, tokenizer, prompts, do_sample=True, temperature=args.temperature, top_p=args.top_p,
        top_k=args.top_k, num_return_sequences=args.n, desc=f"sample x{args.n}", **gen,
    )
    seconds["sampling"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = score_problems(records, greedy, samples, verifier, args.k)
    budgets = budget_sweep(records, samples, verifier, args, tokenizer)
    seconds["verify"] = time.perf_counter() - t0
    levels = sorted({r["level"] for r in rows if r["level"]})
    return {
        "summary": aggregate(rows, args.k),
        "per_level": {lv: aggregate([r for r in rows if r["level"] == lv], args.k) for lv in levels},
        "budgets": budgets,
        "seconds": seconds,
        "problems": rows,
    }
