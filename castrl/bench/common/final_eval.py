"""A cell's final evaluation: Avg@k, unbiased Pass@k, maj@k and greedy accuracy on the held-out problems at
spec §7's sampling (temperature 0.7, top-p 0.8, top-k 20), and the token-budget sweep re-scored from the
same generations, all by `castrl eval`'s own functions (`castrl.evaluation.run.evaluate_model`): the bench
has no second generation or scoring path.

What a cell keeps (`compact`): the summary, per-level summaries and budget rows as `castrl eval` computes
them, plus per problem only its correct-sample count, greedy correctness and sample lengths (no texts), so
a cell stays a few kB and two evaluations of the same problems pair by problem (`paired_by_problem`). The
untrained model's evaluation is the same for every method and seed: one cell of its own (`base_cell`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from castrl.bench.common.cells import Cell
from castrl.bench.common.tier import CELL_DECODER, bench_device
from castrl.reporting.stats import Interval, mean_ci

# The method name of the untrained model's evaluation cell (not an estimator: it trains nothing).
BASE_METHOD = "base"


@dataclass(frozen=True)
class FinalEvalSettings:
    """How a trained (or the base) model is evaluated once at the end of a cell."""

    n_per_level: int = 64  # held-out problems per level, capped by the level's test split (add1: 16)
    k: int = 4  # samples per problem: Avg@k, Pass@k (unbiased), maj@k
    max_new_tokens: int = 256  # the largest budget; >= 2x the training budget (issue: smollm2 tier v2)
    budgets: tuple[int, ...] = (32, 64, 128, 256)  # re-scored cuts of the same generations (spec §7)
    dtype: Literal["float32", "bfloat16"] = "float32"  # weights of the evaluated model (bf16: faster on AMX CPUs)
    data_seed: int = 0  # which test problems (the checkpoints' greedy subset is a prefix of each level)

    def __post_init__(self) -> None:
        if self.k < 1 or self.n_per_level < 1:
            raise ValueError(f"final eval: k and n_per_level must be >= 1, got {self.k}, {self.n_per_level}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"final eval: dtype must be float32 or bfloat16, got {self.dtype!r}")
        if not self.budgets or max(self.budgets) != self.max_new_tokens:
            raise ValueError(f"final eval: the largest budget must equal max_new_tokens ({self.max_new_tokens}): "
                             f"the sweep re-scores one generation at that limit, got budgets {self.budgets}")


# Sequences per generate call, by device: how the evaluation runs, not what it measures (not in a cell's
# key; recorded in each cell). On CPU decoding is compute-bound and 32 costs no more per sequence than 256;
# on a GPU it is bound by kernel launches per token, so one call of 256 costs about what one of 32 does.
EVAL_BATCH_SIZE = {"cpu": 32, "cuda": 256}


def eval_arguments(final: FinalEvalSettings, prompt_style: str, seed: int, decoder: str = CELL_DECODER) -> Any:
    """`castrl eval`'s arguments for a final evaluation (spec §7 sampling: EvalArguments' defaults); the
    decoder is the cell's training rollouts' (`CELL_DECODER` unless a tier's `code_paths` says otherwise)."""
    from castrl.evaluation.arguments import EvalArguments

    device = bench_device()
    return EvalArguments(k=final.k, n=final.k, max_new_tokens=final.max_new_tokens,
                         budgets=",".join(str(b) for b in sorted(final.budgets)),
                         batch_size=EVAL_BATCH_SIZE[device], prompt_style=prompt_style, seed=seed, dtype=final.dtype,
                         device=device, decoder=decoder, progress=False)


def evaluate_final(model: Any, tokenizer: Any, records: Sequence[dict[str, Any]], args: Any,
                   verifier: Any) -> dict[str, Any]:
    """`castrl eval`'s evaluation of `model` on `records` (a LoRA model is merged first), compacted.

    With `args.dtype` other than float32 the model is cast to that dtype first. Both change `model` in
    place: call this last (the bench does, once training is over).
    """
    import torch

    from castrl.evaluation.run import evaluate_model

    if hasattr(model, "merge_and_unload"):  # generation without per-layer adapter matmuls; training is over
        model = model.merge_and_unload()
    if args.dtype != "float32":  # bf16 decoding: ~1.45x faster sampled, ~1.7x greedy on this 2-core CPU (AMX)
        model = model.to(getattr(torch, args.dtype))
    model = model.to(args.device)  # the base model loads on CPU; a trained one is where its trainer put it
    result = evaluate_model(args, list(records), model, tokenizer, verifier)
    verifier.pop_stats()  # evaluation checks must not count as training rewards
    return compact(result, args)


def compact(result: Mapping[str, Any], args: Any) -> dict[str, Any]:
    """What a cell keeps of `evaluate_model`'s result: summaries, budgets, seconds, per-problem counts."""
    problems = [{"id": r["id"], "level": r["level"], "n_correct": r["n_correct"],
                 "greedy": None if r["greedy"] is None else r["greedy"]["correct"],
                 "tokens": [s["tokens"] for s in r["samples"]]} for r in result["problems"]]
    samples = [t for p in problems for t in p["tokens"]]
    first = result["problems"][0] if result["problems"] else {}
    return {
        "k": args.k, "n": args.n, "max_new_tokens": args.max_new_tokens,
        "execution": {"device": args.device, "batch_size": args.batch_size},
        "sampling": {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k, "seed": args.seed},
        "summary": result["summary"],
        # completions that used the whole generation budget: cut off, unless the limit token was an end token
        "truncated_rate": sum(t >= args.max_new_tokens for t in samples) / len(samples) if samples else None,
        "per_level": result["per_level"],
        "budgets": result["budgets"],
        "seconds": result["seconds"],
        "example": {"problem": first.get("problem"), "greedy": (first.get("greedy") or {}).get("text")},
        "problems": problems,
    }  # fmt: skip


def per_problem_avg(final: Mapping[str, Any]) -> dict[str, float]:
    """problem id -> Avg@k of that problem (correct samples / samples) in a compacted final evaluation."""
    return {p["id"]: p["n_correct"] / len(p["tokens"]) for p in final.get("problems", []) if p["tokens"]}


def paired_by_problem(final: Mapping[str, Any], base: Mapping[str, Any]) -> Interval:
    """Avg@k of `final` minus `base`, mean over the problems both evaluated, with a 95 % t-interval over
    problems (paired: each problem's difference; the sampling noise of both evaluations is in it)."""
    a, b = per_problem_avg(final), per_problem_avg(base)
    common = sorted(set(a) & set(b))
    return mean_ci([a[i] - b[i] for i in common]) if common else Interval(math.nan, math.nan, 0)


def base_config(model: str, levels: Sequence[str], prompt_style: str, final: FinalEvalSettings) -> dict[str, Any]:
    """Everything that determines the untrained model's final evaluation (none of the training settings)."""
    return {"model": model, "levels": list(levels), "prompt_style": prompt_style, "final": asdict(final)}


def base_cell(tier: str, model: str, levels: Sequence[str], prompt_style: str, final: FinalEvalSettings) -> Cell:
    """The cell of the untrained model's final evaluation: shared by every method, seed, lr and step count."""
    return Cell(tier, BASE_METHOD, 0, base_config(model, levels, prompt_style, final))
