"""`castrl bench report`: `docs/results.md` and learning-curve PNGs from the cached cells.

Only what the cache holds is reported: every number is computed here from cell JSONs, and every
table names the command that produced its cells. Cells are selected by the tier's settings (the
default grid, or `--quick`'s), so a smoke run never mixes into the real tables. Intervals are 95 %
t-intervals over seeds; comparisons with the tier's baseline are paired by seed (same data order and
starting model). Sections whose cells were measured with spec v1's rule say so (`V1_BANNER`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from castrl.arguments import OutputArguments, renamed_init
from castrl.bench.common.arguments import BenchArguments
from castrl.bench.common.cells import load_tier
from castrl.bench.common.tier import tier_descriptions
from castrl.bench.report.cells import TierView, acc_at, cell_device, final_step, step_mean, steps_to_reach
from castrl.bench.report.control import control_sections
from castrl.bench.report.diagnosis import diagnosis_sections
from castrl.bench.report.figures import write_figures
from castrl.bench.report.final import final_measure, final_sections
from castrl.bench.report.paper import paper_sections
from castrl.bench.report.placement import placement_sections
from castrl.bench.report.views import tier_view
from castrl.command_line import parse_dataclasses, user_input
from castrl.config_fields import adapted, with_fields_of
from castrl.formatting import num
from castrl.reporting.findings import ACCURACY, RULE, compare, paired, trained
from castrl.reporting.markdown import table
from castrl.reporting.stats import Interval, fmt_ci, mean_ci

# A tier's own report sections, placed after its headline: (view, figures folder, markdown folder) -> lines
# (the smollm2 tier's paper comparison, the positive control's gain-vs-teacher-AUC table and figure). Kept
# here, not in the tier's description, so tier runners import no report code.
TIER_SECTIONS: dict[str, Callable[[TierView, Path, Path], list[str]]] = {
    "smollm2": lambda view, figures, md_dir: paper_sections(view),
    "control": control_sections,
}

# Written above the tables when some section shows cells of spec v1's rule (cells without `rule_version`).
V1_BANNER = (
    "> **v1 reconstruction (superseded)**: measured with the spec v1 rule (flip threshold ln 1.25, damped flips, "
    "`self_teach` teacher on current-policy weights, no truncation masking; the tiny tier's `cast` used the student "
    "prompt with EMA weights instead, and rollouts were sampled at temperature 1.0). The paper's rule (spec v2, "
    "[`spec.md`](spec.md)) differs; these numbers do not describe castrl's current `cast`. Knobs named below "
    "(`flip_threshold`, `tau_pos`, `tau_neg`, `lagged`) are v1's. New numbers will come from the benchmark redo."
)
SIGNAL_KEYS = (
    ("reward", "reward"),
    ("non-zero adv", "cast/frac_nonzero_adv"),
    ("all-correct", "cast/frac_all_correct"),
    ("all-wrong", "cast/frac_all_wrong"),
    ("mixed", "cast/frac_mixed"),
    ("flip (correct)", "cast/flip_frac_correct"),
    ("flip (wrong)", "cast/flip_frac_wrong"),
    ("truncated", "cast/frac_truncated"),
)
TIME_PARTS = ("rollout_s", "student_s", "teacher_s", "advantage_s", "train_s", "step_s")


# --- tables -------------------------------------------------------------------------------------------


def budgets(view: TierView) -> list[int]:
    """Evaluated steps common to the baseline's cells (or to all cells when there is no baseline)."""
    recs = [r for m in view.cells.values() for r in m.values()]
    base = list(view.cells.get(view.baseline, {}).values()) or recs
    steps = set.intersection(*(set(acc_at(r)) for r in base)) if base else set()
    return sorted(steps)


def accuracy_tables(view: TierView) -> list[str]:
    steps, baseline = budgets(view), view.baseline
    rows, diffs = [], []
    base = {s: acc_at(r) for s, r in view.cells.get(baseline, {}).items()}
    for m in view.methods:
        per_seed = {s: acc_at(r) for s, r in view.cells[m].items()}
        rows.append([m, str(len(per_seed))] + [fmt_ci(mean_ci([a.get(k, math.nan) for a in per_seed.values()]),
                                                      bounds=ACCURACY) for k in steps])
        if m != baseline and base:
            untrained = tuple(x for x in (m, baseline) if not trained(view.cells.get(x, {})))
            cells = [paired({s: a[k] for s, a in per_seed.items() if k in a},
                            {s: a[k] for s, a in base.items() if k in a}, untrained=untrained).text()
                     for k in steps[1:]]
            diffs.append([m] + cells)
    out = ["### Held-out greedy accuracy (mean ± 95% CI over seeds)", ""]
    out += table(["method", "seeds"] + [f"step {k}" for k in steps], rows)
    if diffs:
        out += ["", f"### Paired difference vs {baseline} (method − {baseline}, mean [95% CI] over seeds)", ""]
        out += table(["method"] + [f"step {k}" for k in steps[1:]], diffs)
    return out


def level_table(view: TierView) -> list[str]:
    """Final-step held-out accuracy per arithmetic level: where the methods differ."""
    final = budgets(view)[-1] if budgets(view) else None
    levels = sorted({lvl for m in view.cells.values() for r in m.values() for e in r.get("evals", [])
                     for lvl in e.get("per_level", {})})
    if final is None or not levels:
        return []
    rows = []
    for m in view.methods:
        per_level = [e.get("per_level", {}) for r in view.cells[m].values() for e in r["evals"] if e["step"] == final]
        rows.append([m] + [fmt_ci(mean_ci([p[lvl] for p in per_level if lvl in p]), bounds=ACCURACY)
                           for lvl in levels])
    head = [f"### Held-out accuracy per level at step {final} (mean ± 95% CI over seeds)", ""]
    return head + table(["method"] + levels, rows)


def baseline_target(view: TierView) -> float | None:
    """The baseline's final held-out accuracy, mean over its seeds: the bar the other methods must reach."""
    base = view.cells.get(view.baseline, {})
    finals = [acc_at(r)[final_step(r)] for r in base.values() if r.get("evals")]
    return sum(finals) / len(finals) if finals else None


def start_accuracy(view: TierView) -> float | None:
    """The baseline's held-out accuracy at step 0, mean over its seeds: the starting model's."""
    starts = [acc_at(r).get(0, math.nan) for r in view.cells.get(view.baseline, {}).values()]
    starts = [a for a in starts if math.isfinite(a)]
    return sum(starts) / len(starts) if starts else None


def no_target(view: TierView) -> str | None:
    """Why 'steps to reach the baseline's final accuracy' has no answer (None when it has one): the
    baseline has no final accuracy, or it did not end above the start, so every method 'reaches' it
    before training and a step count or a ratio would measure nothing."""
    target, start = baseline_target(view), start_accuracy(view)
    if target is None:
        return f"no {view.baseline} evaluations"
    if start is not None and target <= start + 1e-12:
        return f"no target: {view.baseline} ended at {num(target)}, not above the start ({num(start)}); no ratio"
    return None


def reach(view: TierView, method: str, target: float) -> tuple[list[int], int]:
    """(first evaluated step reaching `target`, for each seed that does; number of seeds)."""
    hits = [steps_to_reach(r, target) for r in view.cells[method].values()]
    return [h for h in hits if h is not None], len(hits)


def reach_table(view: TierView) -> list[str]:
    """Steps each method needs to reach the baseline's final accuracy (mean over the seeds that reach it)."""
    target, baseline = baseline_target(view), view.baseline
    if target is None:
        return []
    budget = max(final_step(r) for r in view.cells[baseline].values())
    title = [f"### Steps to reach {baseline}'s final accuracy", ""]
    if no_target(view):
        return title + [f"No target: {baseline}'s final accuracy ({num(target)}, the mean over seeds at step {budget}) "
                        f"is not above the start ({num(start_accuracy(view))} at step 0). {baseline} did not improve on "
                        "the starting model, so no method has anything to reach and no step count or ratio is "
                        "given; the held-out table above has every method's accuracy at each evaluation."]
    rows = []
    for m in view.methods:
        if not trained(view.cells[m]):
            rows.append([m, "did not train", "-", "-"])
            continue
        hits, n = reach(view, m, target)
        mean = sum(hits) / len(hits) if hits else None
        rows.append([m, "not reached" if mean is None else num(mean, 1), f"{len(hits)}/{n}",
                     "-" if mean is None or not budget else num(mean / budget, 2)])
    head = title + [f"Target: {num(target)}, the mean over seeds of {baseline}'s held-out accuracy at step {budget}, "
                    f"above the start ({num(start_accuracy(view))}). A seed reaches it at its first evaluation after "
                    "step 0 at or above the target (evaluations are spaced, so a step count is an upper bound); the "
                    "mean is over the seeds that reach it.", ""]
    return head + table(["method", "steps (mean)", "seeds reached", f"÷ {baseline} budget"], rows)


def signal_table(view: TierView) -> list[str]:
    rows = []
    for m in view.methods:
        recs = list(view.cells[m].values())
        rows.append([m] + [fmt_ci(mean_ci([step_mean(r, key) for r in recs]), bounds=ACCURACY)
                           for _, key in SIGNAL_KEYS])
    head = ["### Rollout signal (per-step means, then mean ± 95% CI over seeds)", "",
            "`non-zero adv` is the share of rollouts whose advantage is non-zero on some token; group types "
            "are fractions of prompt groups; flips are fractions of the valid completion tokens of correct / wrong "
            "rollouts that CAST flipped; truncated is the share of completions that hit the length limit (masked "
            "from the loss when the cell's trainer masks truncated completions).", ""]
    return head + table(["method"] + [name for name, _ in SIGNAL_KEYS], rows)


def _same_invocation_ratio(rec: dict, base: dict | None) -> float | None:
    if base is None or rec.get("invocation") != base.get("invocation"):
        return None
    num, den = rec.get("timing", {}).get("step_s"), base.get("timing", {}).get("step_s")
    return num / den if num and den else None


def _device_kind(rec: dict) -> str:
    """"cpu" or "cuda" (the GPU's name dropped): what the step-time rows are split by."""
    return cell_device(rec).split(" ")[0]


def timing_table(view: TierView) -> tuple[list[str], dict[str, Interval]]:
    baseline = view.baseline
    base = view.cells.get(baseline, {})
    rows, ratios = [], {}
    # one row per method and device when the cells ran on several: seconds on a GPU and a CPU do not average
    devices = sorted({_device_kind(r) for m in view.methods for r in view.cells[m].values()})
    for m in view.methods:
        # a ratio is within one invocation, so within one device: the method's ratios pool across devices
        pairs = {s: _same_invocation_ratio(r, base.get(s)) for s, r in view.cells[m].items()}
        ratios[m] = mean_ci([p for p in pairs.values() if p is not None])
        for device in devices:
            recs = {s: r for s, r in view.cells[m].items() if _device_kind(r) == device}
            if not recs:
                continue
            parts = [fmt_ci(mean_ci([r.get("timing", {}).get(p, math.nan) for r in recs.values()]), digits=3)
                     for p in TIME_PARTS]
            here = [pairs[s] for s in recs if pairs[s] is not None]
            ratio = fmt_ci(mean_ci(here), digits=2) + f" (n={len(here)})" if here else "-"
            wall = mean_ci([r.get("wall_s", math.nan) for r in recs.values()])
            rows.append([m if len(devices) == 1 else f"{m} ({device})"] + parts + [ratio, num(wall.mean, 0)])
    head = ["### Seconds per step (mean ± 95% CI over seeds; first step excluded)", "",
            "rollout = TRL generation + reward; student/teacher = castrl's no-grad log-prob passes; train = TRL "
            f"`step_time` minus the rest. `÷ {baseline}` pairs each seed with the {baseline} cell of the same "
            "invocation (same machine load) and averages the step-time ratios. Wall = whole cell, evals included."
            + (" One row per method and device." if len(devices) > 1 else ""), ""]
    header = ["method", "rollout", "student", "teacher", "advantage", "train", "total", f"÷ {baseline}", "wall s"]
    return head + table(header, rows), ratios


def headline(view: TierView, ratios: dict[str, Interval]) -> list[str]:
    """The headline method against the issue's targets, as measured (no verdict is assumed)."""
    head, baseline = view.headline, view.baseline
    if head not in view.cells or baseline not in view.cells:
        return [f"({head} or {baseline} cells missing: no headline.)"]
    cells = view.cells[head]
    label, value = main_measure(view)
    delta = compare(view.cells, head, baseline, value)
    nonzero = mean_ci([step_mean(r, "cast/frac_nonzero_adv") for r in cells.values()])
    ratio = ratios.get(head, Interval(math.nan, math.nan, 0))
    rows = [
        [f"{label}, {head} − {baseline}", f"> 0 ({head} beats {baseline})", delta.text(name_untrained=True)],
        [f"steps to reach {baseline}'s final accuracy", f"≤ 0.6× {baseline}'s", _steps_text(view)],
        [f"rollouts with a non-zero advantage ({head})", "100%", fmt_ci(nonzero, bounds=ACCURACY)],
        [f"step time {head} ÷ {baseline} (same invocation)", "≤ 1.10",
         fmt_ci(ratio, digits=2) if ratio.n else "no cell pair of one invocation; a controlled pair: "
         "`castrl bench steptime` ([steptime.md](steptime.md))"],
    ]
    return table(["measure", "target", "measured"], rows)


def _steps_text(view: TierView) -> str:
    """The headline's steps-to-reach cell: a ratio only when the target lies above the start."""
    why = no_target(view)
    if why:
        return why
    if not trained(view.cells[view.headline]):
        return "did not train"
    reached, n_seeds = reach(view, view.headline, baseline_target(view))
    if not reached:
        return f"not reached (0/{n_seeds} seeds)"
    return f"{sum(reached) / len(reached) / budgets(view)[-1]:.2f}× the budget ({len(reached)}/{n_seeds} seeds reach it)"


def verdict(view: TierView) -> list[str]:
    """One computed sentence per method against the baseline on the main measure, worded by the one rule
    of a finding (`findings.Comparison`): differences that can be read first, then those that are not
    findings (too few seeds, zero width), then the methods that did not train."""
    steps, baseline = budgets(view), view.baseline
    if not steps or not view.cells.get(baseline):
        return []
    label, value = main_measure(view)
    found = {m: compare(view.cells, m, baseline, value) for m in view.methods if m != baseline}
    order = sorted(found, key=lambda m: (not found[m].readable, bool(found[m].untrained)))
    return [found[m].sentence(m, baseline, label) for m in order if found[m].interval.n or found[m].untrained]


def main_measure(view: TierView) -> tuple[str, Callable[[dict], float]]:
    """(label, value of a cell) the headline and verdicts compare: final Avg@k where cells have a final
    evaluation, else held-out greedy accuracy at the last evaluated step."""
    found = final_measure(view)
    if found is not None:
        return found
    final = budgets(view)[-1] if budgets(view) else 0
    return f"held-out accuracy at step {final}", lambda rec: acc_at(rec).get(final, math.nan)


def render_tier(view: TierView, figures: dict[str, str], extra: Sequence[str] = ()) -> list[str]:
    """The markdown section of one tier (`extra`: the tier's own sections, after the headline); a section
    of superseded (v1) cells says so in every heading."""
    title = f"v1 (superseded) — {view.title}" if view.superseded else view.title
    lines = [f"## {title}", "", f"Reproduce: `{view.command}`", ""]
    lines += [f"- {note}" for note in view.notes] + [""]
    if not view.cells:
        return lines + ["No cells of this configuration are cached yet.", ""] + final_sections(view)
    timing, ratios = timing_table(view)
    body = ["### Headline", ""] + headline(view, ratios) + [""]
    against = verdict(view)
    if against:
        body += [f"### Every method against {view.baseline}", "", RULE, ""] + against + [""]
    body += list(extra)
    label, value = main_measure(view)
    body += final_sections(view) + diagnosis_sections(view, value, label)
    for block in (accuracy_tables(view), level_table(view), reach_table(view), signal_table(view), timing):
        body += block + [""]
    if view.superseded:
        body = [f"### v1: {line[4:]}" if line.startswith("### ") else line for line in body]
    return lines + body + [f"![{name}]({path})" for name, path in figures.items()] + [""]


@renamed_init
@dataclass
@with_fields_of(OutputArguments, only=("output_dir",), convert=adapted(defaults={"output_dir": "docs"}, notes={
    "output_dir": "The report's: results.md and, unless --figures says otherwise, figures/bench/ in it. A path "
                  "ending in .md is the report file itself (what the deprecated --out took)."}))
@with_fields_of(BenchArguments, only=("cells_dir", "quick"), convert=adapted(notes={"quick": "Reports every tier's."}))
class ReportArguments:
    """The flags of `castrl bench report` (TRL-style underscores); `cells_dir` and `quick` are the bench's
    vocabulary (`castrl.bench.common.arguments`), `output_dir` the shared one (`castrl.arguments`)."""

    figures: str | None = field(default=None, metadata={
        "help": "Folder of the PNGs (linked from the report); None: figures/bench under --output_dir."})

    def report_path(self) -> Path:
        """The markdown file: `output_dir`/results.md, or `output_dir` itself when it names a .md file."""
        path = Path(self.output_dir)
        return path if path.suffix == ".md" else path / "results.md"

    def figures_dir(self) -> Path:
        return Path(self.figures) if self.figures else self.report_path().parent / "figures" / "bench"


def parse_args(argv: list[str]) -> ReportArguments:
    (args,) = parse_dataclasses([ReportArguments], argv, prog="castrl bench report",
                                description=__doc__.splitlines()[0])
    return args


def main(argv: list[str]) -> int:
    """Write the markdown report and its figures; prints the path."""
    with user_input():
        args = parse_args(argv)
    out, figures_dir = args.report_path(), args.figures_dir()
    out.parent.mkdir(parents=True, exist_ok=True)
    tiers = tier_descriptions()
    views = [tier_view(tier, args.cells_dir, quick=args.quick, loader=load_tier) for tier in tiers]
    lines = ["# castrl benchmark results", ""]
    if any(view.superseded for view in views):
        lines += [V1_BANNER, ""]
    lines += ["Generated by `castrl bench report` from the cell cache; do not edit by hand. Numbers are whatever "
              "the cached cells measured.", ""]
    for tier, view in zip(tiers, views, strict=True):
        figures = write_figures(view, figures_dir, out.parent) if view.cells else {}
        own = TIER_SECTIONS.get(tier.name)
        extra = own(view, figures_dir, out.parent) if own and view.cells else []
        lines += render_tier(view, figures, extra)
    lines += placement_sections(args.cells_dir)
    out.write_text("\n".join(lines))
    print(f"[bench] report: {out}")
    return 0
