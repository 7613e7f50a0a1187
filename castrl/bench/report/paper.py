"""The bundled-model report's answers to the paper, point by point: each claim of arXiv 2606.00172 that
the grid can test, the paper's number, castrl's number with its 95 % interval, and whether they agree.

Every castrl number is computed here from the cells (paired by seed against the comparison method);
the paper's numbers are constants with their table. A question whose cells are not cached yet says so
instead of guessing. The comparisons are data (`PaperClaim`), so the report never branches on a
method's name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from castrl.bench.report.cells import TierView, cell_device, step_mean
from castrl.bench.report.final import summary_value
from castrl.formatting import num
from castrl.reporting.findings import ACCURACY, ACCURACY_DIFF, BETTER, LEVEL, WORSE, Comparison, compare
from castrl.reporting.stats import Interval, fmt_ci, mean_ci


@dataclass(frozen=True)
class PaperClaim:
    """'`better` beats `worse`' (the paper's ablation or comparison), measured as a paired difference."""

    question: str
    better: str
    worse: str
    paper: str  # the paper's evidence, with its table


# The ablation that isolates CAST's sign reversal; the disagreement notes cite it.
SIGN_REVERSAL = PaperClaim("Sign reversal (flips) > no sign reversal?", "cast", "cast@flip=false", "Table 7: 41.25 vs 25.83")
# The paper's comparisons the smollm2 grid can test (Tables 3 and 7, Qwen3-4B, Avg@16 on AIME24).
CLAIMS = (
    PaperClaim("Does CAST beat GRPO?", "cast", "grpo", "Table 3: AIME24 Avg@16 41.25 vs 21.04"),
    PaperClaim("Full CAST > mixed-only (the ±1 base advantages of uniform groups)?", "cast", "cast@mixed_only=true",
               "Table 7: 41.25 vs 34.38"),
    PaperClaim("Answer-free teacher > teacher with the ground-truth answer?", "cast",
               "cast@teacher_context=with_reference", "Table 7: 41.25 vs 36.25"),
    SIGN_REVERSAL,
    PaperClaim("Correct-path negative flips help?", "cast", "cast@flip_correct=false", "Table 4 (flip directions)"),
    PaperClaim("Incorrect-path positive flips help?", "cast", "cast@flip_incorrect=false", "Table 4 (flip directions)"),
    PaperClaim("CAST beats RLSD?", "cast", "rlsd", "Table 3: 41.25 vs 21.67"),
    PaperClaim("CAST beats RLRT?", "cast", "rlrt", "Table 3: 41.25 vs 21.67"),
    PaperClaim("CAST beats GRPO+OPSD?", "cast", "grpo_opsd", "Table 8"),
)  # fmt: skip
PAPER_FLIP_SHARE = 0.264  # Table 9: share of valid tokens flipped, mean over 300 steps
PAPER_INCORRECT_POSITIVE = 0.070  # Table 9: incorrect-path positive flips
PAPER_LENGTH = (5242, 9780)  # Table 13: Qwen3-4B mean evaluation output tokens, base -> CAST
PAPER_WALL_RATIO = 1.25  # §8.4: 5 h vs 4 h on 2 A800s
PAPER_SETTING = {"model": "Qwen3-4B", "budget": 3072, "task": "competition math"}  # the header's setting
PAPER_TEACHER_CONTEXT = "answer_free"  # CAST's own teacher, whose diagnosis explains its flips
# Table 14, MATH-500 Avg@16 (base, GRPO, CAST) by budget: CAST trails under tight budgets, leads from 4K
PAPER_BUDGETS = "MATH-500 Avg@16 at 1K tokens base 70.24 / GRPO 70.28 / CAST 61.23; at 2K 81.11 / 81.00 / 77.29; CAST leads from 4K"


def _paired(view: TierView, a: str, b: str, value: Callable[[dict[str, Any]], float]) -> Comparison:
    return compare(view.cells, a, b, value, ACCURACY_DIFF)


NOT_A_FINDING = "not a finding"


def _word(found: Comparison) -> str:
    """castrl's answer to a claim 'a beats b' (the one rule of a finding, `findings.Comparison`)."""
    return {BETTER: "yes", WORSE: "no: the opposite", LEVEL: "not distinguishable"}.get(found.status, NOT_A_FINDING)


def _budget_value(budget: int, key: str) -> Callable[[dict[str, Any]], float]:
    def value(rec: dict[str, Any]) -> float:
        rows = [b for b in rec.get("final", {}).get("budgets", []) if b["budget"] == budget]
        return float(rows[0][key]) if rows and rows[0].get(key) is not None else math.nan

    return value


def _step_mean(recs: Sequence[dict[str, Any]], key: str) -> Interval:
    """Per cell, the mean of a per-step metric over its steps; then mean and t-interval over the cells."""
    return mean_ci([step_mean(rec, key) for rec in recs])


def claim_rows(view: TierView) -> list[str]:
    """One row per testable claim: the paper's evidence, castrl's paired Δ of Avg@k and Pass@k, the answer."""
    avg = lambda r: summary_value(r, "avg_at_k")  # noqa: E731
    pas = lambda r: summary_value(r, "pass_at_k")  # noqa: E731
    rows = ["| question | paper | castrl Δ Avg@k | castrl Δ Pass@k | seeds | castrl agrees? |", "|---|---|---|---|---|---|"]
    for claim in CLAIMS:
        if claim.better not in view.cells or claim.worse not in view.cells:
            rows.append(f"| {claim.question} (`{claim.better}` − `{claim.worse}`) | {claim.paper} | not run yet | | | |")
            continue
        d_avg, d_pass = _paired(view, claim.better, claim.worse, avg), _paired(view, claim.better, claim.worse, pas)
        rows.append(f"| {claim.question} (`{claim.better}` − `{claim.worse}`) | {claim.paper} | "
                    f"{d_avg.text(name_untrained=True)} | {d_pass.text(name_untrained=True)} | {d_avg.interval.n} | "
                    f"{_word(d_avg)} |")
    return rows


def paper_sections(view: TierView) -> list[str]:
    """The 'castrl vs the paper' section: claims, budgets, flip shares, output length, wall clock."""
    if not view.cells:
        return []
    lines = ["### castrl vs the paper, point by point", "",
             "Paired differences over seeds (95 % t-interval) of the final evaluation; 'castrl agrees?' is 'yes' "
             "only when the difference is a finding (at least 3 seeds, both methods trained, an interval of non-zero "
             "width) that excludes 0 in the paper's direction; 'not a finding' otherwise, whatever the interval. "
             "The paper's numbers are for "
             f"{PAPER_SETTING['model']} on {PAPER_SETTING['task']} with {PAPER_SETTING['budget']:,}-token training "
             "budgets; these are for the tier's model and task (below).", ""]
    lines += claim_rows(view) + [""]
    lines += budget_rows(view) + [""] + flip_rows(view) + [""] + length_rows(view) + [""] + wall_rows(view) + [""]
    return lines + setting_rows(view)


def _answers(view: TierView) -> dict[str, list[str]]:
    """Claim questions grouped by castrl's answer ('yes', 'no: the opposite', ...), for claims with cells."""
    out: dict[str, list[str]] = {}
    for claim in CLAIMS:
        if claim.better in view.cells and claim.worse in view.cells:
            iv = _paired(view, claim.better, claim.worse, lambda r: summary_value(r, "avg_at_k"))
            out.setdefault(_word(iv), []).append(f"`{claim.better}` − `{claim.worse}`")
    return out


def setting_rows(view: TierView) -> list[str]:
    """Where castrl disagrees with the paper, and what in the setting could explain it: each sentence from the
    cells (the diagnosis before training, lengths, budgets, the tier's settings) beside the paper's setting."""
    head, base_m = view.headline, view.baseline
    answers = _answers(view)
    if not answers:
        return []
    lines = ["#### Where castrl disagrees, and what in the setting could explain it", ""]
    opposite = answers.get("no: the opposite", [])
    agree = answers.get("yes", [])
    unread = answers.get(NOT_A_FINDING, [])
    lines.append(f"- Against the paper's direction (a finding: interval excludes 0): {', '.join(opposite) or 'none'}; "
                 f"in the paper's direction: {', '.join(agree) or 'none'}; not a finding (fewer than 3 seeds, a "
                 f"zero-width interval or a method that did not train): {', '.join(unread) or 'none'}; the rest are "
                 "not distinguishable from 0.")
    teacher = (view.diagnosis or {}).get("teachers", {}).get(PAPER_TEACHER_CONTEXT)
    if teacher:
        flips, no_flip = SIGN_REVERSAL.better, SIGN_REVERSAL.worse
        flip_note = ""
        if all(m in view.cells for m in (flips, no_flip, base_m)):
            avg = lambda r: summary_value(r, "avg_at_k")  # noqa: E731
            vs_base, vs_flips = _paired(view, no_flip, base_m, avg), _paired(view, flips, no_flip, avg)
            cause = {"no: the opposite": "so on this model the loss comes with the flips",
                     "yes": "so the flips helped"}.get(_word(vs_flips), f"{flips} − it: {_word(vs_flips)}")
            flip_note = (f" The same rule without sign reversal (`{no_flip}`) was {vs_base.text()} against "
                         f"`{base_m}` and `{flips}` was {vs_flips.text()} against it (Avg@k), {cause}.")
        lines.append(f"- The teacher. CAST's sign reversal assumes the answer-free teacher's gap ranks correct rollouts "
                     f"above wrong ones. Before training, on this model's own rollouts, its gap AUC was "
                     f"{num(teacher.get('auc'))} ({int(teacher.get('n_pairs') or 0)} pairs; 0.5 is no signal) and "
                     f"{num(teacher['against_verifier'].get('frac'))} of tokens would be set against the verifier "
                     f"(the paper flipped {PAPER_FLIP_SHARE:.3f} of tokens with Qwen3-4B).{flip_note}")
    head_recs, base_recs = list(view.cells.get(head, {}).values()), list(view.cells.get(base_m, {}).values())
    if head_recs and base_recs:
        tokens = {m: mean_ci([summary_value(r, "mean_tokens") for r in recs]).mean
                  for m, recs in ((head, head_recs), (base_m, base_recs))}
        budgets = sorted({b["budget"] for r in head_recs for b in r.get("final", {}).get("budgets", [])})
        sweep = ""
        if len(budgets) > 1:
            lo, hi = (mean_ci([_budget_value(b, "avg_at_k")(r) for r in head_recs]).mean for b in (budgets[0], budgets[-1]))
            sweep = (f"; its Avg@k was {num(lo)} with completions cut at {budgets[0]} tokens and {num(hi)} at "
                     f"{budgets[-1]} ({hi - lo:+.3f} from the tokens after the first {budgets[0]})")
        ratio = tokens[head] / tokens[base_m]
        direction = "longer, as in" if ratio > 1 else "not longer, unlike"
        lines.append(f"- Length. `{head}`'s completions were {num(ratio, 2)}× `{base_m}`'s ({num(tokens[head], 1)} vs "
                     f"{num(tokens[base_m], 1)} tokens): {direction} the paper's Table 13{sweep}. The paper's gains come "
                     f"with outputs of thousands of tokens (Table 13: {PAPER_LENGTH[1]:,} for CAST).")
        settings = head_recs[0].get("config", {}).get("settings", {})
        params = head_recs[0].get("model_params")
        lines.append(f"- Scale and task. {num(params / 1e6, 0) if params else '?'}M parameters against the paper's "
                     f"{PAPER_SETTING['model']}; {settings.get('steps', '?')} RL steps of "
                     f"{settings.get('prompts_per_step', '?')} prompts × {settings.get('num_generations', '?')} rollouts "
                     f"with a {settings.get('max_completion_length', '?')}-token training budget on arithmetic "
                     f"({', '.join(settings.get('levels', [])) or '?'}), against the paper's "
                     f"{PAPER_SETTING['budget']:,}-token budget on {PAPER_SETTING['task']}. A self-teacher reads the "
                     "problem no better than the model itself does.")
    return lines + [""]


def budget_rows(view: TierView) -> list[str]:
    """Table 14: the headline method − the baseline (Avg@k, Pass@k) and − the base model (Avg@k) at each
    budget (the same generations, cut)."""
    head, base_m = view.headline, view.baseline
    budgets = sorted({b["budget"] for r in view.cells.get(head, {}).values() for b in r.get("final", {}).get("budgets", [])})
    if not budgets or base_m not in view.cells:
        return [f"Budget sensitivity (Table 14): no {head} and {base_m} cells with a budget sweep yet."]
    rows = [f"Budget sensitivity (Table 14; paper: {PAPER_BUDGETS}): the same generations cut at each budget, "
            "paired over seeds.", "",
            f"| budget | Avg@k {head} − {base_m} | Pass@k {head} − {base_m} | Avg@k {head} − base model |", "|---|---|---|---|"]
    for b in budgets:
        avg, pas = _budget_value(b, "avg_at_k"), _budget_value(b, "pass_at_k")
        base = avg(view.base) if view.base else math.nan
        vs_base = Comparison(mean_ci([avg(r) - base for r in view.cells[head].values()]), ACCURACY_DIFF)
        rows.append(f"| ≤ {b} | {_paired(view, head, base_m, avg).text()} | {_paired(view, head, base_m, pas).text()} | "
                    f"{vs_base.text()} |")
    return rows


def flip_rows(view: TierView) -> list[str]:
    """Table 9: the share of valid tokens CAST flipped during training, all and incorrect-path positive."""
    recs = list(view.cells.get(view.headline, {}).values())
    if not recs:
        return [f"Flip shares (Table 9): no {view.headline} cells yet."]
    flipped = _step_mean(recs, "cast/frac_flipped")
    up = _step_mean(recs, "cast/frac_flipped_incorrect_positive")
    return [f"Flip shares (Table 9), mean over training steps and seeds: flipped {fmt_ci(flipped, bounds=ACCURACY)} "
            f"of valid tokens (paper {PAPER_FLIP_SHARE:.3f}); incorrect-path positive flips "
            f"{fmt_ci(up, bounds=ACCURACY)} (paper "
            f"{PAPER_INCORRECT_POSITIVE:.3f})."]


def length_rows(view: TierView) -> list[str]:
    """Table 13: mean sampled output length at the final evaluation's largest budget, base -> method."""
    base = summary_value(view.base, "mean_tokens") if view.base else math.nan
    parts = []
    for method in (view.baseline, view.headline):
        recs = list(view.cells.get(method, {}).values())
        if recs:
            iv = mean_ci([summary_value(r, "mean_tokens") for r in recs])
            ratio = iv.mean / base if base and math.isfinite(base) else math.nan
            parts.append(f"`{method}` {fmt_ci(iv, digits=1)} tokens ({num(ratio, 2)}× the base model)")
    paper = f"paper: base {PAPER_LENGTH[0]:,} → CAST {PAPER_LENGTH[1]:,}, {PAPER_LENGTH[1] / PAPER_LENGTH[0]:.2f}×"
    return [f"Output length (Table 13; {paper}): base model {num(base, 1)} tokens; " + "; ".join(parts) + "."]


def wall_rows(view: TierView) -> list[str]:
    """§8.4: CAST's training step time over GRPO's (mean step seconds over each method's cells), per device:
    a ratio across devices would measure the hardware. The teacher pass's share of CAST's step separates
    the method's own cost from its longer rollouts, which make generation and the update slower too."""
    head, base_m = view.headline, view.baseline
    devices = sorted({cell_device(r) for m in (base_m, head) for r in view.cells.get(m, {}).values()})
    def timing(method: str, key: str, device: str) -> Interval:
        return mean_ci([r.get("timing", {}).get(key) for r in view.cells.get(method, {}).values()
                        if cell_device(r) == device])

    parts = []
    for device in devices:
        steps = {m: timing(m, "step_s", device) for m in (base_m, head)}
        if all(iv.n for iv in steps.values()):
            teacher = timing(head, "teacher_s", device)
            parts.append(f"on {device}, {head} {fmt_ci(steps[head], digits=1)} s (n={steps[head].n}), {base_m} "
                         f"{fmt_ci(steps[base_m], digits=1)} s (n={steps[base_m].n}): "
                         f"{steps[head].mean / steps[base_m].mean:.2f}×, of which {head}'s teacher pass "
                         f"{num(teacher.mean, 1)} s ({num(teacher.mean / steps[head].mean, 2)} of its step)")
    if not parts:
        return [f"Wall clock (§8.4): no {head} and {base_m} cells on one device yet."]
    return [f"Wall clock (§8.4; paper: CAST {PAPER_WALL_RATIO}× GRPO), mean training step: {'; '.join(parts)} "
            "(means over cells of different invocations, whose machine load may differ; the step-time table pairs "
            "cells of one invocation). The rest of the difference is in generation and the update (step-time "
            "table below), on longer completions (output length above). A controlled pair, one invocation on an "
            "idle machine and the same first-step rollouts: `castrl bench steptime` ([steptime.md](steptime.md))."]
