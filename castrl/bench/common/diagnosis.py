"""A tier's diagnosis before training: `castrl diagnose` on the untrained model, the RL training problems,
the trainer's group size, budget and temperature, and every teacher context the grid trains with.

It is one cached cell of its own (method `diagnose`, like the base model's evaluation), so the report can
set each method's prediction (the teacher's gap AUC, the share of tokens CAST would flip and push down,
the one-line verdict) beside the trained outcome (`diagnosis_sections`). Without it a user has no way to
tell before spending compute whether CAST's teacher agrees with the verifier on their model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from castrl.bench.harness import Cell
from castrl.bench.report_cells import TierView, step_mean
from castrl.formatting import num
from castrl.reporting.findings import compare
from castrl.reporting.stats import mean_ci

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
        model=config["model"], teachers=list(spec["teachers"]), prompt_style=config["prompt_style"],
        group_size=config["group_size"], n_prompts=len(problems), max_new_tokens=config["max_new_tokens"],
        temperature=spec["temperature"], seed=spec["seed"], threads=0, progress=progress,
    )  # fmt: skip
    start = time.perf_counter()
    run = run_diagnostics(settings, problems=problems)
    teachers = {}
    for context, t in run.results["teachers"].items():
        seq = t["sequences"]
        teachers[context] = {
            "auc": seq["auc_mean"], "n_pairs": seq["n_pairs"], "n_ties": seq.get("n_ties"),
            "tie_share": seq.get("tie_share"), "frac_zero_gap": seq.get("frac_zero_gap"),
            "against_verifier": t["against_verifier"], "advantages": t["advantages"], "verdict": t["verdict"],
            "cast_metrics": t["cast_metrics"], "noise_floor": t.get("noise_floor"),
        }  # fmt: skip
    return {"teachers": teachers, "groups": run.results["groups"], "notes": run.notes, "timings": run.timings,
            "wall_s": time.perf_counter() - start}


def diagnosis_sections(view: TierView, value: Any, label: str) -> list[str]:
    """The table 'diagnosed before training' vs 'measured after', one row per method with a teacher:
    `value(rec)` is the tier's main measure (its `label`), paired by seed with the baseline."""
    diagnosis = view.diagnosis
    if not diagnosis:
        return []
    from castrl.diagnostics.verdict import stored_tie_share, verdict_of

    rows = []
    for method in view.methods:
        recs = list(view.cells[method].values())
        context = (recs[0].get("config", {}).get("overrides", {}) or {}).get("teacher_context") if recs else None
        d = diagnosis["teachers"].get(context) if context else None
        if d is None:
            continue
        diff = compare(view.cells, method, view.baseline, value)
        ties = stored_tie_share(d)
        rows.append(f"| `{method}` | `{context}` | {num(d['auc'])} ({int(d['n_pairs'] or 0)}) | "
                    f"{'not recorded' if ties is None else num(ties)} | "
                    f"{num(d['against_verifier'].get('frac'))} | {num(d['advantages'].get('frac_down'))} | "
                    f"{num(mean_ci([step_mean(r, 'cast/frac_flipped') for r in recs]).mean)} | {diff.text()} | "
                    f"{verdict_of(d)} |")
    groups = diagnosis.get("groups", {})
    lines = ["### Diagnosed before training vs measured after", "",
             f"`castrl diagnose` on the untrained model ({int(groups.get('n_groups', 0))} training problems x "
             f"{int(groups.get('n_rollouts', 0) / max(groups.get('n_groups', 1), 1))} rollouts, mixed groups "
             f"{num(groups.get('frac_mixed'))}): gap AUC = P(a correct rollout's mean gap > a wrong one's) within "
             "mixed groups; 'tied pairs' = the share of those pairs whose mean gaps are equal (each counted ½); "
             "'against verifier' = the share of tokens CAST would flip at step 0; 'pushed down' = "
             "tokens with a negative CAST advantage. After training: the flip share logged per step (mean over "
             f"steps and seeds) and the paired Δ of {label} vs `{view.baseline}` over seeds. The verdict is "
             "recomputed from the stored numbers by today's rule.", ""]
    lines += ["| method | teacher context | gap AUC (pairs) | tied pairs | against verifier | pushed down | "
              f"flipped in training | Δ vs {view.baseline} | verdict before training |", "|---|---|---|---|---|---|---|---|---|"]
    if not rows:
        rows = ["| (no trained method with a teacher yet) | | | | | | | | |"]
    return lines + rows + ["", f"- Diagnosis: {num(diagnosis.get('wall_s'), 0)} s on this machine.", ""]


def _stored_diagnoses(value: Any) -> Iterator[dict[str, Any]]:
    """Every dict inside a cached record that holds a verdict with the numbers it was made from."""
    if isinstance(value, dict):
        if isinstance(value.get("verdict"), str) and "auc" in value and "n_pairs" in value:
            yield value
        for item in value.values():
            yield from _stored_diagnoses(item)
    elif isinstance(value, list):
        for item in value:
            yield from _stored_diagnoses(item)


def rerender_verdicts(cache_dir: str | Path) -> list[Path]:
    """Rewrite every verdict stored in the cell cache (`<tier>/cells/*.json`, `<tier>/teachers/*.json`: a
    diagnosis cell's teachers, a control teacher's profile and its copies in the cells) with
    `verdict_of` on the numbers stored beside it, so a change of the verdict rule reaches the cache
    without re-running a model. Only the verdict strings change: each is replaced in the file's text
    (JSON-escaped as the cache writes it), so every number and the formatting stay byte-identical.
    Returns the files changed."""
    from castrl.diagnostics.verdict import verdict_of

    changed = []
    for path in sorted(Path(cache_dir).glob("*/*/*.json")):
        text = path.read_text()
        if '"verdict"' not in text:
            continue
        updated = text
        for stored in _stored_diagnoses(json.loads(text)):
            old, new = json.dumps(stored["verdict"]), json.dumps(verdict_of(stored))
            if old != new and old in updated:
                updated = updated.replace(old, new)
        if updated != text:
            path.write_text(updated)
            changed.append(path)
    return changed
