"""The positive control's report section: each teacher's diagnosis beside each method's gain over GRPO.

One row per teacher (its gap AUC and flip shares, measured by `castrl diagnose`'s pipeline before RL, and
copied into every cell that used it) and one column per teacher method: the paired difference against GRPO
over seeds, with its 95 % t-interval, for two measures (`MEASURES`):
- final held-out greedy accuracy, the measure the grid was designed around;
- the training reward of the last `LATE_STEPS` steps (on-policy samples of the training problems: what the
  advantage rule optimises). Added after the first seeds showed that no method, distillation from the
  strongest teacher included, raised held-out accuracy on this testbed, so held-out differences cannot
  rank the rules; the report says so next to the numbers.
The figure is each table as a curve: gain over GRPO against teacher AUC, one line per method. `curve_points`
is what `castrl diagnose`'s verdict thresholds are read from. A teacher whose gap was 0 on every token
before RL (the self-teacher: the student's prompt under the student's weights) has an AUC of 0.500 from
ties alone: it is marked "no signal", left out of the figure and of "from what AUC" answers. A method that
did not train (`findings.did_not_train`) is named as such and compared with nothing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from castrl.bench.report.cells import TierView, acc_at, final_step
from castrl.bench.tiers.control import ANSWER, ANSWER_CONTEXT, SELF
from castrl.diagnostics.verdict import has_signal, stored_tie_share, stored_zero_gap_share, verdict_of
from castrl.formatting import num
from castrl.reporting.figures import pyplot, save
from castrl.reporting.findings import ACCURACY_DIFF, BETTER, Comparison, trained
from castrl.reporting.stats import Interval, paired_diff

SELF_TEACHER = SELF  # the self-teacher's name (a cell without a teacher_model knob)


LATE_STEPS = 20  # the last quarter of the control's 80 RL steps


def final_accuracy(rec: dict[str, Any]) -> float:
    """Held-out greedy accuracy at the cell's last evaluated step."""
    return acc_at(rec).get(final_step(rec), math.nan) if rec.get("evals") else math.nan


def late_reward(rec: dict[str, Any]) -> float:
    """Mean training reward (verifier score of the step's sampled rollouts) over the last LATE_STEPS steps."""
    values = [r["reward"] for r in rec.get("steps", [])[-LATE_STEPS:] if r.get("reward") is not None]
    return sum(values) / len(values) if values else math.nan


Measure = tuple[str, str, Callable[[dict[str, Any]], float]]  # (key, label, value of a cell)
MEASURES: tuple[Measure, ...] = (
    ("heldout", "final held-out accuracy", final_accuracy),
    ("reward", f"training reward, last {LATE_STEPS} steps", late_reward),
)


_ANSWER_KNOB = f"teacher_context={ANSWER_CONTEXT}"


def _method_teacher(method: str) -> tuple[str, str]:
    """('cast@flip=false', 'sft+500') of 'cast@flip=false@teacher_model=sft+500'; teacher 'self' without
    a teacher_model knob; 'self+answer' of 'cast@teacher_context=with_answer' (`control.teacher_of`)."""
    parts = method.split("@")
    teacher = next((p.partition("=")[2] for p in parts[1:] if p.startswith("teacher_model=")), SELF_TEACHER)
    if _ANSWER_KNOB in parts[1:]:
        teacher += ANSWER
    kept = [p for p in parts if not p.startswith("teacher_model=") and p != _ANSWER_KNOB]
    return "@".join(kept), teacher


def profiles(view: TierView) -> dict[str, dict[str, Any]]:
    """teacher name -> its diagnosis (from the first cell that carries it), ordered by gap AUC."""
    found: dict[str, dict[str, Any]] = {}
    for seeds in view.cells.values():
        for rec in seeds.values():
            profile = rec.get("teacher_profile")
            if profile and rec.get("teacher") and rec["teacher"] not in found:
                found[rec["teacher"]] = profile
    return dict(sorted(found.items(), key=lambda kv: (_finite(kv[1].get("auc")), kv[0])))


def _finite(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan


def curve_points(view: TierView, value: Callable[[dict[str, Any]], float] = final_accuracy
                 ) -> dict[str, list[tuple[str, float, Interval]]]:
    """method (without its teacher) -> [(teacher, teacher AUC, paired Δ of `value` vs the baseline)]."""
    base = {s: value(r) for s, r in view.cells.get(view.baseline, {}).items()}
    teachers = profiles(view)
    out: dict[str, list[tuple[str, float, Interval]]] = {}
    for method, seeds in view.cells.items():
        if method == view.baseline:
            continue
        name, teacher = _method_teacher(method)
        if teacher not in teachers:
            continue
        diff = paired_diff({s: value(r) for s, r in seeds.items()}, base)
        out.setdefault(name, []).append((teacher, _finite(teachers[teacher].get("auc")), diff))
    for points in out.values():
        points.sort(key=lambda p: (p[1], p[0]))
    return dict(sorted(out.items()))


# The questions the control answers (issue: positive control), as paired comparisons at each teacher:
# (method a, method b, what a − b measures). Methods are written without their teacher.
COMPARISONS = (
    ("cast", "cast@flip=false", "the flip rule vs the same shaping without sign reversal"),
    ("cast", "rlsd", "the flip rule vs RLSD's magnitude-only reweighting"),
    ("cast", "cast@gap_control=shuffle", "the teacher's token ranking vs the same gaps shuffled across tokens"),
    ("opsd", "cast", "plain distillation (no verifier) vs CAST"),
    # flip_margin: a token flips only when |g| > the margin; below it the sign-preserving weight applies
    ("cast@flip_margin=0.001", "cast", "a flip margin of 1e-3 vs the paper's rule (no margin)"),
    ("cast@flip_margin=0.01", "cast", "a flip margin of 1e-2 vs the paper's rule"),
    ("cast@flip_margin=0.05", "cast", "a flip margin of 5e-2 vs the paper's rule"),
)


def with_teacher(method: str, teacher: str) -> str:
    """The grid's name of `method` trained with `teacher` (`self`: no teacher_model knob)."""
    if teacher.endswith(ANSWER):
        method, teacher = f"{method}@{_ANSWER_KNOB}", teacher.removesuffix(ANSWER)
    return method if teacher == SELF_TEACHER else f"{method}@teacher_model={teacher}"


def teacher_label(name: str, profile: dict[str, Any]) -> str:
    """'`sft+500` (AUC 0.773)'; a teacher without signal says so: its AUC is ties, not a measurement."""
    return f"`{name}` (AUC {num(profile.get('auc'))}{'' if has_signal(profile) else ', no signal'})"


def point_comparison(view: TierView, method: str, teacher: str, diff: Interval) -> Comparison:
    """A curve point as a `Comparison`: `method` trained with `teacher` against the baseline."""
    names = (with_teacher(method, teacher), view.baseline)
    return Comparison(diff, ACCURACY_DIFF, tuple(m for m in names if not trained(view.cells.get(m, {}))))


def _headline_answer(view: TierView, label: str, points: list[tuple[str, float, Interval]]) -> str:
    """'From what teacher AUC does the headline beat the baseline?' on one measure, computed from the teachers
    with a signal; every teacher is listed, a no-signal one marked."""
    teachers = profiles(view)
    found = [(t, auc, point_comparison(view, view.headline, t, d)) for t, auc, d in points]
    signal = [(t, auc, c) for t, auc, c in found if has_signal(teachers.get(t, {}))]
    wins = [(auc, t) for t, auc, c in signal if c.status == BETTER]
    others = [auc for t, auc, c in signal if c.readable and c.status != BETTER]
    listing = "; ".join(f"{teacher_label(t, teachers.get(t, {}))}: {c.text(name_untrained=True)}" for t, _, c in found)
    question = f"- **From what teacher AUC does `{view.headline}` beat `{view.baseline}` ({label})?**"
    if wins:
        auc, t = min(wins)
        below = sorted(a for a in others if a < auc)
        return (f"{question} From AUC {num(auc)} (`{t}`), the lowest teacher AUC with a signal at which the "
                "difference is a finding above 0" + (f"; not at AUC {', '.join(num(a) for a in below)}" if below else "")
                + f". By teacher: {listing}.")
    strongest = max((a for _, a, _ in signal), default=math.nan)
    return (f"{question} At none of the teachers with a signal (the highest AUC was {num(strongest)}). "
            f"By teacher: {listing}.")


def _start_vs_end(view: TierView) -> str:
    """Whether RL raised held-out accuracy at all on this testbed: each trained method's mean final accuracy
    against the (shared) start accuracy at step 0 (a method that did not train ends at the start)."""
    starts = [acc_at(r).get(0, math.nan) for seeds in view.cells.values() for r in seeds.values()]
    start = sum(starts) / len(starts) if starts else math.nan
    idle = sorted(m for m, seeds in view.cells.items() if seeds and not trained(seeds))
    finals = {m: sum(final_accuracy(r) for r in seeds.values()) / len(seeds) for m, seeds in view.cells.items()
              if seeds and m not in idle}
    if not finals:
        return "- **Did RL raise held-out accuracy here?** No method trained."
    above = sorted(m for m, v in finals.items() if v > start + 1e-9)
    low, high = min(finals, key=finals.get), max(finals, key=finals.get)
    untrained = (f" Left out, as they did not train (advantages or gradient norm 0 at every step): "
                 f"{', '.join(f'`{m}`' for m in idle)}." if idle else "")
    return (f"- **Did RL raise held-out accuracy here?** Start (step 0) {num(start)}; mean final accuracy by method from "
            f"{num(finals[low])} (`{low}`) to {num(finals[high])} (`{high}`); {len(above)} of {len(finals)} trained "
            f"methods end above the start{(': ' + ', '.join(f'`{m}`' for m in above)) if above else ''}.{untrained} "
            "Where none does, held-out differences measure how much each rule hurts, and the training reward is the "
            "measure that ranks the rules.")


def conclusions(view: TierView) -> list[str]:
    """Computed sentences, per measure: from which teacher AUC the headline method beats the baseline,
    and each `COMPARISONS` pair at every teacher (paired over seeds, 95 % t-interval)."""
    teachers = profiles(view)
    if not teachers or not curve_points(view).get(view.headline):
        return []
    lines = ["### Conclusions (computed from the cells above)", "", _start_vs_end(view)]
    for _, label, value in MEASURES:
        points = [p for p in curve_points(view, value).get(view.headline, []) if p[2].n > 0]
        if points:
            lines.append(_headline_answer(view, label, points))
    for a, b, what in COMPARISONS:
        for _, label, value in MEASURES:
            parts = []
            for t in teachers:
                ma, mb = with_teacher(a, t), with_teacher(b, t)
                if ma in view.cells and mb in view.cells:
                    d = paired_diff({s: value(r) for s, r in view.cells[ma].items()},
                                    {s: value(r) for s, r in view.cells[mb].items()})
                    idle = tuple(m for m in (ma, mb) if not trained(view.cells[m]))
                    if d.n == 0 and not idle:
                        continue
                    found = Comparison(d, ACCURACY_DIFF, idle)
                    parts.append(f"{teacher_label(t, teachers[t])} {found.text(name_untrained=True)}")
            if parts:
                lines.append(f"- **`{a}` − `{b}`** ({what}; {label}), paired over seeds: " + "; ".join(parts) + ".")
    return lines + [""]


def _gain_table(view: TierView, teachers: dict[str, dict[str, Any]], label: str,
                points: dict[str, list[tuple[str, float, Interval]]]) -> list[str]:
    lines = [f"Paired Δ of {label} vs `{view.baseline}` (mean [95 % t-interval] over seeds):", "",
             "| teacher (AUC) | " + " | ".join(f"`{m}`" for m in points) + " |", "|---|" + "---|" * len(points)]
    for name, p in teachers.items():
        cells = []
        for method in points:
            hit = [point_comparison(view, method, t, d) for t, _, d in points[method] if t == name]
            n = f" (n={hit[0].interval.n})" if hit and hit[0].readable else ""
            cells.append("-" if not hit else hit[0].text() + n)
        lines.append(f"| {teacher_label(name, p)} | " + " | ".join(cells) + " |")
    return lines + [""]


def students(view: TierView) -> dict[str, int]:
    """student digest -> how many cells trained it ('not recorded' for cells cached before digests were)."""
    out: dict[str, int] = {}
    for seeds in view.cells.values():
        for rec in seeds.values():
            key = rec.get("student_digest") or "not recorded"
            out[key] = out.get(key, 0) + 1
    return out


def student_warning(view: TierView) -> list[str]:
    """A warning when the section's cells trained more than one student: paired differences across two
    students compare two starting models, not two rules (`castrl bench control` re-runs such cells)."""
    found = students(view)
    if len(found) <= 1:
        return []
    listing = ", ".join(f"`{k}` ({n} cells)" for k, n in sorted(found.items()))
    return [f"> **Mixed students**: these cells trained {len(found)} different SFT students ({listing}); pairs across "
            "them compare starting models, not rules. Run `castrl bench control` on one machine to re-run the stale "
            "cells.", ""]


def control_sections(view: TierView, figures: Path, md_dir: Path) -> list[str]:
    """The teacher table, one gain table per measure, the gain-vs-AUC figure and the conclusions."""
    teachers = profiles(view)
    if not teachers:
        return []
    lines = [*student_warning(view), "### Teachers (diagnosed before RL)", "",
             "`tied pairs`: the share of the AUC's (correct, wrong) pairs whose mean gaps are equal (each counted ½); "
             "`g = 0`: the share of valid tokens on which the teacher and the student agree exactly. A teacher with "
             "g = 0 on every token has no signal: its AUC of 0.500 is ties, CAST with it gives every token its "
             "rollout's verifier-signed base advantage until training moves the policy away from the teacher's "
             "snapshot, and it is no point of the verdict's curve. 'not recorded': the cell cached no tie count. "
             "The verdict is recomputed from these numbers by today's rule.", "",
             "| teacher | gap AUC (pairs) | tied pairs | g = 0 | against verifier | flipped | correct-negative flips | "
             "incorrect-positive flips | `castrl diagnose` verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for name, p in teachers.items():
        against = (p.get("against_verifier") or {}).get("frac")
        ties = stored_tie_share(p)
        lines.append(f"| `{name}` | {num(p.get('auc'))} ({int(p.get('n_pairs') or 0)}) | "
                     f"{'not recorded' if ties is None else num(ties)} | {num(stored_zero_gap_share(p))} | "
                     f"{num(against)} | {num(p.get('frac_flipped'))} | {num(p.get('frac_flipped_correct_negative'))} | "
                     f"{num(p.get('frac_flipped_incorrect_positive'))} | {verdict_of(p)} |")
    lines += ["", f"### Gain over `{view.baseline}` by teacher", ""]
    curves = {key: (label, curve_points(view, value)) for key, label, value in MEASURES}
    for label, points in curves.values():
        lines += _gain_table(view, teachers, label, points)
    path = plot_gain_vs_auc(view, _plotted(view, curves), figures)
    if path is not None:
        lines += [f"![gain over {view.baseline} vs teacher AUC]({os.path.relpath(path, md_dir)})", ""]
    return lines + conclusions(view)


def _plotted(view: TierView, curves: dict[str, tuple[str, dict[str, list[tuple[str, float, Interval]]]]]
             ) -> dict[str, tuple[str, dict[str, list[tuple[str, float, Interval]]]]]:
    """The curves without the points the figure must not draw: teachers without signal (their AUC is ties)
    and methods that did not train."""
    teachers = profiles(view)
    out = {}
    for key, (label, points) in curves.items():
        kept = {m: [p for p in series if has_signal(teachers.get(p[0], {}))
                    and not point_comparison(view, m, p[0], p[2]).untrained] for m, series in points.items()}
        out[key] = (label, {m: series for m, series in kept.items() if series})
    return out


def plot_gain_vs_auc(view: TierView, curves: dict[str, tuple[str, dict[str, list[tuple[str, float, Interval]]]]],
                     folder: Path) -> Path | None:
    """`<tier>_gain_vs_auc.png`: one panel per measure, Δ vs the baseline (error bars: 95 % t-interval)
    against teacher AUC, one line per method."""
    if not any(math.isfinite(auc) for _, points in curves.values() for series in points.values() for _, auc, _ in series):
        return None
    plt = pyplot()

    folder.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(curves), figsize=(6.5 * len(curves), 4.6), squeeze=False)
    for ax, (label, points) in zip(axes[0], curves.values(), strict=True):
        for i, (method, series) in enumerate(points.items()):
            xs = [auc + (i - len(points) / 2) * 0.004 for _, auc, _ in series]  # a small dodge: bars stay readable
            ys = [d.mean for _, _, d in series]
            errs = [d.half if math.isfinite(d.half) else 0.0 for _, _, d in series]
            ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=method, linewidth=1.6)
            for (teacher, _, _), x, y in zip(series, xs, ys, strict=True):
                if i == 0:
                    ax.annotate(teacher, (x, y), textcoords="offset points", xytext=(4, 6), fontsize=7)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.axvline(0.5, color="gray", linewidth=0.6, linestyle=":")
        ax.set_xlabel("teacher gap AUC (castrl diagnose, correct vs wrong within mixed groups)")
        ax.set_ylabel(f"{label} − {view.baseline} (paired)")
        ax.set_title(f"{view.tier}: {label}, gain over {view.baseline}\n(95% t-intervals over seeds)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = folder / f"{view.tier}_gain_vs_auc.png"
    save(fig, path)
    return path
