"""The report's final-evaluation sections (tiers whose cells end with `castrl.bench.common.final_eval`): Avg@k,
Pass@k, maj@k and greedy per method next to the base model, paired differences vs the baseline, the
token-budget sweep, and the baseline's tuning runs (lr / steps) against the base model.

Two kinds of interval: over seeds (methods vs the baseline, paired by seed, as the greedy tables) and
over problems (a model vs the base model: each problem's Avg@k difference, the seeds' mean when a
method has several, so one tuning run already gets an interval).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from castrl.bench.common.final_eval import per_problem_avg
from castrl.bench.report.cells import TierView, cell_device
from castrl.formatting import num
from castrl.reporting.findings import ACCURACY, ACCURACY_DIFF, BETTER, Comparison, compare, trained
from castrl.reporting.markdown import table
from castrl.reporting.stats import Interval, fmt_ci, mean_ci

# (column, key of castrl eval's summary)
FINAL_KEYS = (("Avg@{k}", "avg_at_k"), ("Pass@{k}", "pass_at_k"), ("maj@{k}", "maj_at_k"), ("greedy", "greedy_accuracy"))
# Settings a tuning run may change relative to the tier's.
TUNED_FIELDS = ("learning_rate", "steps")


def summary_value(rec: dict[str, Any], key: str) -> float:
    """One summary metric of a cell's final evaluation (NaN when the cell has none)."""
    value = rec.get("final", {}).get("summary", {}).get(key)
    return math.nan if value is None else float(value)


def vs_base(recs: Sequence[dict[str, Any]], base: dict[str, Any] | None) -> Interval:
    """Avg@k of `recs` (one method's seeds) minus the base model's, paired by problem: per problem the
    mean over seeds minus the base; mean and 95 % t-interval over the problems all of them evaluated."""
    if base is None or not recs:
        return Interval(math.nan, math.nan, 0)
    per_seed = [per_problem_avg(r.get("final", {})) for r in recs]
    base_avg = per_problem_avg(base.get("final", {}))
    common = set(base_avg).intersection(*per_seed)
    return mean_ci([sum(p[i] for p in per_seed) / len(per_seed) - base_avg[i] for i in sorted(common)])


def final_measure(view: TierView) -> tuple[str, Callable[[dict[str, Any]], float]] | None:
    """(label, value of a cell) of the measure a tier with final evaluations is judged by: final Avg@k."""
    if not _has_final(view):
        return None
    return f"held-out Avg@{_k(view)} (final evaluation)", lambda rec: summary_value(rec, "avg_at_k")


def _has_final(view: TierView) -> bool:
    return any("final" in r for m in view.cells.values() for r in m.values())


def final_table(view: TierView) -> list[str]:
    """Final evaluation per method (mean ± 95 % CI over seeds), the base model first."""
    k = _k(view)
    header = ["method", "seeds"] + [name.format(k=k) for name, _ in FINAL_KEYS]
    header += ["Δ Avg vs base (by problem)", "tokens", "at limit"]
    rows = []
    if view.base:
        final = view.base["final"]
        rows.append(["base model", "-"] + [num(final["summary"].get(key)) for _, key in FINAL_KEYS]
                    + ["0", num(final["summary"].get("mean_tokens"), 1), num(final.get("truncated_rate"))])
    for m in view.methods:
        recs = list(view.cells[m].values())
        untrained = () if trained(view.cells[m]) else (m,)
        rows.append([m, str(len(recs))] + [fmt_ci(mean_ci([summary_value(r, key) for r in recs]), bounds=ACCURACY)
                                           for _, key in FINAL_KEYS]
                    + [Comparison(vs_base(recs, view.base), ACCURACY_DIFF, untrained).text(),
                       num(mean_ci([summary_value(r, "mean_tokens") for r in recs]).mean, 1),
                       num(mean_ci([r.get("final", {}).get("truncated_rate", math.nan) for r in recs]).mean)])
    head = ["### Final evaluation (mean ± 95% CI over seeds; Δ vs base: 95% CI over problems)", "",
            "Sampled at spec §7 (temperature 0.7, top-p 0.8, top-k 20); Pass@k is the unbiased estimator; greedy is "
            "one greedy completion per problem; unscorable answers count as wrong. `at limit`: share of samples "
            "that used the whole generation budget.", ""]
    return head + table(header, rows)


def final_diff_table(view: TierView) -> list[str]:
    """Each method minus the baseline on the final evaluation, paired by seed."""
    base = view.cells.get(view.baseline, {})
    rows = []
    for m in view.methods:
        if m == view.baseline or not base:
            continue
        rows.append([m] + [compare(view.cells, m, view.baseline, lambda r, key=key: summary_value(r, key)).text()
                           for _, key in FINAL_KEYS])
    if not rows:
        return []
    k = _k(view)
    head = [f"### Final evaluation: paired difference vs {view.baseline} (method − {view.baseline}, mean [95% CI] "
            "over seeds)", ""]
    return head + table(["method"] + [name.format(k=k) for name, _ in FINAL_KEYS], rows)


def budget_table(view: TierView) -> list[str]:
    """Avg@k at each token budget (the same generations cut), mean over seeds; the base model first."""
    budgets = sorted({b["budget"] for m in view.cells.values() for r in m.values()
                      for b in r.get("final", {}).get("budgets", [])})
    if not budgets:
        return []

    def at(rec: dict[str, Any], budget: int) -> float:
        rows = [b for b in rec.get("final", {}).get("budgets", []) if b["budget"] == budget]
        return float(rows[0]["avg_at_k"]) if rows and rows[0]["avg_at_k"] is not None else math.nan

    rows = [["base model"] + [num(at(view.base, b)) for b in budgets]] if view.base else []
    for m in view.methods:
        rows.append([m] + [fmt_ci(mean_ci([at(r, b) for r in view.cells[m].values()]), bounds=ACCURACY)
                           for b in budgets])
    head = [f"### Token-budget sweep: Avg@{_k(view)} with completions cut at each budget (mean ± 95% CI over seeds)",
            ""]
    return head + table(["method"] + [f"≤ {b}" for b in budgets], rows)


def tuning_table(view: TierView) -> list[str]:
    """The baseline's tuning runs (lr, steps) vs the base model: the rule picks the grid's lr and steps."""
    if not view.tuning:
        return []
    rows = []
    for rec in sorted(view.tuning, key=lambda r: (r["config"]["settings"]["learning_rate"],
                                                  r["config"]["settings"]["steps"], r["seed"])):
        s = rec["config"]["settings"]
        gain = Comparison(vs_base([rec], view.base), ACCURACY_DIFF, () if trained({0: rec}) else (rec["method"],))
        verdict = "yes" if gain.status == BETTER else "no"
        rows.append([f"{s['learning_rate']:g}", str(s["steps"]), str(rec["seed"]),
                     num(summary_value(rec, "avg_at_k")), gain.text(), verdict,
                     num(summary_value(rec, "pass_at_k")), num(summary_value(rec, "greedy_accuracy")),
                     num(rec.get("wall_s", math.nan) / 60, 1), f'{cell_device(rec)}, {rec.get("versions", {}).get("threads", "-")}'])
    base_avg, k = num(view.base["final"]["summary"].get("avg_at_k")) if view.base else "not cached", _k(view)
    head = [f"### Tuning runs ({view.baseline} only: learning rate and steps)", "",
            f"Rule (issue): the grid uses an lr and step count at which {view.baseline} beats the base model's held-out "
            f"Avg@{k} by a margin whose 95% CI excludes 0 (base Avg@{k} {base_avg}). Δ: final Avg@{k} minus the base "
            f"model's, paired by problem. Run: `castrl bench {view.tier} --methods {view.baseline} --seeds 1 "
            "--learning_rate LR --steps N`.", ""]
    header = ["lr", "steps", "seed", f"Avg@{k}", "Δ vs base [95% CI]", "CI > 0", f"Pass@{k}", "greedy", "wall min",
              "device, threads"]
    return head + table(header, rows)


def _k(view: TierView) -> int:
    for rec in [view.base] + [r for m in view.cells.values() for r in m.values()] + list(view.tuning):
        if rec and rec.get("final", {}).get("k"):
            return int(rec["final"]["k"])
    return 4


def final_sections(view: TierView) -> list[str]:
    """Every final-evaluation section of a tier that has them (none for a tier without final evaluations)."""
    out: list[str] = []
    if view.cells and _has_final(view):
        for block in (final_table(view), final_diff_table(view), budget_table(view)):
            out += block + ([""] if block else [])
    tuning = tuning_table(view)
    return out + (tuning + [""] if tuning else [])
