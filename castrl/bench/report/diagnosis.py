"""The report's "diagnosed before training vs measured after" section, from a tier's diagnosis cell
(`castrl.bench.common.diagnosis`), and `rerender_verdicts`, which brings every verdict stored in the cell
cache up to today's rule without re-running a model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from castrl.bench.report.cells import TierView, step_mean
from castrl.formatting import num
from castrl.reporting.findings import compare
from castrl.reporting.stats import mean_ci


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
