"""Teacher-signal diagnostics (`castrl diagnose`): how the teacher-student gap behaves on correct and
wrong rollouts, and what CAST would do with it, measured without training.

- `pipeline`: the end-to-end run, on `castrl.rollouts` (sample groups, score their tokens under any prompt);
- `scores`: the student's and every teacher's log-probs of a diagnosis (teachers from `castrl.teacher.build_teacher`);
- `noise`: the gap's noise floor (the same tokens re-scored in ways that should not matter);
- `analysis`: pure tensor -> numbers functions (reusing castrl.core's gap, base-advantage and flip code);
- `separation`: the within-group gap AUC with its tied pairs; `verdict`: the one-line verdict (`gap_verdict`,
  and `verdict_of` to recompute it from a stored diagnosis) and the positive control's curve it quotes;
- `settings`: the flags (`DiagnoseSettings`), their validation and the problem draw;
- `report` / `render` / `figures`: diagnostics.json, diagnostics.md, PNGs and the self-contained report.html.
"""

from castrl.rollouts import Rollouts, completion_logps, sample_groups  # their home; still exported here

from .analysis import analyze, gap_verdict, quadrant_stats, rollout_gap_auc, summarize
from .pipeline import DiagnosticsRun, run_diagnostics
from .report import write_report
from .settings import DiagnoseSettings, select_problems

__all__ = [
    "DiagnoseSettings",
    "DiagnosticsRun",
    "Rollouts",
    "analyze",
    "completion_logps",
    "gap_verdict",
    "quadrant_stats",
    "rollout_gap_auc",
    "run_diagnostics",
    "sample_groups",
    "select_problems",
    "summarize",
    "write_report",
]
