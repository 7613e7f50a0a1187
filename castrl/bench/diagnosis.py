"""A tier's diagnosis before training: `castrl diagnose` on the untrained model, the RL training problems,
the trainer's group size, budget and temperature, and every teacher context the grid trains with.

It is one cached cell of its own (method `diagnose`, like the base model's evaluation), so the report can
set each method's prediction (the teacher's gap AUC, the share of tokens CAST would flip and push down,
the one-line verdict) beside the trained outcome (`diagnosis_sections`). Without it a user has no way to
tell before spending compute whether CAST's teacher agrees with the verifier on their model.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from castrl.bench.harness import Cell
from castrl.bench.report_cells import TierView, step_mean
from castrl.bench.stats import fmt_ci, mean_ci, paired_diff
from castrl.formatting import num

DIAGNOSE_METHOD = "diagnose"


@dataclass(frozen=True)
class DiagnosisSettings:
    """What the pre-training diagnosis samples and scores (the rest comes from the tier's RL settings)."""

    n_prompts: int = 32  # the first problems of the RL training set, spread over the levels
    teachers: tuple[str, ...] = ("answer_free", "with_reference", "with_peer_success")
    temperature: float = 0.7  # the trainer's; diagnose samples without top-p / top-k (its documented rule)
    seed: int = 0


def diagnosis_config(model: str, levels: Sequence[str], prompt_style: str, group_size: int, max_new_tokens: int,
                     spec: DiagnosisSettings) -> dict[str, Any]:
    return {"model": model, "levels": list(levels), "prompt_style": prompt_style, "group_size": group_size,
            "max_new_tokens": max_new_tokens, "diagnosis": asdict(spec)}


def diagnosis_cell(tier: str, config: dict[str, Any]) -> Cell:
    return Cell(tier, DIAGNOSE_METHOD, 0, config)


def run_diagnosis(config: dict[str, Any], problems: list[dict[str, Any]], progress: bool) -> dict[str, Any]:
    """`castrl diagnose`'s pipeline on `problems` (the tier's training problems); per teacher context the
    numbers the report compares with training: gap AUC, tokens against the verifier, the shares CAST
    would flip / push down / push up, the cast metrics of one step, and the verdict line."""
    from castrl.diagnostics.pipeline import run_diagnostics
    from castrl.diagnostics.settings import DiagnoseSettings

    spec = config["diagnosis"]
    settings = DiagnoseSettings(
        model=config["model"], teachers=list(spec["teachers"]), style=config["prompt_style"],
        group_size=config["group_size"], n_prompts=len(problems), max_new_tokens=config["max_new_tokens"],
        temperature=spec["temperature"], seed=spec["seed"], threads=0, progress=progress,
    )  # fmt: skip
    start = time.perf_counter()
    run = run_diagnostics(settings, problems=problems)
    teachers = {}
    for context, t in run.results["teachers"].items():
        teachers[context] = {
            "auc": t["sequences"]["auc_mean"], "n_pairs": t["sequences"]["n_pairs"],
            "against_verifier": t["against_verifier"], "advantages": t["advantages"], "verdict": t["verdict"],
            "cast_metrics": t["cast_metrics"],
        }  # fmt: skip
    return {"teachers": teachers, "groups": run.results["groups"], "notes": run.notes, "timings": run.timings,
            "wall_s": time.perf_counter() - start}


def diagnosis_sections(view: TierView, value: Any, label: str) -> list[str]:
    """The table 'diagnosed before training' vs 'measured after', one row per method with a teacher:
    `value(rec)` is the tier's main measure (its `label`), paired by seed with the baseline."""
    diagnosis = view.diagnosis
    if not diagnosis:
        return []
    base = {s: value(r) for s, r in view.cells.get(view.baseline, {}).items()}
    rows = []
    for method in view.methods:
        recs = list(view.cells[method].values())
        context = (recs[0].get("config", {}).get("overrides", {}) or {}).get("teacher_context") if recs else None
        d = diagnosis["teachers"].get(context) if context else None
        if d is None:
            continue
        diff = paired_diff({s: value(r) for s, r in view.cells[method].items()}, base)
        rows.append(f"| `{method}` | `{context}` | {num(d['auc'])} ({int(d['n_pairs'] or 0)}) | "
                    f"{num(d['against_verifier'].get('frac'))} | {num(d['advantages'].get('frac_down'))} | "
                    f"{num(mean_ci([step_mean(r, 'cast/frac_flipped') for r in recs]).mean)} | {fmt_ci(diff, signed=True)} | "
                    f"{d['verdict']} |")
    groups = diagnosis.get("groups", {})
    lines = ["### Diagnosed before training vs measured after", "",
             f"`castrl diagnose` on the untrained model ({int(groups.get('n_groups', 0))} training problems x "
             f"{int(groups.get('n_rollouts', 0) / max(groups.get('n_groups', 1), 1))} rollouts, mixed groups "
             f"{num(groups.get('frac_mixed'))}): gap AUC = P(a correct rollout's mean gap > a wrong one's) within "
             "mixed groups; 'against verifier' = the share of tokens CAST would flip at step 0; 'pushed down' = "
             "tokens with a negative CAST advantage. After training: the flip share logged per step (mean over "
             f"steps and seeds) and the paired Δ of {label} vs `{view.baseline}` over seeds.", ""]
    lines += ["| method | teacher context | gap AUC (pairs) | against verifier | pushed down | flipped in training | "
              f"Δ vs {view.baseline} | verdict before training |", "|---|---|---|---|---|---|---|---|"]
    if not rows:
        rows = ["| (no trained method with a teacher yet) | | | | | | | |"]
    return lines + rows + ["", f"- Diagnosis: {num(diagnosis.get('wall_s'), 0)} s on this machine.", ""]
