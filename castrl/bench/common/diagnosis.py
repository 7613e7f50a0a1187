"""A tier's diagnosis before training: `castrl diagnose` on the untrained model, the RL training problems,
the trainer's group size, budget and temperature, and every teacher context the grid trains with.

It is one cached cell of its own (method `diagnose`, like the base model's evaluation), so the report can
set each method's prediction (the teacher's gap AUC, the share of tokens CAST would flip and push down,
the one-line verdict) beside the trained outcome (`castrl.bench.report.diagnosis`). Without it a user has no way to
tell before spending compute whether CAST's teacher agrees with the verifier on their model.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from castrl.bench.common.cells import Cell
from castrl.bench.common.tier import CELL_DECODER

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
        temperature=spec["temperature"], seed=spec["seed"], threads=0, decoder=CELL_DECODER, progress=progress,
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
